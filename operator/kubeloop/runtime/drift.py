"""``kubeloop drift``: check a dataset for drift against a model's reference (a Job's entry point).

Two modes, one report (see :mod:`kubeloop.drift.report`):

* ``--profile URI`` only (binned): the data's columns are counted over the ``profile.json``
  bins the trainer wrote, exactly as the model servers count live traffic.
* ``--reference URI`` (exact): the reference *data* itself is compared value by value, e.g.
  the training set; with ``--profile`` as well, the profile says which columns to check and
  which are categorical.

Data is read like the trainer reads it (``file://``, plain paths, ``pvc://``, ``s3://``,
``https://``, ``sklearn://``; CSV or Parquet), and under the same rule: local files, the
profile included, only below ``KUBELOOP_DATA_ROOTS`` (:mod:`kubeloop.trust.data_paths`). Prints a table to stdout and writes the compact
JSON result (:mod:`kubeloop.drift.result`, which documents it and the exit codes) to the
termination message. Exit 0 whenever the check ran, drift or not.

``--html URI`` also writes the report as one self-contained HTML page (:mod:`kubeloop.drift.html`:
summary, per-feature table, reference and current histograms as inline SVG, no script, no
network) to a path or a storage URI (``s3://``..., written with the pod's credentials).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from kubeloop.drift import result as drift_result
from kubeloop.drift.html import FeatureBins, ReportContext, render_html
from kubeloop.drift.profile import (
    PREDICTION_FEATURE,
    FeatureProfile,
    Profile,
    categorical_profile,
    numeric_profile,
)
from kubeloop.drift.report import (
    DriftConfig,
    DriftReport,
    UnusedFeatureSetting,
    counts_from_samples,
    drift_report,
    drift_report_from_samples,
    unused_feature_settings,
)
from kubeloop.runtime import termination
from kubeloop.runtime.usage import UsageError, UsageParser

if TYPE_CHECKING:
    import pandas as pd

ENV_PVC_ROOT = "KUBELOOP_PVC_MOUNT_ROOT"
DATASET_FIELD = "the DriftPolicy's spec.source.dataset.uri (--data)"


class _InputError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``kubeloop drift``."""
    parser = UsageParser(
        prog="kubeloop drift",
        description="Check a dataset for drift against a model's reference profile or data.",
    )
    parser.add_argument("--data", required=True, metavar="URI", help="the current dataset")
    parser.add_argument("--format", choices=["csv", "parquet"], help="of --data and --reference")
    parser.add_argument("--profile", metavar="URI", help="the model's profile.json")
    parser.add_argument(
        "--reference", metavar="URI", help="the reference dataset (exact mode), e.g. training data"
    )
    parser.add_argument(
        "--features", metavar="A,B", help="columns to check (default: the profile's, else all)"
    )
    parser.add_argument(
        "--categorical",
        metavar="A,B",
        help="columns to treat as categories in exact mode without a profile",
    )
    parser.add_argument(
        "--prediction-column", metavar="COL", help="column holding the model's predictions"
    )
    parser.add_argument(
        "--config",
        metavar="FILE|JSON",
        help="DriftConfig as a JSON/YAML file or inline JSON (tests, thresholds, driftShare)",
    )
    parser.add_argument("--report", metavar="PATH", help="also write the full report as JSON here")
    parser.add_argument(
        "--html",
        metavar="PATH|URI",
        help="also write the report as one self-contained HTML page (charts inline, offline)",
    )
    parser.add_argument(
        "--title", metavar="TEXT", help="heading of the --html page (default: Drift report)"
    )
    parser.add_argument(
        "--termination-log",
        metavar="PATH",
        help=f"where to write the JSON result (default: {termination.DEFAULT_PATH} when writable)",
    )
    parser.add_argument(
        "--fail-on-drift",
        action="store_true",
        help=f"exit {drift_result.EXIT_DRIFTED} when the model drifted (for pipelines)",
    )
    parser.add_argument(
        "--pvc-mount-root", help=f"where pvc://<claim>/ is mounted (default: env {ENV_PVC_ROOT})"
    )
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point of ``kubeloop drift``; returns the exit code."""
    environment = dict(os.environ if env is None else env)
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        if not args.profile and not args.reference:
            raise UsageError("give --profile (binned mode) and/or --reference (exact mode)")
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"kubeloop drift: error: {exc}", file=sys.stderr)
        return drift_result.EXIT_USAGE

    termination_log = termination.resolve_path(args.termination_log)
    pvc_root = args.pvc_mount_root or environment.get(ENV_PVC_ROOT) or "/mnt/pvc"
    try:
        config = _load_config(args.config)
        bins: dict[str, FeatureBins] | None = {} if args.html else None
        report = run_check(
            data_uri=args.data,
            profile_uri=args.profile,
            reference_uri=args.reference,
            data_format=args.format,
            features=_split(args.features),
            categorical=_split(args.categorical) or [],
            prediction_column=args.prediction_column,
            config=config,
            env=environment,
            pvc_mount_root=pvc_root,
            bins=bins,
        )
    except _InputError as exc:
        failed = drift_result.failure(exc.reason, str(exc))
        termination.write(termination_log, drift_result.render_result(failed), "kubeloop drift")
        print(f"kubeloop drift: {exc.reason}: {exc}", file=sys.stderr)
        return drift_result.EXIT_INPUT_INVALID

    termination.write(
        termination_log,
        drift_result.render_result(drift_result.result_from_report(report)),
        "kubeloop drift",
    )
    if args.report:
        termination.write(
            Path(args.report),
            report.model_dump_json(by_alias=True, indent=2).encode(),
            "kubeloop drift",
        )
    print(format_table(report), flush=True)
    if args.html:
        context = ReportContext(
            title=args.title or "Drift report",
            data=_shown(args.data),
            reference=_shown(args.reference or args.profile),
            generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        page = render_html(report, bins or {}, context).encode()
        if not write_html(args.html, page, environment):
            # The check ran and its result is written; a missing page does not undo it.
            print(
                f"kubeloop drift: the check ran but --html {_shown(args.html)} was not written",
                file=sys.stderr,
            )
    if args.fail_on_drift and report.drifted:
        return drift_result.EXIT_DRIFTED
    return drift_result.EXIT_CHECKED


def run_check(
    *,
    data_uri: str,
    profile_uri: str | None,
    reference_uri: str | None,
    data_format: str | None,
    features: list[str] | None,
    categorical: list[str],
    prediction_column: str | None,
    config: DriftConfig,
    env: Mapping[str, str],
    pvc_mount_root: str,
    bins: dict[str, FeatureBins] | None = None,
) -> DriftReport:
    """Load the inputs and compute the report (raises _InputError naming what is wrong).

    With ``bins`` (a dict to fill), each checked column's reference bins and current counts are
    put there for the charts: the profile's bins in binned mode; in exact mode, bins built from
    the reference data by the profile's rule (the quantile bins the exact PSI uses)."""
    profile = _load_profile(profile_uri, env, pvc_mount_root) if profile_uri else None
    current = _load_frame(data_uri, data_format, env, pvc_mount_root, "--data")
    if profile is not None:
        names = features or [f.name for f in profile.features]
        categorical = [f.name for f in profile.features if f.kind == "categorical"]
        unknown = [n for n in names if n not in {f.name for f in profile.features}]
        if unknown:
            raise _InputError(
                drift_result.REASON_DATA_MISMATCH,
                f"--features {', '.join(unknown)} not in the profile; "
                f"it has {', '.join(f.name for f in profile.features)}",
            )
        unused = unused_feature_settings(config, profile, names)
        if unused:
            raise _InputError(
                drift_result.REASON_CONFIG_INVALID, _unused_message(unused[0], profile)
            )
    else:
        names = features or [str(c) for c in current.columns]
    _require_columns(
        current, [*names, *([prediction_column] if prediction_column else [])], "--data"
    )

    try:
        if reference_uri:
            reference = _load_frame(reference_uri, data_format, env, pvc_mount_root, "--reference")
            _require_columns(
                reference,
                [*names, *([prediction_column] if prediction_column else [])],
                "--reference",
            )
            reference_columns = {n: _column(reference, n, n in categorical) for n in names}
            current_columns = {n: _column(current, n, n in categorical) for n in names}
            if prediction_column:
                reference_columns[PREDICTION_FEATURE] = _column(reference, prediction_column, False)
                current_columns[PREDICTION_FEATURE] = _column(current, prediction_column, False)
            report = drift_report_from_samples(
                reference_columns, current_columns, config, categorical=categorical
            )
            if bins is not None:
                bins.update(
                    exact_bins(reference_columns, current_columns, categorical, config.n_bins)
                )
            return report
        assert profile is not None
        columns = {n: _column(current, n, n in categorical) for n in names}
        if prediction_column:
            if profile.prediction is None:
                raise _InputError(
                    drift_result.REASON_DATA_MISMATCH,
                    "--prediction-column was given but the profile has no prediction profile",
                )
            columns[PREDICTION_FEATURE] = _column(current, prediction_column, False)
        counts = counts_from_samples(profile, columns)
        if bins is not None:
            bins.update({name: FeatureBins(profile.feature(name), c) for name, c in counts.items()})
        return drift_report(profile, counts, config)
    except ValueError as exc:
        raise _InputError(drift_result.REASON_DATA_MISMATCH, str(exc)) from None


