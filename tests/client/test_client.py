"""The client API: ``handle`` runs one instruction on a user's client and always answers
with a reply, carrying the result or an error that says what went wrong and where."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pollinate.client import Client, Context, NumPyClient, handle, to_client
from pollinate.records import Arrays, Config, Message, Metrics

CONTEXT = Context(node_id=7, partition_id=2, num_partitions=10)
GLOBAL = Arrays({"fc.weight": np.ones((2, 3), np.float32), "fc.bias": np.zeros(2, np.float32)})


def instruction(kind: str, arrays: Arrays = GLOBAL, config: Config | None = None) -> Message:
    return Message(
        kind=kind,
        task_id="t-1",
        run_id="r-1",
        round=3,
        node_id=7,
        arrays=arrays if kind != "get_arrays" else Arrays(),
        config=config or {},
    )


def run(client: object, kind: str, **kwargs: Any) -> Message:
    return handle(lambda context: client, CONTEXT, instruction(kind, **kwargs))


def fitting(result: Any) -> Client:
    """A native client whose fit returns ``result`` as is."""

    class Returns(Client):
        def fit(self, arrays: Arrays, config: Config) -> Any:
            return result

    return Returns()


def evaluating(result: Any) -> Client:
    class Returns(Client):
        def evaluate(self, arrays: Arrays, config: Config) -> Any:
            return result

    return Returns()


# --- native Client ---------------------------------------------------------------------------


class Trainer(Client):
    """Adds the config's step to every weight; evaluates to the sum of the weights."""

    def get_arrays(self, config: Config) -> Arrays:
        return GLOBAL

    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
        step = float(config.get("step", 1.0))
        new = Arrays({name: a + np.float32(step) for name, a in arrays.items()})
        return new, 12, {"train_loss": 0.5}

    def evaluate(self, arrays: Arrays, config: Config) -> tuple[float, int, Metrics]:
        return float(sum(a.sum() for a in arrays.values())), 4, {"acc": 0.75}


def test_fit_reply_carries_arrays_examples_and_metrics() -> None:
    reply = run(Trainer(), "fit", config={"step": 2.0})
    assert reply.error is None
    assert reply.is_reply and reply.kind == "fit"
    assert (reply.task_id, reply.run_id, reply.round, reply.node_id) == ("t-1", "r-1", 3, 7)
    assert reply.arrays.names == GLOBAL.names
    np.testing.assert_array_equal(reply.arrays["fc.weight"], np.full((2, 3), 3.0))
    assert (reply.num_examples, reply.metrics) == (12, {"train_loss": 0.5})


def test_evaluate_reply_carries_loss_examples_and_metrics() -> None:
    reply = run(Trainer(), "evaluate")
    assert reply.error is None and reply.kind == "evaluate"
    assert (reply.loss, reply.num_examples, reply.metrics) == (6.0, 4, {"acc": 0.75})
    assert len(reply.arrays) == 0


def test_get_arrays_reply_carries_the_clients_model() -> None:
    reply = run(Trainer(), "get_arrays")
    assert reply.error is None and reply.arrays == GLOBAL


def test_client_fn_receives_the_context() -> None:
    seen = []

    def client_fn(context: Context) -> Client:
        seen.append(context)
        return Trainer()

    handle(client_fn, CONTEXT, instruction("fit"))
    assert seen == [CONTEXT]


def test_a_native_fit_may_return_a_list_which_gets_the_global_names() -> None:
    reply = run(fitting(([np.ones((2, 3), np.float32), np.ones(2, np.float32)], 1, {})), "fit")
    assert reply.error is None and reply.arrays.names == ["fc.weight", "fc.bias"]


def test_a_native_fit_may_return_a_dict() -> None:
    arrays = {name: a + 1 for name, a in GLOBAL.items()}
    reply = run(fitting((arrays, 1, {})), "fit")
    assert reply.error is None and reply.arrays.names == GLOBAL.names


