"""The operator's log keeps what it decided and leaves out kopf's line for every handler that
succeeded (one per watch event per handler), unless ``--verbose``."""

from __future__ import annotations

import logging

import pytest

from kubeloop.controllers.main import HandlerSuccessFilter


def record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


@pytest.mark.parametrize(
    ("name", "level", "message", "kept"),
    [
        # kopf's line after every event a handler took: left out.
        ("kopf.objects", logging.INFO, "Handler 'register.<locals>.on_service_event' succeeded.", False),
        ("kopf.objects", logging.INFO, "Handler 'register.<locals>.on_deployment_event' succeeded.", False),
        # kopf's failures and retries of the same handlers: kept.
        ("kopf.objects", logging.ERROR,
         "Handler 'register.<locals>.on_service_event' failed with an exception and will try again in 60 seconds: x",
         True),
        ("kopf.objects", logging.WARNING, "Patching failed with inconsistencies: ()", True),
        # Start-up activities are said once: kept.
        ("kopf.activities.startup", logging.INFO, "Activity 'build_registry.<locals>.startup' succeeded.", True),
        # The operator's own lines, whatever they say: kept.
        ("kubeloop.controllers.modeldeployment", logging.INFO, "Handler 'x' succeeded.", True),
        ("kopf.objects", logging.INFO, "Timer 'resync' succeeded.", True),
    ],
)
def test_only_handler_successes_are_left_out(name: str, level: int, message: str, kept: bool) -> None:
    assert HandlerSuccessFilter().filter(record(name, level, message)) is kept
