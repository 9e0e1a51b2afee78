"""requirements.lock: what the image installs is pinned, and the pins satisfy pyproject.toml.

The image runs `pip install --constraint requirements.lock ".[train,serve,boost,mlflow]"`; a dependency
missing from the lock would float, and a pin outside pyproject's range would fail the build
(or, worse, be the version nobody tested). `hack/image/lock` rewrites the lock.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"
IMAGE_EXTRAS = ("train", "serve")


def pins() -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, version = line.partition("==")
        found[canonicalize_name(name)] = Version(version)
    return found


def image_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in IMAGE_EXTRAS:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def problems() -> list[str]:
    locked = pins()
    found = []
    for requirement in image_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate(
            {"python_version": "3.11"}
        ):
            continue
        name = canonicalize_name(requirement.name)
        if name == "kubeloop":
            continue
        if name not in locked:
            found.append(f"{requirement.name} is not pinned in requirements.lock")
        elif not requirement.specifier.contains(locked[name], prereleases=True):
            found.append(
                f"requirements.lock pins {requirement.name}=={locked[name]}, outside {requirement}"
            )
    return found


def test_every_image_dependency_is_pinned_inside_its_range() -> None:
    assert problems() == []


def test_skops_is_pinned_past_its_trust_bypasses() -> None:
    assert pins()["skops"] >= Version("0.13")


def test_the_image_installs_under_the_lock() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"COPY [^\n]*requirements\.lock", dockerfile)
    assert re.search(
        r'pip install --constraint requirements\.lock "\.\[train,serve,boost,mlflow\]"', dockerfile
    )
    assert "!requirements.lock" in (REPO / ".dockerignore").read_text().splitlines()
    # The real node rebuilds its image when the lock changes.
    assert "requirements.lock" in (REPO / "hack" / "realnode" / "images.sh").read_text()