def exact_bins(
    reference: Mapping[str, npt.NDArray[Any]],
    current: Mapping[str, npt.NDArray[Any]],
    categorical: Sequence[str],
    n_bins: int,
) -> dict[str, FeatureBins]:
    """Chart bins of an exact check: each reference column binned by the profile's rule (for a
    numerical column, the same quantile bins the exact PSI and Jensen-Shannon use), the current
    column counted over them."""
    out: dict[str, FeatureBins] = {}
    for name, values in reference.items():
        array = np.asarray(values)
        feature: FeatureProfile = (
            categorical_profile(name, array)
            if name in categorical or array.dtype.kind not in "fiu"
            else numeric_profile(name, array, n_bins)
        )
        counts, _missing = feature.bin_counts(current[name])
        out[name] = FeatureBins(feature, [int(c) for c in counts])
    return out


def write_html(target: str, page: bytes, env: Mapping[str, str]) -> bool:
    """Write the page to a path or storage URI; False (and why, on stderr) when it fails."""
    from kubeloop.training.artifacts import write_atomic
    from kubeloop.training.data import storage_options_for
    from kubeloop.trust.data_paths import clean_text

    try:
        write_atomic(target, page, storage_options_for(target, env))
    except Exception as exc:  # any storage error: the check itself stands
        cause = exc.__cause__ or exc
        # The error's type and OS reason only: a storage library's message may quote secrets.
        reason = type(cause).__name__
        if isinstance(cause, OSError) and isinstance(cause.strerror, str):
            reason += f": {clean_text(cause.strerror, 80)}"
        print(f"kubeloop drift: --html {_shown(target)}: cannot write ({reason})", file=sys.stderr)
        return False
    return True


