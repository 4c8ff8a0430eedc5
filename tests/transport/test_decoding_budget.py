"""The fleet port decodes replies side by side only while the arrays they declare fit in a
byte budget, so the hub's memory does not grow with the number of nodes."""

from __future__ import annotations

import asyncio

from pollinate.transport.guards import ByteBudget


async def holding(budget: ByteBudget, nbytes: int, held: asyncio.Event, release: asyncio.Event):
    async with budget.hold(nbytes):
        held.set()
        await release.wait()


class Holders:
    """Tasks that each hold some bytes of one budget until released."""

    def __init__(self, limit: int) -> None:
        self.budget = ByteBudget(limit)
        self.tasks: list[asyncio.Task[None]] = []

    def hold(self, nbytes: int) -> tuple[asyncio.Event, asyncio.Event]:
        held, release = asyncio.Event(), asyncio.Event()
        self.tasks.append(asyncio.create_task(holding(self.budget, nbytes, held, release)))
        return held, release


async def settled() -> None:
    for _ in range(10):  # let every runnable task take its turn
        await asyncio.sleep(0)


def test_replies_that_fit_the_budget_together_are_decoded_side_by_side() -> None:
    async def scenario() -> None:
        holders = Holders(100)
        (first, release_first), (second, release_second) = holders.hold(60), holders.hold(40)
        await settled()
        assert first.is_set() and second.is_set()
        release_first.set(), release_second.set()
        await asyncio.gather(*holders.tasks)

    asyncio.run(scenario())


def test_a_reply_past_the_budget_waits_until_the_bytes_held_are_released() -> None:
    async def scenario() -> None:
        holders = Holders(100)
        first, release_first = holders.hold(60)
        second, release_second = holders.hold(60)
        await settled()
        assert first.is_set() and not second.is_set()
        release_first.set()
        await asyncio.wait_for(second.wait(), 5)
        release_second.set()
        await asyncio.gather(*holders.tasks)

    asyncio.run(scenario())


def test_an_oversized_reply_is_decoded_alone_and_one_without_arrays_never_waits() -> None:
    async def scenario() -> None:
        holders = Holders(100)
        large, release_large = holders.hold(500)
        await settled()
        (small, release_small), (empty, release_empty) = holders.hold(1), holders.hold(0)
        await settled()
        assert large.is_set() and empty.is_set() and not small.is_set()
        release_large.set()
        await asyncio.wait_for(small.wait(), 5)
        release_small.set(), release_empty.set()
        await asyncio.gather(*holders.tasks)

    asyncio.run(scenario())
