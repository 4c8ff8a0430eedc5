"""scikit-learn adapter: a linear model's or an MLP's weights as ``Arrays`` and back, and
local training that continues from the global model.

What travels is what the estimator learned: ``coef_`` and ``intercept_`` for linear models
(``LogisticRegression``, ``SGDClassifier``, ``SGDRegressor``, ``Ridge``, ...), and
``coefs_0``, ``intercepts_0``, ``coefs_1``, ... (one pair per layer) for ``MLPClassifier``
and ``MLPRegressor``. An unfitted estimator has none of these, so ``initial_arrays`` sets it
up as if fitted (weights, ``classes_``, ``n_features_in_``): the server holds an initial
model and every client starts from the global one. ``SklearnClient`` does the rest::

    from pollinate.frameworks.sklearn import SklearnClient

    def client_fn(context):
        train, val = load_partition(context.partition_id)
        return SklearnClient(LogisticRegression, train, val, classes=[0, 1], local_epochs=5)

How ``train`` continues from the weights it is given, per estimator:

- ``partial_fit`` (SGD models, Perceptron, MLPs with ``solver="sgd"`` or ``"adam"``): one
  call per local epoch, each one pass over the data. A fresh model each round means the
  optimizer's state (Adam moments, the SGD step counter) restarts each round.
- ``warm_start`` (``LogisticRegression`` except with liblinear, MLPs with ``solver="lbfgs"``,
  ``Lasso``, ``ElasticNet``): one ``fit`` with ``warm_start=True`` and ``max_iter=epochs``,
  so a round runs ``epochs`` solver iterations from the global weights. sklearn then warns
  that the solver stopped before converging (``ConvergenceWarning``): that is by design.
- The other linear models (``LinearRegression`` and ``Ridge`` solve in closed form) cannot
  continue from weights: ``get_arrays``/``set_arrays`` work, ``train`` refuses them and
  names an SGD equivalent.

In simulation clients train side by side in threads: give BLAS one thread each
(``threadpoolctl.threadpool_limits(1, user_api="blas")``, as the breast-cancer example
does), or on a busy machine OpenBLAS threads fight over the cores and a fit of milliseconds
takes seconds.

>>> from sklearn.linear_model import LogisticRegression
>>> model = LogisticRegression()
>>> initial_arrays(model, n_features=3, classes=[0, 1])
Arrays(coef_: float64[1, 3], intercept_: float64[1])
>>> model.predict(np.ones((2, 3))).tolist()
[0, 0]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator, is_classifier
from sklearn.linear_model import ElasticNet, LogisticRegression, SGDRegressor

# The two bases every linear model but SGDRegressor derives from.
from sklearn.linear_model._base import LinearClassifierMixin, LinearModel
from sklearn.metrics import accuracy_score, log_loss, mean_squared_error
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state

from pollinate.checks import integer
from pollinate.client.client import Client
from pollinate.frameworks.shapes import mismatch
from pollinate.records import Arrays, Config, Metrics

__all__ = ["SklearnClient", "evaluate", "get_arrays", "initial_arrays", "set_arrays", "train"]

_LINEAR = (LinearClassifierMixin, LinearModel, SGDRegressor)
_MLP = (MLPClassifier, MLPRegressor)
# Estimators without partial_fit whose warm-started fit starts from coef_ (coefs_) alone.
# Others with warm_start also read state a fit leaves (HuberRegressor's scale_).
_WARM = (LogisticRegression, ElasticNet, *_MLP)


def get_arrays(model: BaseEstimator) -> Arrays:
    """The model's learned weights as Arrays (copies: the model may train on).

    A linear model gives ``coef_`` and ``intercept_`` (always an array, even where sklearn
    keeps a float); an MLP gives ``coefs_i`` and ``intercepts_i`` per layer, in order.
    """
    _kind(model)
    _check_ready(model)
    if isinstance(model, _MLP):
        named = {}
        for i, (coef, intercept) in enumerate(zip(model.coefs_, model.intercepts_, strict=True)):
            named[f"coefs_{i}"], named[f"intercepts_{i}"] = np.array(coef), np.array(intercept)
        return Arrays(named)
    return Arrays(
        {"coef_": np.array(model.coef_), "intercept_": np.atleast_1d(np.array(model.intercept_))}
    )


def set_arrays(model: BaseEstimator, arrays: Mapping[str, np.ndarray]) -> None:
    """Load ``arrays`` into a fitted or initialized ``model`` in place, in its dtypes.

    Names and shapes are checked first: arrays of another model raise ValueError naming each
    missing, unexpected and mis-shaped entry, and leave the model unchanged.
    """
    current = get_arrays(model)
    problem = mismatch({name: a.shape for name, a in current.items()}, arrays)
    if problem:
        raise ValueError(
            f"set_arrays: the arrays do not fit this {type(model).__name__} ({problem}): "
            "they come from another model.\nHint: build the estimator the server's initial "
            "arrays came from (same class, hidden_layer_sizes, classes and n_features)."
        )
    new = {name: np.array(arrays[name], dtype=current[name].dtype) for name in current}
    if isinstance(model, _MLP):
        model.coefs_ = [new[f"coefs_{i}"] for i in range(len(model.coefs_))]
        model.intercepts_ = [new[f"intercepts_{i}"] for i in range(len(model.intercepts_))]
        return
    model.coef_ = new["coef_"]
    # Keep sklearn's own form: a float for LinearRegression, Ridge, Lasso, ...
    scalar = np.ndim(model.intercept_) == 0
    model.intercept_ = float(new["intercept_"][0]) if scalar else new["intercept_"]


def initial_arrays(
    model: BaseEstimator, n_features: int, classes: npt.ArrayLike | None = None
) -> Arrays:
    """Set an unfitted ``model`` up as if fitted and return its initial weights.

    Linear models start at zero, MLPs at sklearn's own Glorot initialization (set
    ``random_state`` on the MLP for a repeatable start). Afterwards the model predicts and
    trains on (``train``, ``set_arrays``). A classifier needs every class of the
    federation in ``classes``: a client may hold only some of them.
    """
    kind = _kind(model)
    integer("n_features", n_features, minimum=1, hint="n_features=x_train.shape[1]")
    labels = _check_classes(model, classes)
    if kind == "mlp":
        _initialize_mlp(model, int(n_features), labels)
    else:
        _initialize_linear(model, int(n_features), labels)
    model.n_features_in_ = int(n_features)
    return get_arrays(model)


def train(
    model: BaseEstimator,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    epochs: int = 1,
) -> Metrics:
    """Train ``model`` in place, continuing from the weights it holds, for ``epochs`` passes.

    ``partial_fit`` estimators get ``epochs`` calls; the others one warm-started ``fit``
    with ``max_iter=epochs`` (the module docstring lists which is which). A classifier keeps
    its ``classes_`` even if ``y`` lacks some of them, as a client's data may: for a
    warm-started fit each missing class is added as a row of weight zero, which changes
    nothing but keeps ``classes_`` (and the weights' shapes) whole. Returns ``train_loss``
    and, for a classifier, ``train_accuracy``, both on ``(x, y)`` after training.
    """
    _check_trainable(model)
    integer("epochs", epochs, minimum=1, hint="epochs=1")
    _check_ready(model)
    # SGD's solver needs the data in the weights' dtype (float64 from initial_arrays).
    weights = model.coefs_[0] if isinstance(model, _MLP) else model.coef_
    x, y = np.asarray(x, dtype=weights.dtype), np.asarray(y)
    if _uses_partial_fit(model):
        for _ in range(epochs):
            model.partial_fit(x, y)
    else:
        model.set_params(warm_start=True, max_iter=epochs)
        _warm_fit(model, x, y)
    loss, _, metrics = evaluate(model, x, y)
    return {"train_loss": loss, **{f"train_{k}": v for k, v in metrics.items()}}


def evaluate(
    model: BaseEstimator, x: npt.ArrayLike, y: npt.ArrayLike
) -> tuple[float, int, Metrics]:
    """Loss, number of examples and metrics on ``(x, y)``: the shape ``Client.evaluate`` returns.

    Classifiers: log loss (the zero-one loss if the model has no ``predict_proba``, like
    hinge-loss SGD) and ``accuracy``; regressors: mean squared error and no metrics.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(y) == 0:
        raise ValueError("evaluate: no examples.\nHint: pass a non-empty (x, y).")
    if not is_classifier(model):
        return float(mean_squared_error(y, model.predict(x))), len(y), {}
    accuracy = float(accuracy_score(y, model.predict(x)))
    if hasattr(model, "predict_proba"):
        loss = float(log_loss(y, model.predict_proba(x), labels=model.classes_))
    else:
        loss = 1.0 - accuracy
    return loss, len(y), {"accuracy": accuracy}


class SklearnClient(Client):
    """A client for a scikit-learn estimator: ``fit`` loads the global arrays into a fresh
    model, trains it on ``train`` for ``local_epochs`` and returns its arrays with the
    number of training examples; ``evaluate`` scores the global arrays on ``val``;
    ``get_arrays`` gives the initial weights (``initial_arrays``).

    ``model_fn`` makes an unfitted estimator, e.g. ``LogisticRegression`` or
    ``lambda: MLPClassifier((32,), random_state=0)``. A classifier needs ``classes``: all
    the federation's labels, which one client may not all hold.
    """

    def __init__(
        self,
        model_fn: Callable[[], BaseEstimator],
        train: tuple[npt.ArrayLike, npt.ArrayLike],
        val: tuple[npt.ArrayLike, npt.ArrayLike],
        *,
        classes: npt.ArrayLike | None = None,
        local_epochs: int = 1,
    ) -> None:
        model = model_fn()
        _check_trainable(model)
        _check_classes(model, classes)
        integer("local_epochs", local_epochs, minimum=1, hint="local_epochs=1")
        self.model_fn = model_fn
        self.x_train, self.y_train = np.asarray(train[0]), np.asarray(train[1])
        self.x_val, self.y_val = np.asarray(val[0]), np.asarray(val[1])
        self.classes = classes
        self.local_epochs = local_epochs

    def get_arrays(self, config: Config) -> Arrays:
        return initial_arrays(self.model_fn(), self.x_train.shape[1], self.classes)

    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
        model = self._model(arrays)
        metrics = train(model, self.x_train, self.y_train, epochs=self.local_epochs)
        return get_arrays(model), len(self.y_train), metrics

    def evaluate(self, arrays: Arrays, config: Config) -> tuple[float, int, Metrics]:
        return evaluate(self._model(arrays), self.x_val, self.y_val)

    def _model(self, arrays: Arrays) -> BaseEstimator:
        model = self.model_fn()
        initial_arrays(model, self.x_train.shape[1], self.classes)
        set_arrays(model, arrays)
        return model


# --- internals ---------------------------------------------------------------------------------


def _kind(model: object) -> str:
    if isinstance(model, _MLP):
        return "mlp"
    if isinstance(model, _LINEAR):
        return "linear"
    raise TypeError(
        f"{type(model).__name__} is not a model pollinate.frameworks.sklearn federates.\n"
        "Hint: it federates linear models (LogisticRegression, SGDClassifier, SGDRegressor, "
        "Ridge, ...: coef_ and intercept_) and MLPClassifier/MLPRegressor. For a Pipeline, "
        "federate its last step and fix the preprocessing in advance; for trees, see "
        "pollinate.frameworks.xgboost; for another estimator, write a pollinate.Client whose "
        "fit returns what it learned as Arrays."
    )


def _check_ready(model: BaseEstimator) -> None:
    attr = "coefs_" if isinstance(model, _MLP) else "coef_"
    if getattr(model, attr, None) is None:
        raise ValueError(
            f"this {type(model).__name__} has no {attr}: it is neither fitted nor initialized."
            "\nHint: call initial_arrays(model, n_features, classes) first (or fit it)."
        )


def _check_classes(model: BaseEstimator, classes: npt.ArrayLike | None) -> np.ndarray | None:
    if not is_classifier(model):
        if classes is not None:
            raise ValueError(f"{type(model).__name__} is a regressor: it takes no classes.")
        return None
    labels = None if classes is None else np.unique(np.asarray(classes))
    if labels is None or labels.size < 2:
        raise ValueError(
            f"{type(model).__name__} is a classifier and needs classes=[...] with at least two "
            f"labels, got {classes!r}.\nHint: pass every label of the federation, e.g. "
            "classes=[0, 1]: one client may hold only some of them."
        )
    return labels


def _initialize_linear(model: BaseEstimator, n_features: int, labels: np.ndarray | None) -> None:
    if labels is None:
        model.coef_ = np.zeros(n_features)
        # The SGD family keeps the intercept as an array of one, the others as a float.
        model.intercept_ = np.zeros(1) if hasattr(model, "partial_fit") else 0.0
        return
    rows = 1 if labels.size == 2 else labels.size
    model.classes_ = labels
    model.coef_ = np.zeros((rows, n_features))
    model.intercept_ = np.zeros(rows)


def _initialize_mlp(model: BaseEstimator, n_features: int, labels: np.ndarray | None) -> None:
    outputs = 1
    if labels is not None:
        model._label_binarizer = LabelBinarizer().fit(labels)
        model.classes_ = model._label_binarizer.classes_
        outputs = 1 if labels.size == 2 else labels.size
    hidden = model.hidden_layer_sizes
    hidden = list(hidden) if hasattr(hidden, "__iter__") else [hidden]
    # sklearn has no public "initialize without data"; _initialize is what its own fit calls
    # on the first pass, so every attribute predict, partial_fit and warm_start read is set
    # as sklearn sets it (tests/frameworks/test_sklearn.py pins this on each upgrade).
    model._random_state = check_random_state(model.random_state)
    model._initialize(np.zeros((1, outputs)), [n_features, *hidden, outputs], np.float64)


def _uses_partial_fit(model: BaseEstimator) -> bool:
    if isinstance(model, _MLP):
        return bool(model.solver != "lbfgs")
    return hasattr(model, "partial_fit")


def _check_trainable(model: BaseEstimator) -> None:
    _kind(model)
    name = type(model).__name__
    if getattr(model, "average", False):
        raise TypeError(
            f"{name}(average={model.average!r}) keeps a second, averaged set of weights that "
            "set_arrays cannot restore.\nHint: use average=False."
        )
    if _uses_partial_fit(model):
        return
    if isinstance(model, LogisticRegression) and model.solver == "liblinear":
        raise TypeError(
            "LogisticRegression(solver='liblinear') cannot warm-start, so it would not continue "
            "from the global model.\nHint: use the default solver='lbfgs' (or 'newton-cg', "
            "'sag', 'saga')."
        )
    if not isinstance(model, _WARM):
        sgd, example = (
            ("SGDClassifier", "loss='hinge' is LinearSVC's model")
            if is_classifier(model)
            else ("SGDRegressor", "penalty='l2' is Ridge's model")
        )
        raise TypeError(
            f"{name} cannot continue training from weights it is given (it fits from scratch, "
            "or its warm start needs more than coef_), so local training would ignore the "
            f"global model.\nHint: use {sgd}, which continues from them; its loss and penalty "
            f"choose the model ({example})."
        )


def _warm_fit(model: BaseEstimator, x: np.ndarray, y: np.ndarray) -> None:
    missing = np.setdiff1d(model.classes_, y) if is_classifier(model) else np.array([])
    if len(missing) == 0:
        model.fit(x, y)
        return
    # sklearn takes classes_ from y; a row of weight zero per missing class keeps them all
    # (and the coefficient shapes) without changing the loss.
    x = np.concatenate([x, np.zeros((missing.size, x.shape[1]), dtype=x.dtype)])
    weight = np.concatenate([np.ones(len(y)), np.zeros(missing.size)])
    model.fit(x, np.concatenate([y, missing]), sample_weight=weight)
