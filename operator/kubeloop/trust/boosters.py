"""XGBoost and LightGBM boosters inside ``model.skops``: each in its own native format, never pickled.

A fitted ``XGBClassifier``/``XGBRegressor``/``LGBMClassifier``/``LGBMRegressor`` is two things:
a thin scikit-learn wrapper (parameters, classes, feature names) and a booster (the trees,
held by the C library). skops can store the wrapper like any estimator, but the booster is a
C handle whose only generic serialisation is pickle. So the artifact is still **one skops
file** (a zip), and the boosters travel next to skops' own entries, in the format of their
framework::

    model.skops                       one file, one sha256 (model.sha256) over all of it
      schema.json, *.npy              skops: the estimator or Pipeline; every booster
                                      wrapper stored *without* its booster
      kubeloop/boosters.json          the manifest (below)
      kubeloop/booster-0.ubj          XGBoost: Booster.save_raw("ubj") (Universal Binary JSON)
      kubeloop/booster-1.txt          LightGBM: Booster.model_to_string() (LightGBM's text model)

The manifest says where each booster goes::

    {"format": "kubeloop.boosters/v1",
     "boosters": [{"path": [1], "type": "xgboost.sklearn.XGBClassifier",
                   "entry": "kubeloop/booster-0.ubj"}]}

``path`` is a list of Pipeline step indices from the stored model down to the wrapper (``[]``:
the model itself is the wrapper; ``[1]``: the Pipeline's second step). A file without the
manifest is an ordinary skops file and loads exactly as before.

Reading (:func:`attach`, called by :func:`kubeloop.trust.model_types.load_trusted`, which every
reader uses) happens after the file's sha256 was verified and after skops loaded the wrappers
with only the types :mod:`kubeloop.trust.model_types` trusts. It refuses, naming the problem:
a manifest that is not this format; a type that is not one of :data:`BOOSTER_TYPES`; an entry
name other than ``kubeloop/booster-<n>.<ubj|txt>`` for that framework, missing, or present
twice in the zip; a path that does not lead to a wrapper of exactly that type; a wrapper that
came out of skops already holding a booster (boosters come only from the native entries); a
booster wrapper anywhere in the model that no entry fills; and entry bytes that are not the
framework's format (a pickle, which starts with ``0x80``, is refused before any parser sees
it). The native parsers themselves build trees from data and run no Python code of the file.
"""

from __future__ import annotations

import copy
import io
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

MANIFEST_ENTRY = "kubeloop/boosters.json"
MANIFEST_FORMAT = "kubeloop.boosters/v1"
PICKLE_PROTOCOL_MARK = 0x80


@dataclass(frozen=True)
class Framework:
    """One booster library: its package, the native format and how the bytes look."""

    package: str
    extension: str
    describes: str


XGBOOST = Framework("xgboost", "ubj", "XGBoost Universal Binary JSON (Booster.save_raw('ubj'))")
LIGHTGBM = Framework("lightgbm", "txt", "LightGBM text model (Booster.model_to_string())")

BOOSTER_TYPES: dict[str, Framework] = {
    "xgboost.sklearn.XGBClassifier": XGBOOST,
    "xgboost.sklearn.XGBRegressor": XGBOOST,
    "lightgbm.sklearn.LGBMClassifier": LIGHTGBM,
    "lightgbm.sklearn.LGBMRegressor": LIGHTGBM,
}
"""The scikit-learn wrappers whose boosters Kubeloop stores natively, by their real names."""

BOOSTER_PACKAGES: tuple[str, ...] = ("xgboost", "lightgbm")
_ENTRY = re.compile(r"kubeloop/booster-(0|[1-9][0-9]{0,3})\.(ubj|txt)")


class BoosterArtifactError(ValueError):
    """The booster part of a model file is refused; the message names the entry and why."""


def type_name(value: Any) -> str:
    """``module.QualifiedName`` of the class of ``value``, as skops and the manifest write it."""
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def is_booster_wrapper(value: Any) -> bool:
    """Whether ``value`` is a fitted-or-not XGBoost or LightGBM scikit-learn wrapper of any kind."""
    module = type(value).__module__
    if not any(module == p or module.startswith(p + ".") for p in BOOSTER_PACKAGES):
        return False
    return any(
        f"{base.__module__}.{base.__qualname__}"
        in {"xgboost.sklearn.XGBModel", "lightgbm.sklearn.LGBMModel"}
        for base in type(value).__mro__
    )


