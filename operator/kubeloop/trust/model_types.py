"""Which types a model file may make the reader construct: the reader decides, never the file.

A skops file names, for every object in it, a module and a name, and how to rebuild it. Some
ways of rebuilding *call* what they name (skops' reduce path calls ``module.name(*args)``), so
the names a file may use are exactly the code a file may run. skops itself trusts a short list
of safe defaults (builtin containers, numpy arrays, numpy and scipy ufuncs); every other name
a file uses comes here, through :func:`decide`, and is trusted only when it is:

* a **scikit-learn estimator class**: a class, subclass of ``sklearn.base.BaseEstimator``,
  whose ``__module__`` is the module the file names (so it is defined there, not merely
  imported there: ``sklearn.utils._testing.check_output`` *is* ``subprocess.check_output``),
  and that module lies under an allowed package (default ``sklearn``); or
* one of :data:`VETTED_TYPES`: a few non-estimator classes that fitted scikit-learn models
  hold, each named with the reason it is needed; or
* one of the XGBoost and LightGBM scikit-learn wrappers of
  :data:`kubeloop.trust.boosters.BOOSTER_TYPES` (``XGBClassifier``, ``XGBRegressor``,
  ``LGBMClassifier``, ``LGBMRegressor``), by exact name and only when that library is
  installed. skops stores only the wrapper; its booster is read from the file's native entry
  (:mod:`kubeloop.trust.boosters`), never from skops. Any other class of those packages
  (``XGBRanker``, ``xgboost.core.Booster``, dask wrappers...) is refused, whatever the
  estimator packages say.

Everything else is refused: functions (``numpy.testing._private.utils.runstring`` calls
``exec``), classes re-exported under an allowed package, numpy and scipy classes that are not
on the list (``numpy.memmap`` writes files when constructed). A name is looked up only after
its module passed the package check, and looking it up imports only modules of the allowed
packages, which run no code of the file.

The server (``serving.model``) and the trainer's champion load (``training.artifacts``), the
only readers of model files (``kubeloop drift`` reads profiles and data), load through
:func:`load_trusted`; a refusal names every refused type.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kubeloop.trust import boosters
from kubeloop.trust.boosters import BOOSTER_PACKAGES, BOOSTER_TYPES

DEFAULT_ESTIMATOR_PACKAGES: tuple[str, ...] = ("sklearn",)

# The DistanceMetric64 subclasses a fitted model's KD or ball tree may hold: one per metric name
# a spec may write (`metric: manhattan`). Not PyFuncDistance64: it holds a Python callable and
# calls it on every distance.
_DISTANCE_METRICS = (
    "BrayCurtis", "Canberra", "Chebyshev", "Dice", "Euclidean", "Hamming", "Haversine",
    "Jaccard", "Kulsinski", "Mahalanobis", "Manhattan", "Matching", "Minkowski",
    "RogersTanimoto", "RussellRao", "SEuclidean", "SokalMichener", "SokalSneath",
)  # fmt: skip

VETTED_TYPES: dict[str, str] = {
    "numpy.dtype": "the dtype of a fitted array attribute (e.g. a forest's classes_); "
    "constructing a dtype runs no user code",
    "sklearn.tree._tree.Tree": "the fitted tree inside every DecisionTree, RandomForest, "
    "ExtraTrees, Bagging and GradientBoosting model (a Cython class, rebuilt from arrays)",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor": "the fitted trees of "
    "HistGradientBoostingClassifier/Regressor (arrays of nodes)",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer": "the optimiser state kept "
    "by a fitted MLPClassifier/MLPRegressor (solver='adam')",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer": "the optimiser state kept "
    "by a fitted MLPClassifier/MLPRegressor (solver='sgd')",
    "collections.OrderedDict": "the best scores and evaluation results a fitted LightGBM "
    "wrapper keeps (a dict that remembers order; building one runs no user code)",
    # The types below are held by models the trainer fits from estimators the estimator policy
    # admits (kubeloop.trust.estimators); without them a run would end Succeeded with a model
    # no server loads. Each was admitted after reading how skops rebuilds it: never through a
    # constructor or reduce function the file names, only ``cls.__new__(cls)`` and then the
    # class's own ``__setstate__`` or ``__dict__.update`` (ObjectNode), ``cls()`` and item
    # assignment (DictNode), ``cls(*values)`` for a namedtuple (TupleNode), or not at all
    # (SparseMatrixNode); every value inside is a node judged on its own. None of these
    # classes' ``__new__``/``__setstate__`` calls anything it was given, so loading one calls
    # no callable of the file's choosing. As for ``Tree``, the Cython classes' index arrays are
    # taken as they are: what stops a tampered file is the sha256 pinned in the TrainingRun's
    # status and checked before any of this, not this list.
    "sklearn.utils._bunch.Bunch": "the named sub-estimators of a fitted VotingClassifier/"
    "Regressor and StackingClassifier/Regressor (named_estimators_): a dict subclass that skops "
    "rebuilds as Bunch() and then item by item",
    "sklearn.calibration._CalibratedClassifier": "one calibrated fold of a fitted "
    "CalibratedClassifierCV: a plain object (no __setstate__) holding a fitted estimator, its "
    "calibrators and classes, rebuilt by __new__ and __dict__.update",
    # GaussianProcessClassifier/Regressor keep their fitted kernel (kernel_). A spec can only
    # give them the default kernel, ConstantKernel * RBF: kernels are not estimators, so
    # {estimator: ...} cannot name one, and params are JSON. So only these three are listed;
    # PairwiseKernel (whose metric may be a callable) and the others are not.
    "sklearn.gaussian_process.kernels.ConstantKernel": "part of the default kernel of a fitted "
    "GaussianProcessClassifier/Regressor: a plain object of numbers (no __setstate__)",
    "sklearn.gaussian_process.kernels.RBF": "part of the default kernel of a fitted "
    "GaussianProcessClassifier/Regressor: a plain object of numbers (no __setstate__)",
    "sklearn.gaussian_process.kernels.Product": "the default kernel of a fitted "
    "GaussianProcessClassifier/Regressor (ConstantKernel * RBF): a plain object holding its "
    "two factors (no __setstate__)",
    "sklearn.impute._iterative._ImputerTriplet": "one step of a fitted IterativeImputer's "
    "imputation_sequence_: a namedtuple of two indices and an estimator, which skops rebuilds by "
    "calling the namedtuple class on its three values (tuple.__new__)",
    "scipy.sparse._csr.csr_matrix": "the sparse components_ of a fitted SparseRandomProjection "
    "(and SpectralEmbedding's affinity_matrix_). skops does not call the class the file names: "
    "its SparseMatrixNode reads the entry with scipy.sparse.load_npz, which uses "
    "numpy.load(allow_pickle=False) and builds only scipy's sparse classes from arrays",
    "sklearn._loss.loss.HalfTweedieLoss": "the loss of a fitted TweedieRegressor (log link): "
    "a plain object like the losses skops trusts itself (its Cython part is a skops LossNode)",
    "sklearn._loss.loss.HalfTweedieLossIdentity": "the loss of a fitted TweedieRegressor "
    "(identity link, the default): a plain object like the losses skops trusts itself",
    # KNeighbors*, RadiusNeighbors*, NearestNeighbors, KernelDensity, LocalOutlierFactor,
    # Isomap... keep a KD or ball tree (algorithm auto, kd_tree or ball_tree; brute keeps
    # none). BinaryTree.__setstate__ assigns typed arrays and numbers and a distance metric
    # that Cython checks is a DistanceMetric64; DistanceMetric64.__setstate__ assigns p, vec
    # and mat.
    "sklearn.neighbors._kd_tree.KDTree": "the neighbour index of a fitted nearest-neighbours "
    "model (a Cython class rebuilt from arrays by its own __setstate__)",
    "sklearn.neighbors._ball_tree.BallTree": "the neighbour index of a fitted "
    "nearest-neighbours model (a Cython class rebuilt from arrays by its own __setstate__)",
    **{
        f"sklearn.metrics._dist_metrics.{metric}Distance64": "the distance metric of a KD or "
        "ball tree (a Cython class rebuilt from p and two arrays by its own __setstate__)"
        for metric in _DISTANCE_METRICS
    },
}


class UntrustedModelTypesError(ValueError):
    """A model file needs types the reader does not trust; the message names each one."""

    def __init__(self, refused: Sequence[tuple[str, str]]) -> None:
        self.refused = list(refused)
        details = "; ".join(f"{name} ({why})" for name, why in self.refused)
        super().__init__(
            f"model.skops needs {len(self.refused)} type(s) Kubeloop does not trust: {details}. "
            "Only scikit-learn estimator classes, a short vetted list of helper types and the "
            "XGBoost/LightGBM scikit-learn wrappers may be loaded; retrain the model with `kubeloop train` from supported estimators"
        )


@dataclass(frozen=True)
class TypeDecision:
    """Whether one dotted type name may be constructed, and why not if it may not."""

    name: str
    trusted: bool
    reason: str


def _packages(prefixes: Iterable[str]) -> tuple[str, ...]:
    # "sklearn", "sklearn." and "sklearn.*" all name the package sklearn.
    return tuple(dict.fromkeys(p.strip().rstrip("*").rstrip(".") for p in prefixes if p.strip()))


def _under(module: str, packages: Sequence[str]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def decide_type(
    name: str, estimator_packages: Sequence[str] = DEFAULT_ESTIMATOR_PACKAGES
) -> TypeDecision:
    """The decision for one name as skops writes it: ``<module>.<qualified name>``."""
    if name in VETTED_TYPES:
        return TypeDecision(name, True, VETTED_TYPES[name])
    module_name = name.rpartition(".")[0]
    if _under(module_name, BOOSTER_PACKAGES):
        return _decide_booster_type(name)
    module_name, _, attribute = name.rpartition(".")
    if not module_name or not all(part.isidentifier() for part in name.split(".")):
        return TypeDecision(name, False, "not a dotted name")
    packages = _packages(estimator_packages)
    if not _under(module_name, packages):
        return TypeDecision(name, False, f"outside the estimator packages {', '.join(packages)}")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return TypeDecision(name, False, f"module {module_name} cannot be imported")
    found = getattr(module, attribute, None)
    if found is None:
        return TypeDecision(name, False, f"{module_name} has no {attribute}")
    if not inspect.isclass(found):
        return TypeDecision(
            name, False, f"a {type(found).__name__}, not a class: calling it could run code"
        )
    if found.__module__ != module_name or found.__qualname__ != attribute:
        return TypeDecision(
            name, False, f"re-exported: really {found.__module__}.{found.__qualname__}"
        )
    from sklearn.base import BaseEstimator

    if not issubclass(found, BaseEstimator):
        return TypeDecision(name, False, "not a scikit-learn estimator (BaseEstimator subclass)")
    return TypeDecision(name, True, "scikit-learn estimator class")


def _decide_booster_type(name: str) -> TypeDecision:
    framework = BOOSTER_TYPES.get(name)
    if framework is None:
        return TypeDecision(
            name, False, f"not one of the booster wrappers {', '.join(sorted(BOOSTER_TYPES))}"
        )
    module_name, _, attribute = name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return TypeDecision(name, False, f"{framework.package} is not installed here")
    found = getattr(module, attribute, None)
    if not inspect.isclass(found) or f"{found.__module__}.{found.__qualname__}" != name:
        return TypeDecision(name, False, f"{name} is not the class of that name here")
    return TypeDecision(
        name, True, f"{framework.package} scikit-learn wrapper; its booster is stored natively"
    )


def decide(
    names: Iterable[str], estimator_packages: Sequence[str] = DEFAULT_ESTIMATOR_PACKAGES
) -> list[TypeDecision]:
    """A decision for every name, in sorted order."""
    return [decide_type(name, estimator_packages) for name in sorted(set(names))]


def trusted_types(
    model_bytes: bytes, estimator_packages: Sequence[str] = DEFAULT_ESTIMATOR_PACKAGES
) -> list[str]:
    """The names skops must be told to trust to load these bytes; raises if any is refused."""
    from kubeloop.trust.skops_io import skops_io

    needed = list(skops_io().get_untrusted_types(data=model_bytes))
    decisions = decide(needed, estimator_packages)
    refused = [(d.name, d.reason) for d in decisions if not d.trusted]
    if refused:
        raise UntrustedModelTypesError(refused)
    return needed


def load_trusted(
    model_bytes: bytes, estimator_packages: Sequence[str] = DEFAULT_ESTIMATOR_PACKAGES
) -> Any:
    """Deserialise a model file, trusting exactly what :func:`trusted_types` allows.

    The booster manifest is validated first (:func:`kubeloop.trust.boosters.read_manifest`);
    then skops loads the estimator with only the trusted types; then each XGBoost/LightGBM
    wrapper gets its booster from the file's native entry. Raises
    :class:`UntrustedModelTypesError` or :class:`kubeloop.trust.boosters.BoosterArtifactError`.
    """
    from kubeloop.trust.skops_io import skops_io

    records = boosters.read_manifest(model_bytes)
    trusted = trusted_types(model_bytes, estimator_packages)
    model = skops_io().loads(model_bytes, trusted=trusted)
    return boosters.attach(model, records)
