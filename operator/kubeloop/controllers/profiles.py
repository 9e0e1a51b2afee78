"""Reference profiles for live drift checks, read from the namespace's own stable servers.

The operator reads nothing from model storage. Where every namespace has its own models claim
(or its own object-storage credentials), only that namespace's pods can read its artifacts,
and a profile read from the operator's own mount would be another namespace's file under the
same ``<model>/<run>`` path. A stable server verified its model's sha256 and loaded the profile
written beside it when it started; it answers ``GET /profile`` on its metrics endpoint with
that profile and the sha256 of the model it serves. The operator asks through the API server's
pod proxy (the same path and RBAC as its scrapes) and accepts an answer only from a ready
stable pod of the deployment whose sha256 is the deployment's ``status.stable.sha256``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from kubernetes.client.exceptions import ApiException

from kubeloop.api.conditions import Reason
from kubeloop.controllers.kube import NotFound
from kubeloop.drift.profile import Profile
from kubeloop.trust.urls import error_summary

PROFILE_PATH = "/profile"
MAX_PROFILE_BYTES = 64 * 1024 * 1024
"""Largest answer read from a pod (a profile is a few KiB to a few MiB)."""


class ProfileUnavailable(Exception):
    """No stable pod gave the stable model's profile; ``reason`` is a condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ServedProfile:
    """What a server answers on ``/profile``."""

    model_sha256: str
    profile: Profile | None


def parse_served_profile(payload: bytes) -> ServedProfile:
    """``{"modelSha256": "...", "profile": {...} | null}``; ValueError when it is not that
    (the message never quotes the payload: it is the pod's to choose)."""
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ValueError("the answer is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("modelSha256"), str):
        raise ValueError("the answer has no modelSha256")
    raw = document.get("profile")
    if raw is None:
        return ServedProfile(document["modelSha256"], None)
    try:
        profile = Profile.model_validate(raw)
    except ValueError:
        raise ValueError("the profile is not a valid Kubeloop profile") from None
    return ServedProfile(document["modelSha256"], profile)


def choose_profile(stable_sha256: str, answers: list[tuple[str, ServedProfile | str]]) -> Profile:
    """The stable model's profile from the pods' answers (pod name, answer or error text).

    A pod that still serves another model (mid-rollout) is passed over; a server that serves
    the stable model without a profile means the run wrote none (ProfileNotFound)."""
    if not answers:
        raise ProfileUnavailable(
            Reason.MODEL_NOT_READY, "no ready stable server pod to read the reference profile from"
        )
    problems: list[str] = []
    for pod, answer in answers:
        if isinstance(answer, str):
            problems.append(f"{pod}: {answer}")
        elif answer.model_sha256 != stable_sha256:
            problems.append(
                f"{pod}: serves model {answer.model_sha256[:12]}, not the stable {stable_sha256[:12]}"
            )
        elif answer.profile is None:
            raise ProfileUnavailable(
                Reason.PROFILE_NOT_FOUND,
                f"the stable model {stable_sha256[:12]} has no profile.json beside it (its server "
                "loaded none); re-run the TrainingRun to write it",
            )
        else:
            return answer.profile
    raise ProfileUnavailable(
        Reason.PROFILE_NOT_FOUND,
        "no stable server pod gave the reference profile: " + "; ".join(problems[:3]),
    )


class ServedProfiles:
    """Profiles fetched once per (namespace, deployment, model sha256), the current one kept."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, str], Profile] = {}

    def of(
        self,
        md: Mapping[str, Any],
        stable_pods: Callable[[], list[str]],
        fetch: Callable[[str], bytes],
    ) -> Profile:
        """The stable model's profile; ``stable_pods()`` lists the ready stable pods (asked only
        when the profile is not kept yet), ``fetch(pod)`` returns a pod's ``/profile`` answer."""
        namespace, name = md["metadata"]["namespace"], md["metadata"]["name"]
        sha = str(((md.get("status") or {}).get("stable") or {}).get("sha256") or "")
        key = (namespace, name, sha)
        if key not in self._cache:
            answers: list[tuple[str, ServedProfile | str]] = []
            for pod in stable_pods():
                try:
                    answers.append((pod, parse_served_profile(fetch(pod))))
                except Exception as error:  # any failure of one pod: ask the next
                    answers.append((pod, _summary(error)))
                if isinstance(answers[-1][1], ServedProfile) and answers[-1][1].model_sha256 == sha:
                    break
            profile = choose_profile(sha, answers)
            # One model per deployment is stable at a time: the previous one's profile goes.
            for stale in [k for k in self._cache if k[:2] == key[:2]]:
                del self._cache[stale]
            self._cache[key] = profile
        return self._cache[key]


def _summary(error: Exception) -> str:
    """A failure in words that never quote the pod's answer."""
    if isinstance(error, NotFound):
        return f"no {PROFILE_PATH} endpoint (a server older than the operator?)"
    if isinstance(error, ApiException):
        return f"HTTP {error.status}"
    if isinstance(error, ValueError):
        return str(error)
    if isinstance(error, OSError):
        return error_summary(error)
    return type(error).__name__