def test_float64_results_of_a_float32_model_are_cast_back_to_float32() -> None:
    # numpy math with float64 scalars or arrays often upcasts; the hub expects the model's dtype
    upcast = Arrays({name: a.astype(np.float64) + 0.5 for name, a in GLOBAL.items()})
    reply = run(fitting((upcast, 3, {})), "fit")
    assert reply.error is None
    assert all(a.dtype == np.float32 for a in reply.arrays.values())
    np.testing.assert_array_equal(reply.arrays["fc.weight"], np.full((2, 3), 1.5, np.float32))


def test_non_float_dtype_changes_are_left_for_the_hub_to_reject() -> None:
    ints = Arrays({name: np.zeros(a.shape, np.int64) for name, a in GLOBAL.items()})
    reply = run(fitting((ints, 3, {})), "fit")
    assert all(a.dtype == np.int64 for a in reply.arrays.values())


def test_numpy_scalars_in_results_become_python_values() -> None:
    reply = run(fitting((GLOBAL, np.int64(5), {"acc": np.float32(0.5)})), "fit")
    assert reply.num_examples == 5 and type(reply.num_examples) is int
    assert reply.metrics == {"acc": 0.5} and type(reply.metrics["acc"]) is float


def test_metrics_may_be_none() -> None:
    reply = run(fitting((GLOBAL, 1, None)), "fit")
    assert reply.error is None and reply.metrics == {}


def test_an_integer_loss_is_reported_as_a_float() -> None:
    reply = run(evaluating((3, 1, {})), "evaluate")
    assert reply.loss == 3.0 and type(reply.loss) is float


# --- Flower-shaped clients -------------------------------------------------------------------


class FlowerShaped:
    """A plain class with Flower's NumPyClient methods over lists; inherits from nothing."""

    def get_parameters(self, config: Config) -> list[np.ndarray]:
        return [np.ones((2, 3), np.float32), np.zeros(2, np.float32)]

    def fit(
        self, parameters: list[np.ndarray], config: Config
    ) -> tuple[list[np.ndarray], int, dict]:
        return [p * 2 for p in parameters], 5, {"seen": len(parameters)}

    def evaluate(self, parameters: list[np.ndarray], config: Config) -> tuple[float, int, dict]:
        return 0.25, 5, {"acc": 0.9}


class FlowerSubclass(NumPyClient):
    def get_parameters(self, config: Config) -> list[np.ndarray]:
        return FlowerShaped().get_parameters(config)

    def fit(
        self, parameters: list[np.ndarray], config: Config
    ) -> tuple[list[np.ndarray], int, Metrics]:
        return [p * 2 for p in parameters], 5, {"seen": len(parameters)}

    def evaluate(self, parameters: list[np.ndarray], config: Config) -> tuple[float, int, Metrics]:
        return 0.25, 5, {"acc": 0.9}


FLOWER_CLIENTS = {
    "plain-class": FlowerShaped,
    "NumPyClient": FlowerSubclass,
    "to_client": lambda: FlowerSubclass().to_client(),
}
every_flower_client = pytest.mark.parametrize(
    "make", FLOWER_CLIENTS.values(), ids=FLOWER_CLIENTS.keys()
)


@every_flower_client
def test_a_flower_shaped_fit_returns_a_list_that_gets_the_global_names(make: Any) -> None:
    reply = run(make(), "fit")
    assert reply.error is None
    assert reply.arrays.names == GLOBAL.names
    np.testing.assert_array_equal(reply.arrays["fc.weight"], np.full((2, 3), 2.0))
    assert (reply.num_examples, reply.metrics) == (5, {"seen": 2})


@every_flower_client
def test_a_flower_shaped_client_evaluates(make: Any) -> None:
    reply = run(make(), "evaluate")
    assert (reply.error, reply.loss, reply.num_examples, reply.metrics) == (
        None,
        0.25,
        5,
        {"acc": 0.9},
    )