# --------------------------------------------------------------------------------------------
# Writing (the trainer)


def _steps(model: Any) -> list[Any] | None:
    steps = getattr(model, "steps", None)
    return list(steps) if isinstance(steps, list) else None


def _wrappers(model: Any, path: tuple[int, ...] = ()) -> Iterator[tuple[tuple[int, ...], Any]]:
    if is_booster_wrapper(model):
        yield path, model
        return
    for index, step in enumerate(_steps(model) or []):
        yield from _wrappers(step[1], (*path, index))


def native_bytes(wrapper: Any) -> bytes:
    """The booster of a fitted wrapper in its framework's native format."""
    framework = BOOSTER_TYPES[type_name(wrapper)]
    if framework is XGBOOST:
        return bytes(wrapper.get_booster().save_raw("ubj"))
    return str(wrapper.booster_.model_to_string()).encode("utf-8")


def split(
    model: Any, feature_names: Sequence[str] | None = None
) -> tuple[Any, list[tuple[dict[str, Any], bytes]]]:
    """``model`` with every booster wrapper copied without its booster, and the boosters.

    ``feature_names`` are the columns ``model`` was fitted on, as the caller named them. A
    LightGBM wrapper reports its columns with spaces and special characters replaced
    (``mean radius`` becomes ``mean_radius``); for a bare one fitted on named columns the
    record keeps the caller's names (``featureNames``), and :func:`feature_names_in` returns
    them after loading.

    Returns the model to give skops (``model`` itself when it holds no booster) and, per
    booster, its manifest record and native bytes. The fitted ``model`` is not changed.
    Raises :class:`BoosterArtifactError` for a booster wrapper Kubeloop cannot store: one that
    is not one of :data:`BOOSTER_TYPES`, or one nested elsewhere than in Pipeline steps.
    """
    found = list(_wrappers(model))
    unsupported = [type_name(w) for _, w in found if type_name(w) not in BOOSTER_TYPES]
    if unsupported:
        raise BoosterArtifactError(
            f"cannot store {', '.join(unsupported)}: Kubeloop stores only "
            f"{', '.join(sorted(BOOSTER_TYPES))} in their native formats"
        )
    placed = {id(wrapper) for _, wrapper in found}
    hidden = [type_name(w) for w in _all_wrappers(model) if id(w) not in placed]
    if hidden:
        raise BoosterArtifactError(
            f"cannot store {', '.join(hidden)} nested outside Pipeline steps: put the booster "
            "estimator at the top or as a Pipeline step"
        )
    stripped = _strip(model, {path for path, _ in found})
    entries = []
    for index, (path, wrapper) in enumerate(found):
        framework = BOOSTER_TYPES[type_name(wrapper)]
        record = {
            "path": list(path),
            "type": type_name(wrapper),
            "entry": f"kubeloop/booster-{index}.{framework.extension}",
        }
        if (
            path == ()
            and feature_names is not None
            and getattr(wrapper, "_fitted_with_feature_names", False)
            and len(feature_names) == int(wrapper.n_features_in_)
        ):
            record["featureNames"] = [str(name) for name in feature_names]
        entries.append((record, native_bytes(wrapper)))
    return stripped, entries


FEATURE_NAMES_ATTRIBUTE = "kubeloop_feature_names_in_"


def feature_names_in(model: Any) -> list[str] | None:
    """The columns ``model`` was fitted on, by the names the data had; None when unnamed."""
    names = getattr(model, FEATURE_NAMES_ATTRIBUTE, None)
    if names is None:
        names = getattr(model, "feature_names_in_", None)
    return None if names is None else [str(name) for name in names]


def _strip(model: Any, paths: set[tuple[int, ...]], path: tuple[int, ...] = ()) -> Any:
    if path in paths:
        detached = copy.copy(model)
        detached.__dict__.pop("_Booster", None)
        return detached
    steps = _steps(model)
    if steps is None or not any(p[: len(path)] == path and len(p) > len(path) for p in paths):
        return model
    shallow = copy.copy(model)
    shallow.steps = [
        (step[0], _strip(step[1], paths, (*path, i)), *step[2:]) for i, step in enumerate(steps)
    ]
    return shallow