def _shown(uri: str | None) -> str | None:
    from kubeloop.trust.data_paths import display_uri

    return display_uri(uri) if uri else None


_POLICY_FIELD = {"threshold": "thresholds.features", "alpha": "alpha.features"}


def _unused_message(unused: UnusedFeatureSetting, profile: Profile) -> str:
    """A per-feature setting nothing reads, named as in the config and in a DriftPolicy."""
    where = (
        f"--config features.{unused.feature}.{unused.setting} "
        f"(a DriftPolicy's spec.{_POLICY_FIELD[unused.setting]})"
    )
    if unused.cause == "unknown":
        known = ", ".join(f.name for f in profile.all_features())
        return f"{where}: {unused.feature!r} is not in the profile (it has: {known}); remove it"
    if unused.cause == "unchecked":
        return f"{where}: {unused.feature!r} is not checked (--features leaves it out); remove it"
    return (
        f"{where}: {unused.feature!r} is {unused.kind} and its test is {unused.test}, which never "
        f"reads {'a score threshold' if unused.setting == 'threshold' else 'an alpha'}; remove it"
    )


def _require_columns(frame: pd.DataFrame, names: Sequence[str], flag: str) -> None:
    from kubeloop.trust.data_paths import column_names

    missing = [n for n in names if n not in frame.columns]
    if missing:
        # Column names only, sanitised and capped: a header may be someone's secret (issue 13).
        raise _InputError(
            drift_result.REASON_DATA_MISMATCH,
            f"{flag} lacks column(s) {column_names(missing, quoted=False)}; it has "
            f"{column_names(list(frame.columns), quoted=False)}",
        )


def _column(frame: pd.DataFrame, name: str, categorical: bool) -> npt.NDArray[Any]:
    import pandas as pd

    series = frame[name]
    if (
        not categorical
        and pd.api.types.is_numeric_dtype(series)
        and not pd.api.types.is_bool_dtype(series)
    ):
        values: npt.NDArray[Any] = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return values
    # Categories travel as Python objects with None for missing, the profile's convention.
    objects: npt.NDArray[Any] = series.astype(object).where(series.notna(), None).to_numpy()
    return objects


