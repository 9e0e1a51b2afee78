"""The Dockerfile, checked without Docker (none on this project's machines): its structure
(multi-stage, base as a build argument, non-root numeric user = the pods' uid, exec-form
entrypoint) and its build context (the files .dockerignore lets through build the package)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_chart_support import REPO

from kubeloop.resources.trainingjob import RUNTIME_UID

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> tuple[list[tuple[str, str]], list[Stage]]:
    """Instructions before the first FROM, and the stages (continuation lines joined)."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    preamble: list[tuple[str, str]] = []
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            assert match, f"cannot read FROM {args}"
            stages.append(Stage(match[1], match[2] or str(len(stages))))
        elif stages:
            stages[-1].instructions.append((keyword, args.strip()))
        else:
            preamble.append((keyword, args.strip()))
    return preamble, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[tuple[str, str]], list[Stage]]:
    return parse(DOCKERFILE.read_text())


def test_base_image_is_a_build_argument(dockerfile: tuple[list[tuple[str, str]], list[Stage]]) -> None:
    preamble, stages = dockerfile
    assert ("ARG", "BASE=python:3.11-slim") in preamble
    assert [s.base for s in stages] == ["${BASE}", "${BASE}"]


def test_two_stages_and_only_the_virtualenv_crosses(dockerfile: tuple[list[tuple[str, str]], list[Stage]]) -> None:
    _, (build, runtime) = dockerfile
    assert build.name == "build" and runtime.name == "runtime"
    install = " ".join(build.all("RUN"))
    assert '".[train,serve,boost,mlflow]"' in install
    copies = runtime.all("COPY")
    assert copies == ["--from=build /opt/kubeloop /opt/kubeloop"]
    # No Python package is installed or compiled in the final stage; apt runs only to add the
    # OpenMP runtime LightGBM links (libgomp1) on a base that lacks it.
    runs = runtime.all("RUN")
    assert not any("pip" in run or "compileall" in run for run in runs)
    apt = [run for run in runs if "apt-get" in run]
    assert len(apt) == 1 and "libgomp1" in apt[0] and "if ! ldconfig -p" in apt[0]
    assert any("import lightgbm, xgboost" in run for run in runs)
    assert not build.all("ADD") and not runtime.all("ADD")


def test_runs_as_the_runtime_uid_not_root(dockerfile: tuple[list[tuple[str, str]], list[Stage]]) -> None:
    _, stages = dockerfile
    users = stages[-1].all("USER")
    assert users == [f"{RUNTIME_UID}:{RUNTIME_UID}"], "numeric, so runAsNonRoot can be verified"
    created = " ".join(stages[-1].all("RUN"))
    assert f"--uid {RUNTIME_UID}" in created and f"--gid {RUNTIME_UID}" in created


def test_entrypoint_is_the_kubeloop_command(dockerfile: tuple[list[tuple[str, str]], list[Stage]]) -> None:
    _, stages = dockerfile
    assert stages[-1].all("ENTRYPOINT") == ['["kubeloop"]']
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["kubeloop"] == "kubeloop.cli:main"
    assert {"train", "serve"} <= set(project["optional-dependencies"])
    env = " ".join(stages[-1].all("ENV"))
    assert "PATH=/opt/kubeloop/bin:$PATH" in env


# -- the build context -------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over relative paths."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def build_context(root: Path) -> list[Path]:
    """Files Docker sends as the build context: the last matching .dockerignore rule wins,
    and a rule matching a directory matches everything below it."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern_regex(line.lstrip("!").strip("/"))))
    kept = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or ".git" in path.relative_to(root).parts:
            continue
        relative = path.relative_to(root).as_posix()
        prefixes = [relative] + ["/".join(relative.split("/")[:n]) for n in range(1, relative.count("/") + 1)]
        excluded = False
        for negate, rule in rules:
            if any(rule.fullmatch(p) for p in prefixes):
                excluded = not negate
        if not excluded:
            kept.append(path)
    return kept


def test_build_context_is_small_and_builds_the_package(tmp_path: Path) -> None:
    context = build_context(REPO)
    relative = {p.relative_to(REPO).as_posix() for p in context}
    assert {"pyproject.toml", "README.md", "operator/kubeloop/cli.py", "operator/kubeloop/py.typed"} <= relative
    assert not any(r.startswith(("tests/", "hack/", "charts/", ".git/")) or "__pycache__" in r for r in relative)
    # What COPY sees is enough to build the package: copy the context, build a wheel from it.
    staged = tmp_path / "context"
    for path in context:
        target = staged / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    wheels = tmp_path / "wheels"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
         "--wheel-dir", str(wheels), str(staged)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = wheels.glob("kubeloop-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"kubeloop/cli.py", "kubeloop/py.typed", "kubeloop/runtime/train.py", "kubeloop/runtime/serve.py"} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "kubeloop = kubeloop.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
