"""Login tokens and sessions; the feed that hands run events to the web loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from pollinate.dashboard import Sessions
from pollinate.dashboard import sessions as sessions_module
from pollinate.dashboard.feed import QUEUE_SIZE, Feed
from pollinate.hub.access import LOCAL_ADMIN, Caller, Role
from pollinate.loop.events import ReplyReceived, Stage, UpdateRejected

VIEWER = Caller("vera", Role.VIEWER, frozenset({"default"}))


def test_a_login_token_opens_one_session_as_its_caller_once() -> None:
    sessions = Sessions()
    token = sessions.login_token(VIEWER)
    redeemed = sessions.redeem(token)
    assert redeemed is not None
    session_id, session = redeemed
    assert session.caller == VIEWER
    assert sessions.get(session_id) == session
    assert sessions.redeem(token) is None
    assert sessions.get("not-a-session") is None


def test_an_expired_token_or_session_lets_nobody_in(monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = Sessions()
    token = sessions.login_token(LOCAL_ADMIN, ttl=60)
    session_id, _ = sessions.open(LOCAL_ADMIN)
    later = time.time() + sessions_module.SESSION_SECONDS + 1
    monkeypatch.setattr(sessions_module.time, "time", lambda: later)
    assert sessions.redeem(token) is None
    assert sessions.get(session_id) is None


def test_the_store_keeps_no_token_or_session_id_and_no_repr_shows_them() -> None:
    sessions = Sessions()
    token = sessions.login_token()
    session_id, session = sessions.open(VIEWER)
    kept = repr(vars(sessions))
    assert token not in kept and session_id not in kept
    assert session.csrf not in repr(session)


def test_events_reach_listeners_in_order_and_note_who_took_part() -> None:
    async def scenario() -> list[object]:
        feed = Feed()
        feed.attach(asyncio.get_running_loop())
        with feed.listen(lambda run, _: run == "r1") as listener:
            events = [
                ReplyReceived(1, Stage.FIT, 4, True),
                UpdateRejected(1, 5, "misfit"),
                ReplyReceived(1, Stage.FIT, 5, True),
                ReplyReceived(1, Stage.EVALUATE, 6, False),
                ReplyReceived(1, Stage.FIT, 6, True),
            ]
            thread = threading.Thread(
                target=lambda: [feed.on_event(run, e) for run in ("r2", "r1") for e in events]
            )
            thread.start()
            thread.join()
            got = [(await listener.queue.get())[1] for _ in events]
            assert listener.queue.empty()  # r2's events went elsewhere
        # a node's worst outcome of the round shows: rejected, then failed, then ok
        assert feed.took_part("r1") == {1: {4: "ok", 5: "rejected", 6: "failed"}}
        return got

    assert asyncio.run(scenario()) == [
        ReplyReceived(1, Stage.FIT, 4, True),
        UpdateRejected(1, 5, "misfit"),
        ReplyReceived(1, Stage.FIT, 5, True),
        ReplyReceived(1, Stage.EVALUATE, 6, False),
        ReplyReceived(1, Stage.FIT, 6, True),
    ]


def test_a_listener_that_falls_behind_is_cut_off_and_never_slows_the_run() -> None:
    async def scenario() -> None:
        feed = Feed()
        feed.attach(asyncio.get_running_loop())
        with feed.listen(lambda *_: True) as listener:
            # nobody reads, and the loop's own thread publishes: a hand-over that waited for
            # room in the queue would never return
            for node in range(QUEUE_SIZE + 10):
                feed.on_event("r1", ReplyReceived(1, Stage.FIT, node, True))
            await asyncio.sleep(0)  # the loop delivers
            assert listener.overflowed
            assert listener.queue.qsize() == QUEUE_SIZE

    asyncio.run(scenario())


def test_a_feed_whose_loop_closed_drops_events_quietly() -> None:
    feed = Feed()
    loop = asyncio.new_event_loop()
    feed.attach(loop)
    loop.close()
    feed.on_event("r1", ReplyReceived(1, Stage.FIT, 1, True))  # no exception for the run