@every_flower_client
def test_a_flower_shaped_client_gives_its_parameters_as_positional_arrays(make: Any) -> None:
    reply = run(make(), "get_arrays")
    assert reply.error is None and reply.arrays.names == ["0", "1"]


def test_to_client_returns_a_native_client_unchanged_and_wraps_the_others() -> None:
    native = Trainer()
    assert to_client(native) is native
    assert isinstance(to_client(FlowerShaped()), Client)
    assert isinstance(FlowerSubclass().to_client(), Client)


def test_a_flower_shaped_fit_must_return_one_array_per_parameter() -> None:
    class DropsOne(FlowerShaped):
        def fit(self, parameters: list[np.ndarray], config: Config) -> Any:
            return parameters[:1], 5, {}

    reply = run(DropsOne(), "fit")
    assert reply.error is not None
    assert "fit returned 1 arrays but received 2" in reply.error


def test_a_numpy_client_that_does_not_implement_fit_says_so() -> None:
    reply = run(NumPyClient(), "fit")
    assert reply.error is not None and "does not implement fit(parameters, config)" in reply.error


# --- errors become replies -------------------------------------------------------------------


class Crashes(Client):
    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
        raise ZeroDivisionError("the batch was empty")


def test_a_client_that_raises_gives_a_reply_naming_type_message_and_place() -> None:
    reply = run(Crashes(), "fit")
    assert reply.error is not None and reply.is_reply
    assert reply.error.startswith("ZeroDivisionError: the batch was empty (at ")
    where = re.search(r"\(at (.+):(\d+)\)$", reply.error)
    assert where is not None
    path, line = Path(where[1]), int(where[2])
    assert path.resolve() == Path(__file__).resolve()
    assert (
        'raise ZeroDivisionError("the batch was empty")' in path.read_text().splitlines()[line - 1]
    )


def test_a_failed_reply_keeps_the_task_and_carries_no_result() -> None:
    reply = run(Crashes(), "fit")
    assert (reply.kind, reply.task_id, reply.round, reply.node_id) == ("fit", "t-1", 3, 7)
    assert len(reply.arrays) == 0 and reply.num_examples == 0


def test_an_exception_whose_str_fails_still_gives_an_error_reply() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("cannot describe myself")

    class RaisesUnprintable(Client):
        def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
            raise Unprintable()

    reply = run(RaisesUnprintable(), "fit")
    assert reply.error is not None and reply.error.startswith("Unprintable: ")


def test_a_client_fn_that_raises_gives_an_error_reply() -> None:
    def client_fn(context: Context) -> Client:
        raise RuntimeError(f"no data for partition {context.partition_id}")

    reply = handle(client_fn, CONTEXT, instruction("evaluate"))
    assert reply.error is not None
    assert reply.error.startswith("RuntimeError: no data for partition 2")


@pytest.mark.parametrize("returned", [None, 42, "client", object(), [Trainer()]])
def test_a_client_fn_returning_a_non_client_gives_an_error_with_a_hint(returned: object) -> None:
    reply = run(returned, "fit")
    assert reply.error is not None
    assert f"client_fn returned {type(returned).__name__}, which is not a client" in reply.error
    assert "Hint:" in reply.error


def test_a_client_without_get_arrays_points_at_initial_arrays() -> None:
    reply = run(Client(), "get_arrays")
    assert reply.error is not None
    assert "does not implement get_arrays" in reply.error
    assert "Hint:" in reply.error and "initial_arrays" in reply.error


