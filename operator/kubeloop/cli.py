"""The ``kubeloop`` command and the ``kubectl-kubeloop`` plugin.

Each runtime owns its own argument parsing (``main(argv) -> exit code``); this module only
routes to it, importing lazily so ``kubeloop serve`` never pays for the operator's imports.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("kubeloop.controllers.main", "run the Kubernetes operator (kopf)"),
    "train": ("kubeloop.runtime.train", "train, evaluate and store a model (runs in the training Job)"),
    "serve": ("kubeloop.runtime.serve", "serve a stored model over HTTP (runs in ModelDeployment pods)"),
    "drift": ("kubeloop.runtime.drift", "check a dataset for drift against a reference profile"),
    "artifacts": ("kubeloop.runtime.artifacts", "delete a run's stored artifacts (runs in the cleanup Job)"),
    "crds": ("kubeloop.api.crdgen", "write the CustomResourceDefinitions generated from the API models"),
}


def _usage(prog: str, commands: dict[str, tuple[str, str]]) -> str:
    width = max(len(name) for name in commands)
    lines = [f"usage: {prog} <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in commands.items()]
    return "\n".join(lines)


def _dispatch(prog: str, commands: dict[str, tuple[str, str]], argv: Sequence[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage(prog, commands))
        return 0 if argv else 2
    name, rest = argv[0], list(argv[1:])
    if name not in commands:
        print(f"{prog}: unknown command {name!r}\n\n{_usage(prog, commands)}", file=sys.stderr)
        return 2
    module = importlib.import_module(commands[name][0])
    code: int = module.main(rest)
    return code


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(_dispatch("kubeloop", SUBCOMMANDS, sys.argv[1:] if argv is None else argv))


def kubectl_plugin(argv: Sequence[str] | None = None) -> None:
    module = importlib.import_module("kubeloop.plugin")
    sys.exit(module.main(sys.argv[1:] if argv is None else list(argv)))


if __name__ == "__main__":  # pragma: no cover - `python -m kubeloop.cli`
    main()
