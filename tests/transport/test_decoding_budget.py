"""The fleet port decodes replies side by side only while the arrays they declare fit in a
byte budget, so the hub's memory does not grow with the number of nodes."""

from __future__ import annotations

import threading

from pollinate.transport.server import _ByteBudget


class Holder:
    """Holds ``nbytes`` of ``budget`` on its own thread until released; ``held`` is set once
    it holds them."""

    def __init__(self, budget: _ByteBudget, nbytes: int) -> None:
        self.held, self._release = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._hold, args=(budget, nbytes), daemon=True)
        self._thread.start()

    def _hold(self, budget: _ByteBudget, nbytes: int) -> None:
        with budget.hold(nbytes):
            self.held.set()
            self._release.wait(10)

    def release(self) -> None:
        self._release.set()
        self._thread.join(10)
        assert not self._thread.is_alive()


def test_replies_that_fit_the_budget_together_are_decoded_side_by_side() -> None:
    budget = _ByteBudget(100)
    first, second = Holder(budget, 60), Holder(budget, 40)
    assert first.held.wait(5) and second.held.wait(5)
    first.release()
    second.release()


def test_a_reply_past_the_budget_waits_until_the_bytes_held_are_released() -> None:
    budget = _ByteBudget(100)
    first = Holder(budget, 60)
    assert first.held.wait(5)
    second = Holder(budget, 60)
    assert not second.held.wait(0.2)
    first.release()
    assert second.held.wait(5)
    second.release()


def test_an_oversized_reply_is_decoded_alone_and_one_without_arrays_never_waits() -> None:
    budget = _ByteBudget(100)
    large = Holder(budget, 500)
    assert large.held.wait(5)
    small, empty = Holder(budget, 1), Holder(budget, 0)
    assert empty.held.wait(5)
    assert not small.held.wait(0.2)
    large.release()
    assert small.held.wait(5)
    small.release()
    empty.release()
