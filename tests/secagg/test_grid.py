"""Secure aggregation run over a Grid: the hub gets the weighted mean and nothing else."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from pollinate import Arrays, Client, FedAvg, FedMedian, ServerApp, run_simulation
from pollinate.loop.grid import Grid
from pollinate.loop.run import run
from pollinate.records import Message
from pollinate.secagg import SecAggConfig
from pollinate.secagg.identity import KeyRing
from pollinate.secagg.node import SecAggNode
from pollinate.simulation import SimulationGrid
from pollinate.strategy import Sampling

INITIAL = Arrays({"w": np.zeros(6, np.float32), "steps": np.zeros(2, np.int64)})


class Drift(Client):
    """Moves every weight by a client-specific step, with its id + 1 examples."""

    def __init__(self, node: int, fails: frozenset[int] = frozenset()) -> None:
        self.node, self.fails = node, fails

    def fit(self, arrays: Arrays, config: dict) -> tuple[Arrays, int, dict]:
        if self.node in self.fails:
            raise RuntimeError("this client drops out after sharing its keys")
        step = 0.01 * (self.node + 1) * np.arange(1, 7, dtype=np.float32)
        return Arrays({"w": arrays["w"] + step, "steps": arrays["steps"] + 1}), self.node + 1, {}

    def evaluate(self, arrays: Arrays, config: dict) -> tuple[float, int, dict]:
        return 0.0, 1, {}


def app(secure: SecAggConfig | None, rounds: int = 2) -> ServerApp:
    strategy = FedAvg(failure_tolerance=0.5, sampling=Sampling(fraction_evaluate=0.0))
    return ServerApp(strategy, num_rounds=rounds, initial_arrays=INITIAL, secure_aggregation=secure)


def expected_mean(clients: Sequence[int]) -> np.ndarray:
    weights = np.array([c + 1 for c in clients], np.float64)
    steps = np.array([0.01 * (c + 1) for c in clients])
    return float(weights @ steps / weights.sum()) * np.arange(1, 7)


class Recording(Grid):
    """A hub's view of the round: every instruction and reply that crosses the grid, and
    an optional tamper(instruction) -> instruction."""

    def __init__(self, inner: Grid, tamper=None, tamper_reply=None) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.tamper, self.tamper_reply = inner, tamper, tamper_reply
        self.replies: list[Message] = []

    def nodes(self) -> list[int]:
        return self.inner.nodes()

    def dispatch(self, instructions: Sequence[Message], timeout: float | None) -> Iterator[Message]:
        if self.tamper is not None:
            instructions = [self.tamper(m) for m in instructions]
        for reply in self.inner.dispatch(instructions, timeout):
            if self.tamper_reply is not None:
                reply = self.tamper_reply(reply)
            self.replies.append(reply)
            yield reply


def simulate(  # type: ignore[no-untyped-def]
    secure: SecAggConfig | None,
    clients: int = 10,
    fails=frozenset(),
    tamper=None,
    tamper_reply=None,
):
    inner = SimulationGrid(lambda ctx: Drift(ctx.node_id, fails), clients)
    grid = Recording(inner, tamper, tamper_reply)
    try:
        return run(grid, app(secure), seed=1), grid
    finally:
        grid.inner.close()


# --- the sum is right ------------------------------------------------------------------------


def rounding_bound(config: SecAggConfig, clients: Sequence[int]) -> float:
    """The most quantization can move one value of a round's mean: each of n clients rounds
    its weighted change by at most c / L, and the sum is divided by the summed weights."""
    levels = (2**config.modulus_bits - 1) // len(clients)
    weights = sum(c + 1 for c in clients) / float(config.max_weight or 1)
    return len(clients) * config.clipping_range / levels / weights


@pytest.mark.parametrize("bits", [32, 48])
def test_the_secure_round_gives_the_weighted_mean_of_a_plain_round(bits: int) -> None:
    config = SecAggConfig(modulus_bits=bits)
    plain = run_simulation(app(None), lambda ctx: Drift(ctx.node_id), num_clients=10)
    secure, _ = simulate(config)
    assert [r.replies for r in secure.history.rounds[1:]] == [10, 10]
    bound = 2 * rounding_bound(config, range(10)) + 1e-7  # two rounds, then float32
    np.testing.assert_allclose(secure.arrays["w"], plain.arrays["w"], atol=bound)
    np.testing.assert_allclose(secure.arrays["w"], 2 * expected_mean(range(10)), atol=bound)
    assert secure.arrays["steps"].tolist() == [2, 2]  # integer buffers round back exactly
    assert secure.arrays["w"].dtype == np.float32


class DriftInPlace(Drift):
    """Drift, training the arrays it was given in place (``Client.fit`` allows it)."""

    def fit(self, arrays: Arrays, config: dict) -> tuple[Arrays, int, dict]:
        trained, n, metrics = super().fit(arrays, config)
        for name, array in trained.items():
            arrays[name][...] = array
        return arrays, n, metrics


def test_a_client_that_trains_in_place_sends_its_change_not_zero() -> None:
    config = SecAggConfig()
    secure = run_simulation(app(config), lambda ctx: DriftInPlace(ctx.node_id), num_clients=10)
    bound = 2 * rounding_bound(config, range(10)) + 1e-7
    np.testing.assert_allclose(secure.arrays["w"], 2 * expected_mean(range(10)), atol=bound)
    assert secure.arrays["steps"].tolist() == [2, 2]


@pytest.mark.parametrize("dropped", [frozenset({3}), frozenset({0, 4, 7})])  # 10% and 30%
def test_clients_that_drop_out_after_sharing_keys_leave_the_mean_of_the_others(
    dropped: frozenset[int],
) -> None:
    result, _ = simulate(SecAggConfig(), fails=dropped)
    survivors = [c for c in range(10) if c not in dropped]
    record = result.history.rounds[1]
    assert record.applied and record.replies == len(survivors)
    assert sorted(f.node_id for f in record.failed) == sorted(dropped)
    bound = 2 * rounding_bound(SecAggConfig(), survivors) + 1e-7
    np.testing.assert_allclose(result.arrays["w"], 2 * expected_mean(survivors), atol=bound)


def test_more_dropouts_than_configured_abort_the_round_and_keep_the_model() -> None:
    result, _ = simulate(SecAggConfig(max_dropout_fraction=0.1), fails=frozenset({1, 2, 5}))
    record = result.history.rounds[1]
    assert not record.applied
    assert record.aborted is not None and "fewer than" in record.aborted
    np.testing.assert_array_equal(result.arrays["w"], INITIAL["w"])


def test_a_round_of_two_clients_aborts_at_once_with_the_fix() -> None:
    result, grid = simulate(SecAggConfig(), clients=2)
    record = result.history.rounds[1]
    assert not record.applied and "at least 3 clients" in str(record.aborted)
    assert "Hint: Sampling(min_fit_clients=3)" in str(record.aborted)
    assert grid.replies == []  # nothing was asked of the clients


def truncate_masked_of_node_4(reply: Message) -> Message:
    if reply.node_id != 4 or "secagg/masked" not in reply.arrays:
        return reply
    return replace(reply, arrays=Arrays({"secagg/masked": reply.arrays["secagg/masked"][:3]}))


def test_a_node_that_sends_a_malformed_masked_vector_fails_alone() -> None:
    result, _ = simulate(SecAggConfig(), tamper_reply=truncate_masked_of_node_4)
    record = result.history.rounds[1]
    assert record.applied and record.aborted is None and record.replies == 9
    assert [f.node_id for f in record.failed] == [4]
    assert "masked vector" in record.failed[0].reason
    survivors = [c for c in range(10) if c != 4]
    bound = 2 * rounding_bound(SecAggConfig(), survivors) + 1e-7
    np.testing.assert_allclose(result.arrays["w"], 2 * expected_mean(survivors), atol=bound)


# --- what the hub sees ---------------------------------------------------------------------------


def test_the_hub_sees_masked_vectors_only_and_they_look_uniform() -> None:
    _, grid = simulate(SecAggConfig(), clients=6)
    kinds = {m.kind for m in grid.replies}
    assert kinds == {"secagg"}  # not one plain fit reply crossed the grid
    masked = [m.arrays["secagg/masked"] for m in grid.replies if "secagg/masked" in m.arrays]
    assert len(masked) == 12 and all(m.dtype == np.uint32 for m in masked)
    # no reply carries the client's update, or the model's arrays
    assert all("w" not in m.arrays and "steps" not in m.arrays for m in grid.replies)
    # the values of a masked update spread evenly over the 32-bit field: 16 bins, chi-square
    values = np.concatenate(masked).astype(np.float64)
    counts, _ = np.histogram(values, bins=16, range=(0, 2**32))
    # fresh random masks: a bound of 1e-6 fails an honest run once in a million
    assert stats.chisquare(counts).pvalue > 1e-6
    plain = np.histogram(np.full(len(values), 2.0**31), bins=16, range=(0, 2**32))[0]
    assert stats.chisquare(plain).pvalue < 1e-12  # the test can tell


# --- a hub that substitutes keys ---------------------------------------------------------------


def swap_keys_in_round_one(message: Message) -> Message:
    """A hub that puts its own key in place of node 2's in what it relays to the others."""
    name = "secagg/advert/2"
    if (
        message.round != 1
        or message.config.get("secagg.stage") != "share"
        or name not in message.arrays
    ):
        return message
    advert = message.arrays[name].copy()
    advert[10:42] = np.frombuffer(bytes(range(32)), np.uint8)  # its cipher key
    return replace(message, arrays=Arrays({**message.arrays, name: advert}))