@pytest.mark.parametrize("kind", ["fit", "evaluate"])
def test_a_client_that_does_not_implement_a_method_says_which(kind: str) -> None:
    reply = run(Client(), kind)
    assert reply.error is not None and f"does not implement {kind}(arrays, config)" in reply.error


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (None, "fit returned NoneType; expected a tuple of 3 (arrays, num_examples, metrics)"),
        ((GLOBAL, 1), "fit returned tuple; expected a tuple of 3"),
        ((GLOBAL, 1, {}, "extra"), "fit returned tuple; expected a tuple of 3"),
        (GLOBAL, "fit returned Arrays; expected a tuple of 3"),
        ((GLOBAL, -1, {}), "fit returned num_examples=-1; expected an int >= 0"),
        ((GLOBAL, True, {}), "fit returned num_examples=True; expected an int >= 0"),
        ((GLOBAL, 2.5, {}), "fit returned num_examples=2.5; expected an int >= 0"),
        ((GLOBAL, "10", {}), "fit returned num_examples='10'; expected an int >= 0"),
        ((GLOBAL, 1, {"acc": [0.5]}), "fit metrics entry 'acc': [0.5] is not allowed"),
        ((GLOBAL, 1, {"acc": np.ones(2)}), "fit metrics entry 'acc'"),
        ((GLOBAL, 1, {1: 0.5}), "fit metrics entry 1: 0.5 is not allowed"),
        ((GLOBAL, 1, [("acc", 0.5)]), "fit metrics must be a dict of str -> scalar, got list"),
        ((GLOBAL, 1, np.ones(2)), "fit metrics must be a dict of str -> scalar, got ndarray"),
        ((None, 1, {}), "fit returned NoneType; expected a list of arrays"),
        ((3.0, 1, {}), "fit returned float; expected a list of arrays"),
        (("weights", 1, {}), "fit returned str; expected a list of arrays"),
    ],
)
def test_a_fit_result_of_the_wrong_shape_gives_a_clear_error(result: Any, expected: str) -> None:
    reply = run(fitting(result), "fit")
    assert reply.error is not None
    assert expected in reply.error, reply.error


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ((0.5, 1), "evaluate returned tuple; expected a tuple of 3 (loss, num_examples, metrics)"),
        (0.5, "evaluate returned float; expected a tuple of 3"),
        (("low", 1, {}), "evaluate returned loss 'low'; expected a float"),
        ((None, 1, {}), "evaluate returned loss None; expected a float"),
        ((np.array([0.5]), 1, {}), "evaluate returned loss array([0.5]); expected a float"),
        ((0.5, -3, {}), "evaluate returned num_examples=-3; expected an int >= 0"),
        ((0.5, False, {}), "evaluate returned num_examples=False"),
        ((0.5, 1, {"acc": {"top1": 0.5}}), "evaluate metrics entry 'acc'"),
    ],
)
def test_an_evaluate_result_of_the_wrong_shape_gives_a_clear_error(
    result: Any, expected: str
) -> None:
    reply = run(evaluating(result), "evaluate")
    assert reply.error is not None
    assert expected in reply.error, reply.error


junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=5)
    | st.just(GLOBAL)
    | st.just(np.ones(3)),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner, inner)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(result=junk, kind=st.sampled_from(["fit", "evaluate", "get_arrays"]))
def test_handle_never_raises_whatever_the_client_returns(result: Any, kind: str) -> None:
    class Anything(Client):
        def get_arrays(self, config: Config) -> Any:
            return result

        def fit(self, arrays: Arrays, config: Config) -> Any:
            return result

        def evaluate(self, arrays: Arrays, config: Config) -> Any:
            return result

    reply = run(Anything(), kind)
    assert isinstance(reply, Message) and reply.is_reply and reply.kind == kind
    assert reply.error is None or reply.error.strip()


# --- Context ---------------------------------------------------------------------------------


def test_context_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CONTEXT.node_id = 8  # type: ignore[misc]


def test_context_configs_default_to_empty_dicts_not_shared_between_contexts() -> None:
    a, b = Context(1, 0, 2), Context(2, 1, 2)
    assert a.node_config == {} and a.run_config == {}
    assert a.node_config is not b.node_config and a.run_config is not b.run_config