def add_entries(skops_bytes: bytes, entries: Sequence[tuple[dict[str, Any], bytes]]) -> bytes:
    """The skops zip with the manifest and the native booster entries added (when any)."""
    if not entries:
        return skops_bytes
    buffer = io.BytesIO(skops_bytes)
    manifest = {"format": MANIFEST_FORMAT, "boosters": [record for record, _ in entries]}
    with zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST_ENTRY, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        for record, payload in entries:
            archive.writestr(str(record["entry"]), payload)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Reading (every loader, through kubeloop.trust.model_types.load_trusted)


@dataclass(frozen=True)
class BoosterRecord:
    """One validated manifest record and the native bytes it names."""

    path: tuple[int, ...]
    type: str
    framework: Framework
    entry: str
    payload: bytes
    feature_names: tuple[str, ...] | None = None


def read_manifest(model_bytes: bytes) -> list[BoosterRecord]:
    """The booster records of a model file, validated; ``[]`` for a plain skops file.

    Reads only the zip's directory, the manifest and the entries it names; parses nothing
    else. Raises :class:`BoosterArtifactError` naming what is wrong.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(model_bytes))
    except zipfile.BadZipFile:
        return []  # not a zip: skops refuses it with its own message
    with archive:
        names = archive.namelist()
        if MANIFEST_ENTRY not in names:
            strays = [n for n in names if n.startswith("kubeloop/")]
            if strays:
                raise BoosterArtifactError(
                    f"model.skops has booster entries ({', '.join(strays)}) but no "
                    f"{MANIFEST_ENTRY}; refusing it"
                )
            return []
        duplicated = sorted({n for n in names if names.count(n) > 1 and n.startswith("kubeloop/")})
        if duplicated:
            raise BoosterArtifactError(
                f"model.skops holds {', '.join(duplicated)} more than once; refusing it"
            )
        records = _parse_manifest(archive.read(MANIFEST_ENTRY))
        result = []
        for index, (path, kind, entry, feature_names) in enumerate(records):
            framework = BOOSTER_TYPES[kind]
            if entry not in names:
                raise BoosterArtifactError(
                    f"{MANIFEST_ENTRY} boosters[{index}].entry {entry!r} is not in model.skops"
                )
            payload = archive.read(entry)
            _check_native(payload, framework, f"{MANIFEST_ENTRY} boosters[{index}] ({entry})")
            result.append(BoosterRecord(path, kind, framework, entry, payload, feature_names))
        named = {r.entry for r in result}
        strays = [n for n in names if n.startswith("kubeloop/booster-") and n not in named]
        if strays:
            raise BoosterArtifactError(
                f"model.skops has booster entries the manifest does not name: {', '.join(strays)}"
            )
        return result


def _parse_manifest(
    payload: bytes,
) -> list[tuple[tuple[int, ...], str, str, tuple[str, ...] | None]]:
    where = MANIFEST_ENTRY
    try:
        manifest = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise BoosterArtifactError(f"{where} is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BoosterArtifactError(f"{where}: format must be {MANIFEST_FORMAT!r}")
    boosters = manifest.get("boosters")
    if not isinstance(boosters, list) or not boosters:
        raise BoosterArtifactError(f"{where}: boosters must be a non-empty list")
    records = []
    seen: set[str] = set()
    for index, record in enumerate(boosters):
        field = f"{where} boosters[{index}]"
        if not isinstance(record, dict) or not (
            {"path", "type", "entry"} <= set(record) <= {"path", "type", "entry", "featureNames"}
        ):
            raise BoosterArtifactError(
                f"{field} must have path, type and entry (and optionally featureNames), nothing else"
            )
        names = record.get("featureNames")
        if names is not None and (
            not isinstance(names, list) or not all(isinstance(n, str) for n in names)
        ):
            raise BoosterArtifactError(f"{field}.featureNames must be a list of strings")
        path, kind, entry = record["path"], record["type"], record["entry"]
        if not isinstance(path, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1000 for i in path
        ):
            raise BoosterArtifactError(f"{field}.path must be a list of Pipeline step indices")
        if kind not in BOOSTER_TYPES:
            raise BoosterArtifactError(
                f"{field}.type {kind!r} is not one of {', '.join(sorted(BOOSTER_TYPES))}"
            )
        match = _ENTRY.fullmatch(entry) if isinstance(entry, str) else None
        if match is None or match.group(2) != BOOSTER_TYPES[kind].extension:
            raise BoosterArtifactError(
                f"{field}.entry {entry!r} must name kubeloop/booster-<n>."
                f"{BOOSTER_TYPES[kind].extension} inside model.skops"
            )
        if entry in seen:
            raise BoosterArtifactError(f"{field}.entry {entry!r} is named twice")
        seen.add(entry)
        records.append(
            (tuple(path), str(kind), str(entry), None if names is None else tuple(names))
        )
    return records


def _check_native(payload: bytes, framework: Framework, where: str) -> None:
    if payload[:1] == bytes([PICKLE_PROTOCOL_MARK]):
        raise BoosterArtifactError(f"{where} is a pickle, not {framework.describes}; refusing it")
    if framework is XGBOOST and payload[:1] != b"{":
        raise BoosterArtifactError(f"{where} is not {framework.describes}")
    if framework is LIGHTGBM and not payload.startswith(b"tree\n"):
        raise BoosterArtifactError(f"{where} is not {framework.describes}")


def _at(model: Any, path: tuple[int, ...]) -> Any:
    current = model
    for index in path:
        steps = _steps(current)
        if steps is None or index >= len(steps):
            return None
        current = steps[index][1]
    return current


def _all_wrappers(model: Any) -> Iterator[Any]:
    """Every booster wrapper reachable from ``model`` through attributes and containers."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        current = stack.pop()
        if id(current) in seen or isinstance(current, str | bytes | int | float):
            continue
        seen.add(id(current))
        if is_booster_wrapper(current):
            yield current
        if isinstance(current, dict):
            stack.extend(current.values())
        elif isinstance(current, list | tuple | set):
            stack.extend(current)
        elif hasattr(current, "get_params") and hasattr(current, "__dict__"):
            stack.extend(vars(current).values())