def test_a_hub_that_swaps_a_public_key_is_caught_and_the_round_aborts() -> None:
    result, _ = simulate(SecAggConfig(), tamper=swap_keys_in_round_one)
    first, second = result.history.rounds[1:]
    assert not first.applied
    assert first.aborted is not None
    assert "KeySubstituted" in first.aborted and "client 2" in first.aborted
    # the run goes on: the next round, relayed honestly, is applied
    assert second.applied and second.aborted is None
    bound = rounding_bound(SecAggConfig(), range(10)) + 1e-7
    np.testing.assert_allclose(result.arrays["w"], expected_mean(range(10)), atol=bound)


def swap_credential(message: Message) -> Message:
    """A hub that relays node 2's keys with node 5's credential (both honestly signed)."""
    if message.config.get("secagg.stage") != "share" or "secagg/advert/2" not in message.arrays:
        return message
    if "secagg/advert/5" not in message.arrays:
        return message
    two, five = message.arrays["secagg/advert/2"], message.arrays["secagg/advert/5"]
    signature = 10 + 64 + int.from_bytes(two[8:10].tobytes(), "big")
    credential_of_five = five[10 + 64 + int.from_bytes(five[8:10].tobytes(), "big") :]
    forged = np.concatenate([two[:signature], credential_of_five])
    return replace(message, arrays=Arrays({**message.arrays, "secagg/advert/2": forged}))


