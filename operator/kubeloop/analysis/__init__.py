"""Canary analysis: metric providers (prometheus, builtin, scrape) behind one interface.

Providers do I/O (HTTP to Prometheus, pod-proxy scrapes): the controller runs them and hands
their :class:`~kubeloop.analysis.base.Measurement` values to the pure rollout decision.
"""