def attach(model: Any, records: Sequence[BoosterRecord]) -> Any:
    """Give every booster wrapper in a freshly loaded ``model`` its native booster.

    Refuses a record whose path does not lead to a wrapper of its type, a wrapper that skops
    already gave a booster, and a wrapper no record fills.
    """
    filled: set[int] = set()
    for index, record in enumerate(records):
        field = f"{MANIFEST_ENTRY} boosters[{index}]"
        wrapper = _at(model, record.path)
        if wrapper is None or type_name(wrapper) != record.type:
            found = "nothing" if wrapper is None else type_name(wrapper)
            raise BoosterArtifactError(
                f"{field}.path {list(record.path)} leads to {found}, not {record.type}"
            )
        if "_Booster" in vars(wrapper) or id(wrapper) in filled:
            raise BoosterArtifactError(
                f"{field}: the {record.type} already has a booster; boosters are read only "
                "from their native entries"
            )
        _load_native(wrapper, record, field)
        if record.feature_names is not None:
            if len(record.feature_names) != int(wrapper.n_features_in_):
                raise BoosterArtifactError(
                    f"{field}.featureNames has {len(record.feature_names)} names for "
                    f"{wrapper.n_features_in_} features"
                )
            import numpy as np

            setattr(wrapper, FEATURE_NAMES_ATTRIBUTE, np.asarray(record.feature_names, object))
        filled.add(id(wrapper))
    unfilled = [type_name(w) for w in _all_wrappers(model) if id(w) not in filled]
    if unfilled:
        raise BoosterArtifactError(
            f"model.skops holds {', '.join(unfilled)} without a booster entry in "
            f"{MANIFEST_ENTRY}; refusing it"
        )
    return model


def _load_native(wrapper: Any, record: BoosterRecord, field: str) -> None:
    try:
        if record.framework is XGBOOST:
            wrapper.load_model(bytearray(record.payload))
        else:
            import lightgbm

            wrapper._Booster = lightgbm.Booster(model_str=record.payload.decode("utf-8"))
    except Exception as exc:
        raise BoosterArtifactError(
            f"{field} ({record.entry}) cannot be read as {record.framework.describes}: {exc}"
        ) from exc