def test_a_credential_that_is_not_the_nodes_own_aborts_the_round() -> None:
    result, _ = simulate(SecAggConfig(), tamper=swap_credential)
    assert all(not r.applied for r in result.history.rounds[1:])
    assert "KeySubstituted" in str(result.history.rounds[1].aborted)


# --- configuration ---------------------------------------------------------------------------


def test_a_strategy_that_needs_each_update_is_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="(?s)FedMedian cannot run with secure aggregation.*Hint"):
        ServerApp(FedMedian(), secure_aggregation=SecAggConfig())
    with pytest.raises(TypeError, match="SecAggConfig"):
        ServerApp(FedAvg(), secure_aggregation=True)  # type: ignore[arg-type]


def test_a_stage_asked_again_gets_the_same_answer_and_not_new_keys() -> None:
    node = SecAggNode(1, KeyRing().identity(1))
    advertise = Message(
        "secagg",
        task_id="t",
        run_id="r",
        round=1,
        node_id=1,
        arrays={"secagg/participants": np.array([1, 2, 3], np.int64)},
        config={"secagg.stage": "advertise", **_config_items()},
    )
    first = node.handle(advertise, fit=lambda m: m)
    again = node.handle(advertise, fit=lambda m: m)
    assert first.error is None
    np.testing.assert_array_equal(first.arrays["secagg/advert"], again.arrays["secagg/advert"])


def test_a_node_asked_for_a_later_stage_without_keys_drops_out_with_a_reason() -> None:
    node = SecAggNode(1, KeyRing().identity(1))
    mask = Message("secagg", run_id="r", round=3, node_id=1, config={"secagg.stage": "mask"})
    reply = node.handle(mask, fit=lambda m: m)
    assert reply.error is not None and "holds no keys for round 3" in reply.error


def _config_items() -> dict:
    from pollinate.secagg.codec import config_items

    return dict(config_items(SecAggConfig()))


def test_the_run_config_turns_it_on_and_a_typo_or_unsafe_value_says_what_to_do() -> None:
    assert SecAggConfig.from_run_config({"secagg-clipping-range": 2.0}) is None  # off
    on = {"secure-aggregation": True, "secagg-max-dropout-fraction": 0.2}
    assert SecAggConfig.from_run_config(on) == SecAggConfig(max_dropout_fraction=0.2)
    with pytest.raises(ValueError, match="(?s)unknown.*secagg-max-dropout.*Hint.*fraction"):
        SecAggConfig.from_run_config({"secure-aggregation": True, "secagg-max-dropout": 0.2})
    unsafe = {"secure-aggregation": True, "secagg-threshold-fraction": 0.5}
    with pytest.raises(ValueError, match="(?s)threshold_fraction=0.5.*Hint"):
        SecAggConfig.from_run_config(unsafe)


def test_the_round_line_says_the_round_was_aborted_not_that_too_many_failed() -> None:
    from pollinate.cli.render import round_line
    from pollinate.loop.history import RoundRecord

    aborted = RoundRecord(round=3, applied=False, aborted="node 2 reports: KeySubstituted")
    assert "secure aggregation aborted the round" in round_line(aborted)
    assert "too many failures" in round_line(RoundRecord(round=3, applied=False))
