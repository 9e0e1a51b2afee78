"""MLflow tracking and model registry, as the operator sees them (issue 17).

:mod:`.tags` names what Kubeloop writes (shared with the trainer), :mod:`.client` is a small
blocking client of MLflow's REST API (the operator needs no MLflow package), and
:mod:`.decide` holds the pure decisions: how a registry source resolves, which aliases move.
"""