def _load_frame(
    uri: str, data_format: str | None, env: Mapping[str, str], pvc_mount_root: str, flag: str
) -> pd.DataFrame:
    from kubeloop.training.data import DataError, load_table

    field = DATASET_FIELD if flag == "--data" else flag
    try:
        return load_table(
            uri, data_format, env=env, pvc_mount_root=pvc_mount_root, field=field
        ).frame
    except DataError as exc:
        raise _InputError(drift_result.REASON_DATA_UNAVAILABLE, f"{flag}: {exc}") from None


def _load_profile(uri: str, env: Mapping[str, str], pvc_mount_root: str) -> Profile:
    import fsspec
    from pydantic import ValidationError

    from kubeloop.training.data import local_path_of, resolve_uri, storage_options_for
    from kubeloop.trust.data_paths import (
        DataPathNotAllowed,
        DataRoots,
        display_uri,
        read_error_summary,
        remote_scheme_problem,
    )

    location = resolve_uri(uri, pvc_mount_root)
    try:
        # The profile is read under the same rule as the data (kubeloop.trust.data_paths).
        local_path = local_path_of(location)
        if local_path is not None:
            location = DataRoots.from_env(env).check(local_path, "--profile", uri)
        elif (problem := remote_scheme_problem(location)) is not None:
            raise DataPathNotAllowed(f"--profile {display_uri(uri)!r}: {problem}")
    except DataPathNotAllowed as exc:
        raise _InputError(drift_result.REASON_PROFILE_UNAVAILABLE, str(exc)) from None
    try:
        with fsspec.open(location, "rb", **storage_options_for(location, env)) as handle:
            payload = handle.read()
    except (OSError, ValueError) as exc:
        raise _InputError(
            drift_result.REASON_PROFILE_UNAVAILABLE,
            f"--profile {display_uri(uri)!r} cannot be read ({read_error_summary(exc, 'json')})",
        ) from None
    try:
        return Profile.from_json_bytes(payload)
    except ValidationError as exc:
        raise _InputError(
            drift_result.REASON_PROFILE_UNAVAILABLE,
            f"--profile {uri!r} is not a kubeloop profile.json: {exc.errors()[0]['msg']} "
            f"at {'.'.join(map(str, exc.errors()[0]['loc']))}",
        ) from None


def _load_config(raw: str | None) -> DriftConfig:
    import yaml
    from pydantic import ValidationError

    if not raw:
        return DriftConfig()
    try:
        text = raw if raw.lstrip().startswith("{") else Path(raw).read_text()
        return DriftConfig.model_validate(yaml.safe_load(text) or {})
    except OSError as exc:
        raise _InputError(drift_result.REASON_CONFIG_INVALID, f"--config: {exc}") from None
    except yaml.YAMLError as exc:
        raise _InputError(
            drift_result.REASON_CONFIG_INVALID, f"--config is not JSON/YAML: {exc}"
        ) from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise _InputError(drift_result.REASON_CONFIG_INVALID, f"--config: {problems}") from None


def _split(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


def format_table(report: DriftReport) -> str:
    """The report as a table a person reads in ``kubectl logs``."""
    rows = [*report.features, *([report.prediction] if report.prediction else [])]
    header = ("FEATURE", "KIND", "TEST", "SCORE", "P(ADJ)", "THRESHOLD", "DRIFTED")
    table = [header]
    for f in rows:
        p_value = f.p_value_adjusted if f.p_value_adjusted is not None else f.p_value
        table.append(
            (
                f.feature,
                f.kind,
                f.test,
                f"{f.score:.4g}",
                "-" if p_value is None else f"{p_value:.3g}",
                f"{f.threshold:g}",
                "yes" if f.drifted else "no",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    verdict = "DRIFTED" if report.drifted else "no drift"
    lines.append("")
    lines.append(
        f"{verdict}: {len(report.drifted_features)}/{len(report.features)} features drifted "
        f"(share {report.share:.2f}, driftShare {report.drift_share:g}; {report.mode} mode, "
        f"{report.sample_size} rows)"
        + ("; prediction drifted" if report.prediction_drifted else "")
    )
    for skipped in report.skipped:
        lines.append(f"skipped {skipped.feature}: {skipped.reason}")
    return "\n".join(lines)
