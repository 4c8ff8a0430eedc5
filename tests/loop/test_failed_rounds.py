"""A broken run stops: after ``ServerApp.max_failed_rounds`` rounds in a row without one
usable fit update, the run fails with a ``RunError`` that quotes why; a round with any usable
update resets the count."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate import Arrays, Client, FedAvg, RunError, ServerApp, run_simulation
from pollinate.client import Context
from pollinate.loop.events import Event, RoundFinished
from pollinate.loop.history import History, RoundRecord
from pollinate.loop.run import failed_streak
from pollinate.strategy import Sampling


class Broken(Client):
    def fit(self, arrays, config):  # type: ignore[no-untyped-def]
        raise ValueError("the data cannot be split 2000 ways")


class Step(Client):
    def fit(self, arrays, config):  # type: ignore[no-untyped-def]
        return Arrays({"w": arrays["w"] + 1}), 1, {}


def app(rounds: int, **options: object) -> ServerApp:
    return ServerApp(
        FedAvg(sampling=Sampling(fraction_evaluate=0)),
        num_rounds=rounds,
        initial_arrays=Arrays({"w": np.zeros(2)}),
        **options,  # type: ignore[arg-type]
    )


def rounds_seen(server_app: ServerApp, client_fn) -> tuple[list[RoundRecord], str]:  # type: ignore[no-untyped-def]
    seen: list[RoundRecord] = []

    def on_event(event: Event) -> None:
        if isinstance(event, RoundFinished):
            seen.append(event.record)

    with pytest.raises(RunError) as raised:
        run_simulation(server_app, client_fn, 3, on_event=on_event)
    return seen, str(raised.value)


def test_a_run_where_every_client_fails_stops_after_max_failed_rounds_saying_why() -> None:
    seen, message = rounds_seen(app(20, max_failed_rounds=3), lambda ctx: Broken())
    assert [r.round for r in seen] == [0, 1, 2, 3]
    assert "no fit task gave a usable update in 3 rounds in a row (rounds 1 to 3)" in message
    assert "ValueError: the data cannot be split 2000 ways" in message
    assert "max_failed_rounds" in message


def test_the_default_is_three_rounds() -> None:
    seen, _ = rounds_seen(app(20), lambda ctx: Broken())
    assert len(seen) == 4


def test_a_round_with_a_usable_update_resets_the_count() -> None:
    def client_fn(context: Context) -> Client:
        return Broken() if context.node_id else Step()

    # node 0 trains in rounds where it is sampled; with all three sampled it always is
    result = run_simulation(app(6, max_failed_rounds=1), client_fn, 3)
    assert [r.replies for r in result.history.rounds[1:]] == [1] * 6


def test_none_never_stops_a_run() -> None:
    result = run_simulation(app(5, max_failed_rounds=None), lambda ctx: Broken(), 3)
    assert [r.applied for r in result.history.rounds[1:]] == [False] * 5


def test_the_streak_counts_only_the_last_rounds_without_a_usable_update() -> None:
    def record(rnd: int, replies: int) -> RoundRecord:
        return RoundRecord(round=rnd, replies=replies, applied=replies > 0)

    history = History([record(0, 0), record(1, 0), record(2, 3), record(3, 0), record(4, 0)])
    assert failed_streak(history) == 2
    assert failed_streak(History([record(0, 0)])) == 0


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (2.0, TypeError), (True, TypeError)])
def test_a_bad_limit_is_refused_with_a_hint(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_failed_rounds must be an int >= 1"):
        app(1, max_failed_rounds=value)
