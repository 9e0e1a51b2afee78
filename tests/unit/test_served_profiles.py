"""Which answer of which stable pod becomes a live drift check's reference profile.

The decisions are pure (answers in, profile or reason out); the wiring, a real server's
``/profile`` read through the API server's pod proxy, runs on the real node
(tests/e2e/test_realnode_storage.py).
"""

from __future__ import annotations

import orjson
import pytest

from kubeloop.api.conditions import Reason
from kubeloop.controllers.kube import NotFound
from kubeloop.controllers.profiles import (
    ProfileUnavailable,
    ServedProfile,
    ServedProfiles,
    choose_profile,
    parse_served_profile,
)
from kubeloop.drift.profile import Profile, build_profile

STABLE = "a" * 64
OTHER = "b" * 64


def _profile(values: list[float]) -> Profile:
    return build_profile({"x": values}, n_bins=2)


def _answer(sha: str, profile: Profile | None) -> bytes:
    raw = orjson.loads(profile.to_json_bytes()) if profile is not None else None
    return orjson.dumps({"modelSha256": sha, "profile": raw})


MINE = _profile([1.0, 2.0, 3.0, 4.0])


def test_parse_round_trips_a_served_profile() -> None:
    served = parse_served_profile(_answer(STABLE, MINE))
    assert served == ServedProfile(STABLE, MINE)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"<html>secret</html>", "not JSON"),
        (b"[]", "no modelSha256"),
        (b'{"profile": {}}', "no modelSha256"),
        (b'{"modelSha256": "x", "profile": {"features": "secret"}}', "not a valid Kubeloop profile"),
    ],
)
def test_parse_refuses_what_is_not_a_served_profile_without_quoting_it(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_served_profile(payload)
    assert "secret" not in str(caught.value)


def test_a_pod_still_serving_another_model_is_passed_over() -> None:
    answers: list[tuple[str, ServedProfile | str]] = [
        ("old", ServedProfile(OTHER, _profile([9.0, 9.5, 10.0, 11.0]))),
        ("new", ServedProfile(STABLE, MINE)),
    ]
    assert choose_profile(STABLE, answers) == MINE


@pytest.mark.parametrize(
    ("answers", "reason", "words"),
    [
        ([], Reason.MODEL_NOT_READY, "no ready stable server pod"),
        ([("p", ServedProfile(STABLE, None))], Reason.PROFILE_NOT_FOUND, "no profile.json beside it"),
        ([("p", ServedProfile(OTHER, MINE))], Reason.PROFILE_NOT_FOUND, "serves model bbbbbbbbbbbb"),
        ([("p", "HTTP 503")], Reason.PROFILE_NOT_FOUND, "p: HTTP 503"),
    ],
)
def test_no_usable_answer_names_the_reason(
    answers: list[tuple[str, ServedProfile | str]], reason: str, words: str
) -> None:
    with pytest.raises(ProfileUnavailable) as caught:
        choose_profile(STABLE, answers)
    assert caught.value.reason == reason
    assert words in caught.value.message


def _md(namespace: str, sha: str) -> dict[str, object]:
    return {"metadata": {"namespace": namespace, "name": "churn"}, "status": {"stable": {"sha256": sha}}}


def test_profiles_are_fetched_once_per_namespace_deployment_and_model() -> None:
    asked: list[str] = []
    theirs = _profile([100.0, 200.0, 300.0, 400.0])
    answers = {"team-a-pod": _answer(STABLE, MINE), "team-b-pod": _answer(STABLE, theirs)}

    def fetch(pod: str) -> bytes:
        asked.append(pod)
        return answers[pod]

    profiles = ServedProfiles()
    # The same deployment name and model in two namespaces: each reads its own pods' profile.
    assert profiles.of(_md("team-a", STABLE), lambda: ["team-a-pod"], fetch) == MINE
    assert profiles.of(_md("team-b", STABLE), lambda: ["team-b-pod"], fetch) == theirs
    assert profiles.of(_md("team-a", STABLE), lambda: ["team-a-pod"], fetch) == MINE
    assert asked == ["team-a-pod", "team-b-pod"]


def test_a_failing_pod_is_skipped_and_its_error_not_quoted() -> None:
    def fetch(pod: str) -> bytes:
        if pod == "broken":
            raise NotFound("/api/v1/.../proxy/profile: <the pod's own words>")
        return _answer(STABLE, MINE)

    assert ServedProfiles().of(_md("ns", STABLE), lambda: ["broken", "good"], fetch) == MINE
    with pytest.raises(ProfileUnavailable) as caught:
        ServedProfiles().of(_md("ns", STABLE), lambda: ["broken"], fetch)
    assert "no /profile endpoint" in caught.value.message
    assert "the pod's own words" not in caught.value.message


def test_a_new_stable_model_replaces_the_kept_profile() -> None:
    theirs = _profile([100.0, 200.0, 300.0, 400.0])
    answers = {STABLE: _answer(STABLE, MINE), OTHER: _answer(OTHER, theirs)}
    profiles = ServedProfiles()
    assert profiles.of(_md("ns", STABLE), lambda: ["pod"], lambda _pod: answers[STABLE]) == MINE
    assert profiles.of(_md("ns", OTHER), lambda: ["pod"], lambda _pod: answers[OTHER]) == theirs
    assert list(profiles._cache) == [("ns", "churn", OTHER)]
