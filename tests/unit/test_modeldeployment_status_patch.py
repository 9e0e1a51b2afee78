"""The status merge patch removes what a decision dropped, at any depth."""

from __future__ import annotations

from typing import Any

import pytest

from kubeloop.controllers.modeldeployment import status_patch


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies it."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({}, {"phase": "Healthy"}),
        ({"canary": {"uri": "u", "sha256": "s"}, "canaryWeight": 50}, {"canaryWeight": 0}),
        ({"stable": {"uri": "a", "trainingRun": "r1"}}, {"stable": {"uri": "b"}}),
        ({"conditions": [{"type": "Ready"}]}, {"conditions": []}),
        ({"analysis": {"runs": [1, 2]}}, {"analysis": {"runs": [2, 3], "failures": 1}}),
        ({"a": 1}, {"a": 1}),
    ],
)
def test_status_patch_turns_old_into_new(old: dict[str, Any], new: dict[str, Any]) -> None:
    patch = status_patch(old, new)
    assert merge(old, patch) == new
    if old == new:
        assert patch == {}
