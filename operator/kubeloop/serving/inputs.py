"""What a served model takes as input, decided once per process.

Two decisions, both pure:

- **Before scikit-learn is imported**, from the skops file alone (a zip whose
  ``schema.json`` names every stored type): does this model need pandas at all? The
  server then leaves out the modules it never uses (``modules_to_leave_out``), in the
  supervisor and in every spawned worker alike.
- **After the model is loaded**, from the fitted estimator itself: which features it takes
  as text (``text_features``: the columns a fitted ``ColumnTransformer`` routes by name to
  an encoder whose categories are strings, as ``kubeloop train`` builds for text columns),
  and whether ``predict`` must receive a pandas DataFrame (``needs_dataframe``: a
  ``ColumnTransformer`` that selects columns by name cannot take a NumPy matrix).

Models that take only numbers keep the float64 matrix path; nothing here runs per request.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from typing import Any

import orjson

# Installed in the image for the trainer, the CLI or the tests, and imported by libraries
# the server uses only because they are there (each importer treats it as optional, with a
# ``try: import ... except ImportError``); a server process never uses them:
# - pyarrow: pandas' optional engine (~33 MB);
# - pytest: sklearn.utils._testing, which skops imports (~6 MB);
# - rich: scikit-learn's fit progress bars (sklearn/callback/_progressbar.py, ~2 MB);
# - charset_normalizer: numpy.f2py's Fortran source reader, which scipy reaches (~3.5 MB).
NEVER_SERVED_MODULES = frozenset({"pyarrow", "pytest", "rich", "charset_normalizer"})
# scikit-learn imports pandas only if it can; a model needs it when it holds a
# ColumnTransformer (which selects columns by name from a DataFrame) or was told to
# output DataFrames (``set_output(transform="pandas")``).
COLUMN_TRANSFORMER_MODULE = "sklearn.compose._column_transformer"
PANDAS_OUTPUT = '"pandas"'


# --------------------------------------------------------------------------------------------
# Before scikit-learn: the stored types


def _schema_nodes(node: Any) -> Iterator[dict[str, Any]]:
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            yield current
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)


def needs_pandas(model_bytes: bytes) -> bool:
    """Whether the skops file describes a model that needs pandas DataFrames.

    Reads only ``schema.json`` from the zip (no scikit-learn, no skops import). Bytes that
    are not a skops file answer False: loading them fails anyway, with its own message.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as archive:
            schema = orjson.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, orjson.JSONDecodeError):
        return False
    for node in _schema_nodes(schema):
        if node.get("__module__") == COLUMN_TRANSFORMER_MODULE:
            return True
        if node.get("__loader__") == "JsonNode" and node.get("content") == PANDAS_OUTPUT:
            return True
    return False


def modules_to_leave_out(model_bytes: bytes) -> frozenset[str]:
    """Top-level modules a server process for this model should treat as not installed."""
    if needs_pandas(model_bytes):
        return NEVER_SERVED_MODULES
    return NEVER_SERVED_MODULES | {"pandas"}


# --------------------------------------------------------------------------------------------
# After loading: the fitted estimator


def _input_column_transformers(estimator: Any) -> Iterator[Any]:
    """ColumnTransformers that see the raw request columns (first steps, nested pipelines)."""
    current = estimator
    while current is not None:
        if hasattr(current, "transformers_"):
            yield current
            return
        steps = getattr(current, "steps", None)
        current = steps[0][1] if steps else None


def _selects_by_name(columns: Any) -> bool:
    if isinstance(columns, str) or callable(columns):
        return True
    return isinstance(columns, list | tuple) and any(isinstance(c, str) for c in columns)


def _encoder_categories(transformer: Any) -> list[Any] | None:
    """``categories_`` of the encoder that first sees these columns (itself or a pipeline's)."""
    categories = getattr(transformer, "categories_", None)
    if categories is not None:
        return list(categories)
    for _, step in getattr(transformer, "steps", None) or []:
        categories = getattr(step, "categories_", None)
        if categories is not None:
            return list(categories)
    return None


def _holds_text(categories: Any) -> bool:
    kind = getattr(getattr(categories, "dtype", None), "kind", "")
    return kind in ("O", "S", "U") and any(isinstance(c, str) for c in list(categories))


def text_features(estimator: Any) -> list[str]:
    """The features the fitted model takes as text, in its feature order.

    A feature is text when a ColumnTransformer that sees the request's columns routes it by
    name to an encoder (OneHotEncoder, OrdinalEncoder, ...) fitted on string categories.
    """
    names = [str(n) for n in getattr(estimator, "feature_names_in_", [])]
    text: set[str] = set()
    for column_transformer in _input_column_transformers(estimator):
        for _, transformer, columns in column_transformer.transformers_:
            if not _selects_by_name(columns):
                continue
            categories = _encoder_categories(transformer)
            if categories is None:
                continue
            selected = [columns] if isinstance(columns, str) else list(columns)
            for column, values in zip(selected, categories, strict=False):
                if _holds_text(values):
                    text.add(str(column))
    return [name for name in names if name in text]


def needs_dataframe(estimator: Any) -> bool:
    """Whether ``predict`` must get a DataFrame with named columns (not a NumPy matrix)."""
    for column_transformer in _input_column_transformers(estimator):
        specs = getattr(column_transformer, "transformers", [])
        if any(_selects_by_name(columns) for _, _, columns in specs):
            return True
    return False
