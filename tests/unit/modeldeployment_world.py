"""A small, honest stand-in for the cluster around decide(): it applies Decisions the way the
API server and the Deployment controller would (generation bumps on spec changes, pods ready
when the test lets them be), so state-machine tests read as a story. Not a mock of decide."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from kubeloop.analysis.base import Measurement
from kubeloop.decide.modeldeployment import Decision, Observed, analysis_plan, decide
from kubeloop.resources.serving import ServingSettings

SETTINGS = ServingSettings(image="kubeloop:test")
SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def model(sha: str) -> dict[str, str]:
    return {"storageUri": f"s3://models/{sha[:4]}/model.skops", "sha256": sha}


def modeldeployment(steps: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model(SHA_A), "replicas": 4, **spec}
    if steps is not None:
        body.setdefault("rollout", {})["steps"] = steps
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "churn", "namespace": "ml", "uid": "uid-1", "generation": 1, "annotations": {}},
        "spec": body,
    }


class World:
    def __init__(self, md: dict[str, Any], training_run: dict[str, Any] | None = None) -> None:
        self.md = md
        self.now = T0
        self.deployments: dict[str, dict[str, Any]] = {}
        self.route: dict[str, Any] | None = None
        self.hpa: dict[str, Any] | None = None
        self.services: dict[str, dict[str, Any]] = {}
        self.training_run = training_run
        self.registry: Any = None  # a kubeloop.registry.decide.Resolution, for registry sources
        self.kubelet_ready = True
        self.events: list[Any] = []
        self.decisions: list[Decision] = []

    # -- the user's side ---------------------------------------------------------------------
    def change_spec(self, **changes: Any) -> None:
        self.md["spec"].update(changes)
        self.md["metadata"]["generation"] += 1

    def annotate(self, key: str, token: str) -> None:
        self.md["metadata"]["annotations"][key] = token

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    # -- the cluster's side --------------------------------------------------------------------
    def observed(self) -> Observed:
        return Observed(
            stable=copy.deepcopy(self.deployments.get("churn-stable")),
            canary=copy.deepcopy(self.deployments.get("churn-canary")),
            hpa=self.hpa,
            route=copy.deepcopy(self.route),
            training_run=self.training_run,
            registry=self.registry,
        )

    def plan(self) -> Any:
        return analysis_plan(self.md, self.observed(), self.now)

    def reconcile(self, measurements: dict[str, float | Measurement | None] | None = None) -> Decision:
        given = None
        if measurements is not None:
            given = {
                name: value if isinstance(value, Measurement)
                else Measurement(name, value, None if value is not None else "no data")
                for name, value in measurements.items()
            }
        decision = decide(self.md, self.observed(), SETTINGS, self.now, given)
        self.decisions.append(decision)
        self.events.extend(decision.events)
        self.md["status"] = copy.deepcopy(decision.status)
        if decision.route is not None and decision.route.patch is not None and self.route is not None:
            self.route["spec"].update(copy.deepcopy(decision.route.patch["spec"]))
        for service in decision.services:
            self.services[service["metadata"]["name"]] = service
        for deployment in decision.deployments:
            self._apply(deployment)
        for name in decision.scale_to_zero:
            self.deployments[name]["spec"]["replicas"] = 0
            self._settle(self.deployments[name])
        self.hpa = decision.hpa
        return decision

    def _apply(self, desired: dict[str, Any]) -> None:
        name = desired["metadata"]["name"]
        existing = self.deployments.get(name)
        generation = 1
        if existing is not None:
            generation = existing["metadata"]["generation"] + (existing["spec"] != desired["spec"])
        obj = copy.deepcopy(desired)
        obj["metadata"]["generation"] = generation
        obj["status"] = copy.deepcopy((existing or {}).get("status") or {})
        self.deployments[name] = obj
        self._settle(obj)

    def _settle(self, obj: dict[str, Any]) -> None:
        if self.kubelet_ready:
            n = obj["spec"]["replicas"]
            obj["status"] = {
                "observedGeneration": obj["metadata"]["generation"],
                "replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n,
            }

    def settle_all(self) -> None:
        for obj in self.deployments.values():
            self._settle(obj)

    def run(self, rounds: int = 3, measurements: dict[str, float | None] | None = None) -> Decision:
        decision = self.reconcile(measurements)
        for _ in range(rounds - 1):
            decision = self.reconcile(measurements)
        return decision

    # -- reading -------------------------------------------------------------------------------
    @property
    def status(self) -> dict[str, Any]:
        return self.md.get("status") or {}

    def replicas(self, track: str) -> int:
        dep = self.deployments.get(f"churn-{track}")
        return int(dep["spec"]["replicas"]) if dep else 0

    def args(self, track: str) -> list[str]:
        return list(self.deployments[f"churn-{track}"]["spec"]["template"]["spec"]["containers"][0]["args"])

    def served_sha(self, track: str) -> str:
        args = self.args(track)
        return args[args.index("--sha256") + 1]

    def main_selector(self) -> dict[str, str]:
        return dict(self.services["churn"]["spec"]["selector"])

    def condition(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.status.get("conditions", []) if c["type"] == type_)

    def event_reasons(self) -> list[str]:
        return [e.reason for e in self.events]
