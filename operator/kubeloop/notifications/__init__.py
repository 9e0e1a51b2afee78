"""Notifications on every turn of the loop (issue 17): CloudEvents and Slack-compatible webhooks.

* :mod:`.settings` — the ``notifications`` block of the operator's configuration (sinks,
  default subscriptions, delivery limits).
* :mod:`.triggers` — pure: which trigger an Event the operator posts is, who is subscribed to
  it (operator defaults, overridden per object by annotation), and the numbers it carries.
* :mod:`.payloads` — pure: the CloudEvent and the Slack message of a notification.
* :mod:`.delivery` — I/O: one bounded queue and worker thread per sink, retries with backoff;
  a slow or dead sink never blocks a reconcile.
"""
