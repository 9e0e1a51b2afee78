"""Data sources (bundled, synthetic, files, HTTP over a real socket) and the data fingerprint."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import datasets

from kubeloop.training.data import (
    BUNDLED_DATASETS,
    DataError,
    infer_format,
    load_table,
    make_synthetic,
    resolve_uri,
    storage_options_for,
)
from kubeloop.training.fingerprint import data_fingerprint


@pytest.mark.parametrize("name", sorted(BUNDLED_DATASETS))
def test_bundled_datasets_match_scikit_learn(name: str) -> None:
    loaded = load_table(f"sklearn://{name}")
    reference = getattr(datasets, BUNDLED_DATASETS[name])()
    assert loaded.default_target == "target"
    assert loaded.frame.shape == (reference.data.shape[0], reference.data.shape[1] + 1)
    np.testing.assert_array_equal(loaded.frame["target"].to_numpy(), reference.target)
    np.testing.assert_allclose(loaded.frame.drop(columns="target").to_numpy(), reference.data)


def test_unknown_bundled_dataset_is_named_with_the_choices() -> None:
    with pytest.raises(DataError, match=r"sklearn://titanic.*breast_cancer"):
        load_table("sklearn://titanic")


def test_synthetic_is_seeded_and_shaped() -> None:
    first = make_synthetic(rows=500, features=3, categorical=2, seed=5)
    again = make_synthetic(rows=500, features=3, categorical=2, seed=5)
    other = make_synthetic(rows=500, features=3, categorical=2, seed=6)
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)
    assert list(first.columns) == ["x0", "x1", "x2", "c0", "c1", "target"]
    assert set(first["c0"].astype(str)) <= {"a", "b", "c", "d"}
    assert set(first["target"]) == {0, 1}
    # The classes are roughly balanced on unshifted data.
    assert 0.3 < first["target"].mean() < 0.7


def test_synthetic_from_uri_matches_the_function() -> None:
    loaded = load_table("sklearn://synthetic?rows=300&features=4&seed=3&task=regression")
    pd.testing.assert_frame_equal(loaded.frame, make_synthetic(rows=300, features=4, seed=3, task="regression"))


def test_synthetic_shift_moves_only_the_named_features() -> None:
    reference = make_synthetic(rows=4000, features=3, seed=1)
    shifted = make_synthetic(rows=4000, features=3, seed=2, shift=1.0, shifted_features=["x1"])
    same = make_synthetic(rows=4000, features=3, seed=2)
    # x1 moved by one standard deviation; x0 and x2 are drawn from the same law.
    assert stats.ks_2samp(reference["x1"], shifted["x1"]).pvalue < 1e-6
    for name in ("x0", "x2"):
        assert stats.ks_2samp(reference[name], shifted[name]).pvalue > 1e-3
    moved = (shifted["x1"].mean() - reference["x1"].mean()) / reference["x1"].std()
    assert 0.9 < moved < 1.1
    assert stats.ks_2samp(reference["x1"], same["x1"]).pvalue > 1e-3


def test_synthetic_categorical_shift_moves_mass_to_the_rarest_category() -> None:
    reference = make_synthetic(rows=4000, features=1, categorical=1, seed=1)
    shifted = make_synthetic(rows=4000, features=1, categorical=1, seed=1, shift=0.5, shifted_features=["c0"])
    table = pd.crosstab(
        np.r_[np.zeros(4000), np.ones(4000)],
        np.r_[reference["c0"].astype(str), shifted["c0"].astype(str)],
    )
    assert stats.chi2_contingency(table).pvalue < 1e-6
    assert (shifted["c0"] == "d").mean() > (reference["c0"] == "d").mean() + 0.1


def test_synthetic_refuses_unknown_shifted_features_and_parameters() -> None:
    with pytest.raises(DataError, match="x9"):
        make_synthetic(features=2, shift=1.0, shifted_features=["x9"])
    with pytest.raises(DataError, match="colour"):
        load_table("sklearn://synthetic?colour=red")


@pytest.mark.parametrize(
    ("uri", "override", "expected"),
    [
        ("s3://b/data/train.csv", None, "csv"),
        ("/mnt/pvc/data/train.csv.gz", None, "csv"),
        ("https://example.invalid/x.parquet?version=2", None, "parquet"),
        ("file:///data/x.pq", None, "parquet"),
        ("file:///data/export", "parquet", "parquet"),
        ("file:///data/x.csv", "parquet", "parquet"),
    ],
)
def test_format_is_inferred_from_the_extension_unless_given(uri: str, override: str | None, expected: str) -> None:
    assert infer_format(uri, override) == expected


def test_format_that_cannot_be_inferred_names_the_fix() -> None:
    with pytest.raises(DataError, match=r"spec\.data\.format"):
        infer_format("file:///data/export")


def test_pvc_and_s3_endpoint_resolution() -> None:
    assert resolve_uri("pvc://datasets/churn/train.csv", "/mnt/pvc") == "/mnt/pvc/datasets/churn/train.csv"
    assert storage_options_for("s3://b/k.csv", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}) == {
        "endpoint_url": "http://127.0.0.1:9000"}
    assert storage_options_for("s3://b/k.csv", {"FSSPEC_S3_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL": "http://b"}) == {
        "endpoint_url": "http://a"}
    assert storage_options_for("file:///x.csv", {"AWS_ENDPOINT_URL": "http://b"}) == {}


@pytest.fixture
def iris_frame() -> pd.DataFrame:
    frame = load_table("sklearn://iris").frame
    frame["species"] = pd.Series(np.array(["setosa", "versicolor", "virginica"])[frame["target"]], dtype="str")
    return frame


def test_csv_and_parquet_from_paths_and_file_uris(tmp_path: Path, iris_frame: pd.DataFrame) -> None:
    iris_frame.to_csv(tmp_path / "iris.csv", index=False)
    iris_frame.to_parquet(tmp_path / "iris.parquet", index=False)
    from_csv = load_table(str(tmp_path / "iris.csv"))
    from_uri = load_table(f"file://{tmp_path}/iris.parquet")
    assert (from_csv.format, from_uri.format) == ("csv", "parquet")
    pd.testing.assert_frame_equal(from_csv.frame, iris_frame, check_dtype=False)
    pd.testing.assert_frame_equal(from_uri.frame, iris_frame, check_dtype=False)
    # Same values, same types: the fingerprint does not depend on the file format.
    assert data_fingerprint(from_csv.frame) == data_fingerprint(from_uri.frame)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"file not found.*spec\.data\.source"):
        load_table(str(tmp_path / "nope.csv"))


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the test output clean

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_source_over_a_real_socket(tmp_path: Path, http_root: str, iris_frame: pd.DataFrame) -> None:
    iris_frame.to_csv(tmp_path / "iris.csv", index=False)
    loaded = load_table(f"{http_root}/iris.csv")
    pd.testing.assert_frame_equal(loaded.frame, iris_frame, check_dtype=False)


# --- fingerprint --------------------------------------------------------------------------


def test_fingerprint_is_stable_and_column_order_free(iris_frame: pd.DataFrame) -> None:
    first = data_fingerprint(iris_frame)
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    assert data_fingerprint(iris_frame.copy()) == first
    assert data_fingerprint(iris_frame[list(reversed(iris_frame.columns))]) == first


@pytest.mark.parametrize("column", ["sepal length (cm)", "target", "species"])
def test_fingerprint_changes_when_one_cell_changes(iris_frame: pd.DataFrame, column: str) -> None:
    before = data_fingerprint(iris_frame)
    changed = iris_frame.copy()
    old = changed.at[77, column]
    changed.at[77, column] = "setosa!" if column == "species" else old + 1
    assert data_fingerprint(changed) != before
    changed.at[77, column] = old
    assert data_fingerprint(changed) == before


def test_fingerprint_sees_row_order_and_missing_values(iris_frame: pd.DataFrame) -> None:
    before = data_fingerprint(iris_frame)
    assert data_fingerprint(iris_frame.iloc[::-1]) != before
    with_nan = iris_frame.copy()
    with_nan.loc[3, "sepal width (cm)"] = np.nan
    with_other_nan = iris_frame.copy()
    with_other_nan.loc[3, "sepal width (cm)"] = -np.float64("nan")
    assert data_fingerprint(with_nan) != before
    assert data_fingerprint(with_nan) == data_fingerprint(with_other_nan)
    text_missing = iris_frame.copy()
    text_missing["species"] = text_missing["species"].astype(object)
    text_missing.loc[3, "species"] = None
    empty_text = iris_frame.copy()
    empty_text.loc[3, "species"] = ""
    assert data_fingerprint(text_missing) != data_fingerprint(empty_text)


def test_fingerprint_tells_text_boundaries_apart() -> None:
    # "ab","c" and "a","bc" concatenate to the same bytes; the lengths keep them apart.
    left = pd.DataFrame({"s": ["ab", "c"]})
    right = pd.DataFrame({"s": ["a", "bc"]})
    assert data_fingerprint(left) != data_fingerprint(right)


def test_fingerprint_of_text_is_the_same_whatever_pandas_type_holds_it() -> None:
    values = ["north", "south", None, "wést", "", "north"]
    as_str = pd.DataFrame({"region": pd.Series(values, dtype="str")})
    as_object = pd.DataFrame({"region": pd.Series(values, dtype=object)})
    as_category = pd.DataFrame({"region": pd.Series(values, dtype="category")})
    assert data_fingerprint(as_str) == data_fingerprint(as_object) == data_fingerprint(as_category)
    as_object.loc[3, "region"] = "west"
    assert data_fingerprint(as_object) != data_fingerprint(as_str)
