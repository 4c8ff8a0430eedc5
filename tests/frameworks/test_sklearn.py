"""The scikit-learn adapter: weights round-trip exactly, an unfitted estimator can start from
initial arrays, and local training continues from the weights it is given."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

import numpy as np
import pytest
from sklearn.base import is_classifier
from sklearn.datasets import load_breast_cancer, load_digits, make_regression
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import (
    HuberRegressor,
    LinearRegression,
    LogisticRegression,
    Ridge,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from pollinate import Arrays, FedAvg, ServerApp, run_simulation
from pollinate.datasets import dirichlet
from pollinate.frameworks.sklearn import (
    SklearnClient,
    evaluate,
    get_arrays,
    initial_arrays,
    set_arrays,
    train,
)
from pollinate.strategy import Sampling

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread() -> Iterator[None]:
    # On a busy 2-core machine OpenBLAS threads fighting over cores make a 0.2 s fit take 10 s.
    with threadpool_limits(1, user_api="blas"):
        yield


@lru_cache(maxsize=1)
def cancer() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(x), y


@lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return x / 16.0, y


@lru_cache(maxsize=1)
def regression() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_regression(200, 5, noise=1.0, random_state=0)
    return x, y / 100.0


CASES: dict[str, tuple[Callable[[], Any], Callable[[], tuple[np.ndarray, np.ndarray]]]] = {
    "logistic-binary": (LogisticRegression, cancer),
    "logistic-multiclass": (LogisticRegression, digits),
    "sgd-classifier": (lambda: SGDClassifier(loss="log_loss", random_state=0), digits),
    "sgd-regressor": (lambda: SGDRegressor(random_state=0), regression),
    "mlp-classifier": (lambda: MLPClassifier((8,), max_iter=20, random_state=0), digits),
    "mlp-regressor": (
        lambda: MLPRegressor(hidden_layer_sizes=(8,), max_iter=20, random_state=0),
        regression,
    ),
    "linear-regression": (LinearRegression, regression),
}


def fresh_like(make: Callable[[], Any], fitted: Any, x: np.ndarray) -> Any:
    model = make()
    initial_arrays(model, x.shape[1], getattr(fitted, "classes_", None))
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_gives_a_fresh_model_the_same_weights_and_predictions(case: str) -> None:
    make, data = CASES[case]
    x, y = data()
    fitted = make().fit(x, y)
    arrays = get_arrays(fitted)
    model = fresh_like(make, fitted, x)
    set_arrays(model, arrays)
    assert get_arrays(model) == arrays
    np.testing.assert_array_equal(model.predict(x), fitted.predict(x))


def test_names_follow_sklearn_attributes() -> None:
    x, y = digits()
    mlp = MLPClassifier((8, 4), max_iter=5, random_state=0).fit(x, y)
    assert get_arrays(mlp).names == [
        *("coefs_0", "intercepts_0", "coefs_1", "intercepts_1", "coefs_2", "intercepts_2")
    ]
    assert get_arrays(LogisticRegression().fit(*cancer())).names == ["coef_", "intercept_"]


def test_get_arrays_copies_so_training_on_does_not_change_them() -> None:
    x, y = cancer()
    model = SGDClassifier(random_state=0)
    arrays = initial_arrays(model, x.shape[1], [0, 1])
    train(model, x, y, epochs=1)
    assert not arrays["coef_"].any()


def test_a_float_intercept_travels_as_an_array_and_comes_back_a_float() -> None:
    x, y = regression()
    model = Ridge().fit(x, y)
    arrays = get_arrays(model)
    assert arrays["intercept_"].shape == (1,)
    set_arrays(model, arrays)
    assert isinstance(model.intercept_, float)


@pytest.mark.parametrize(
    ("make", "classes", "shapes"),
    [
        (LogisticRegression, [0, 1], {"coef_": (1, 4), "intercept_": (1,)}),
        (SGDClassifier, ["a", "b", "c"], {"coef_": (3, 4), "intercept_": (3,)}),
        (SGDRegressor, None, {"coef_": (4,), "intercept_": (1,)}),
        (Ridge, None, {"coef_": (4,), "intercept_": (1,)}),
    ],
)
def test_initial_arrays_start_a_linear_model_at_zero(
    make: Callable[[], Any], classes: list[Any] | None, shapes: dict[str, tuple[int, ...]]
) -> None:
    model = make()
    arrays = initial_arrays(model, 4, classes)
    assert {name: a.shape for name, a in arrays.items()} == shapes
    assert not any(a.any() for a in arrays.values())
    assert model.predict(np.ones((2, 4))).shape == (2,)


def test_initial_arrays_of_an_mlp_are_sklearns_seeded_initialization() -> None:
    first, second = MLPClassifier((5,), random_state=3), MLPClassifier((5,), random_state=3)
    arrays = initial_arrays(first, 4, [0, 1, 2])
    assert arrays == initial_arrays(second, 4, [0, 1, 2])
    assert {name: a.shape for name, a in arrays.items()} == {
        "coefs_0": (4, 5),
        "intercepts_0": (5,),
        "coefs_1": (5, 3),
        "intercepts_1": (3,),
    }
    assert first.predict_proba(np.ones((2, 4))).shape == (2, 3)
    assert initial_arrays(MLPClassifier((5,), random_state=4), 4, [0, 1, 2]) != arrays


# --- training continues from the weights it is given -------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: SGDClassifier(learning_rate="constant", eta0=0.01, shuffle=False),
        lambda: MLPClassifier(
            (8,),
            solver="sgd",
            momentum=0.0,
            learning_rate_init=0.05,
            shuffle=False,
            random_state=0,
        ),
    ],
    ids=["sgd", "mlp-sgd"],
)
def test_two_rounds_of_one_epoch_equal_two_epochs_in_one_go(make: Callable[[], Any]) -> None:
    # With a constant step and no momentum, training carries no state beyond the weights:
    # continuing from a round trip must be exactly the same as training on.
    x, y = cancer()
    whole = make()
    start = initial_arrays(whole, x.shape[1], [0, 1])
    train(whole, x, y, epochs=2)

    first = make()
    initial_arrays(first, x.shape[1], [0, 1])
    set_arrays(first, start)
    train(first, x, y, epochs=1)
    second = make()
    initial_arrays(second, x.shape[1], [0, 1])
    set_arrays(second, get_arrays(first))
    train(second, x, y, epochs=1)

    for name, a in get_arrays(whole).items():
        np.testing.assert_allclose(get_arrays(second)[name], a, rtol=1e-12, atol=1e-12)
    assert get_arrays(second) != get_arrays(first)


@pytest.mark.parametrize(
    "make",
    [LogisticRegression, lambda: MLPClassifier((8,), solver="lbfgs", random_state=0)],
    ids=["logistic", "mlp-lbfgs"],
)
def test_a_warm_started_fit_starts_from_the_given_weights(make: Callable[[], Any]) -> None:
    x, y = cancer()
    good = make().set_params(max_iter=500).fit(x, y)
    model = make()
    initial_arrays(model, x.shape[1], [0, 1])
    set_arrays(model, get_arrays(good))
    before = evaluate(model, x, y)[0]
    after = train(model, x, y, epochs=1)["train_loss"]

    cold = make()
    initial_arrays(cold, x.shape[1], [0, 1])
    from_scratch = train(cold, x, y, epochs=1)["train_loss"]
    # One solver iteration from the optimum stays there; from the start it gets nowhere near.
    assert after <= before + 1e-9
    assert from_scratch > 3 * after


def test_sgd_regressor_continues_from_the_given_weights() -> None:
    x, y = regression()
    good = SGDRegressor(random_state=0, max_iter=200).fit(x, y)
    model = SGDRegressor(random_state=0)
    initial_arrays(model, x.shape[1])
    set_arrays(model, get_arrays(good))
    after = train(model, x, y, epochs=1)["train_loss"]
    cold = SGDRegressor(random_state=0)
    initial_arrays(cold, x.shape[1])
    assert after < train(cold, x, y, epochs=1)["train_loss"] / 10


@pytest.mark.parametrize(
    "make",
    [LogisticRegression, SGDClassifier, lambda: MLPClassifier((4,), solver="lbfgs")],
    ids=["logistic", "sgd", "mlp-lbfgs"],
)
def test_a_client_holding_only_some_classes_trains_and_keeps_all_of_them(
    make: Callable[[], Any],
) -> None:
    x, y = digits()
    model = make()
    arrays = initial_arrays(model, x.shape[1], range(10))
    only = y < 2
    train(model, x[only], y[only], epochs=3)
    assert model.classes_.tolist() == list(range(10))
    trained = get_arrays(model)
    assert {n: a.shape for n, a in trained.items()} == {n: a.shape for n, a in arrays.items()}
    assert trained != arrays
    assert set(model.predict(x[only]).tolist()) <= {0, 1}


def test_float32_data_trains_float64_weights() -> None:
    x, y = cancer()
    model = SGDClassifier(random_state=0)
    initial_arrays(model, x.shape[1], [0, 1])
    assert train(model, x.astype(np.float32), y)["train_accuracy"] > 0.9
    assert get_arrays(model)["coef_"].dtype == np.float64


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [RandomForestClassifier(), make_pipeline(StandardScaler(), LogisticRegression()), object()],
    ids=["forest", "pipeline", "object"],
)
def test_an_unsupported_estimator_is_a_type_error_that_says_what_works(model: object) -> None:
    with pytest.raises(TypeError, match=r"(?s)is not a model.*Hint: .*LogisticRegression"):
        get_arrays(model)
    with pytest.raises(TypeError, match="Hint:"):
        initial_arrays(model, 3, [0, 1])


def test_an_unfitted_model_has_no_arrays_yet() -> None:
    with pytest.raises(ValueError, match=r"(?s)neither fitted nor initialized.*initial_arrays"):
        get_arrays(LogisticRegression())
    with pytest.raises(ValueError, match="neither fitted nor initialized"):
        set_arrays(MLPClassifier(), Arrays())


def test_set_arrays_names_what_does_not_fit_and_leaves_the_model_alone() -> None:
    model = LogisticRegression()
    before = initial_arrays(model, 3, [0, 1])
    wrong = Arrays({"coef_": np.ones((1, 4)), "bias": np.ones(1)})
    with pytest.raises(
        ValueError,
        match=r"(?s)missing 'intercept_'; unexpected 'bias'; mis-shaped 'coef_' \[1, 4\] "
        r"\(model \[1, 3\]\).*Hint:",
    ):
        set_arrays(model, wrong)
    assert get_arrays(model) == before


@pytest.mark.parametrize(
    ("model", "classes", "message"),
    [
        (LogisticRegression(), None, r"(?s)needs classes=\[...\].*Hint: pass every label"),
        (LogisticRegression(), [1], "at least two labels"),
        (SGDRegressor(), [0, 1], "is a regressor: it takes no classes"),
    ],
)
def test_initial_arrays_checks_classes(model: Any, classes: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        initial_arrays(model, 3, classes)


@pytest.mark.parametrize("n_features", [0, 2.0, True])
def test_initial_arrays_checks_n_features(n_features: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="n_features must be"):
        initial_arrays(LogisticRegression(), n_features, [0, 1])


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (LinearRegression(), r"(?s)cannot continue training.*Hint: .*SGDRegressor"),
        (Ridge(), r"Hint: use SGDRegressor, .*penalty='l2' is Ridge's model"),
        (HuberRegressor(), "cannot continue training"),
        (LogisticRegression(solver="liblinear"), r"(?s)cannot warm-start.*solver='lbfgs'"),
        (SGDClassifier(average=True), "Hint: use average=False"),
    ],
)
def test_train_refuses_a_model_that_would_ignore_the_global_weights(
    model: Any, message: str
) -> None:
    x, y = regression()
    initial_arrays(model, x.shape[1], [0, 1] if is_classifier(model) else None)
    with pytest.raises(TypeError, match=message):
        train(model, x, y)
    with pytest.raises(TypeError, match=message):
        SklearnClient(lambda: model, (x, y), (x, y))


def test_the_client_checks_its_settings() -> None:
    x, y = cancer()
    with pytest.raises(ValueError, match="needs classes"):
        SklearnClient(LogisticRegression, (x, y), (x, y))
    with pytest.raises(ValueError, match="local_epochs must be an int >= 1"):
        SklearnClient(LogisticRegression, (x, y), (x, y), classes=[0, 1], local_epochs=0)
    with pytest.raises(ValueError, match="no examples"):
        evaluate(LogisticRegression().fit(x, y), x[:0], y[:0])


# --- federated ----------------------------------------------------------------------------------


def test_the_client_fits_and_evaluates_in_the_shape_the_hub_expects() -> None:
    x, y = cancer()
    client = SklearnClient(
        LogisticRegression, (x[:400], y[:400]), (x[400:], y[400:]), classes=[0, 1]
    )
    start = client.get_arrays({})
    arrays, examples, metrics = client.fit(start, {})
    assert examples == 400 and set(metrics) == {"train_loss", "train_accuracy"}
    assert arrays.names == start.names and arrays != start
    loss, examples, metrics = client.evaluate(arrays, {})
    assert examples == len(y) - 400 and metrics["accuracy"] > 0.9 and loss < 0.3


@pytest.mark.parametrize(
    ("make", "initial"),
    [
        (LogisticRegression, True),
        (lambda: MLPClassifier((8,), learning_rate_init=0.01, random_state=0), False),
    ],
    ids=["logistic", "mlp-adam-initial-from-a-client"],
)
def test_fedavg_across_skewed_clients_learns_breast_cancer(
    make: Callable[[], Any], initial: bool
) -> None:
    x, y = cancer()
    test, rest = np.arange(0, len(y), 4), np.setdiff1d(np.arange(len(y)), np.arange(0, len(y), 4))
    parts = dirichlet(y[rest], 3, alpha=0.5, seed=0)

    def client_fn(context: Any) -> SklearnClient:
        idx = rest[parts[context.partition_id]]
        return SklearnClient(
            make, (x[idx], y[idx]), (x[idx], y[idx]), classes=[0, 1], local_epochs=3
        )

    def central(round: int, arrays: Arrays) -> tuple[float, dict[str, Any]]:
        model = make()
        initial_arrays(model, x.shape[1], [0, 1])
        set_arrays(model, arrays)
        loss, _, metrics = evaluate(model, x[test], y[test])
        return loss, metrics

    start = initial_arrays(make(), x.shape[1], [0, 1]) if initial else None
    app = ServerApp(
        FedAvg(evaluate_fn=central, sampling=Sampling(fraction_evaluate=0)),
        num_rounds=3,
        initial_arrays=start,
    )
    result = run_simulation(app, client_fn, num_clients=3)
    rounds = result.history.rounds
    assert all(r.failures == 0 for r in rounds[1:])
    assert rounds[-1].centralized["accuracy"] >= 0.9
    assert rounds[-1].centralized["loss"] < rounds[0].centralized["loss"]
