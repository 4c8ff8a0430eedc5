"""The hub's runs' events, fanned out to whoever subscribes: metrics, a dashboard, tests.

Every run's loop reports what happens through its ``Recorder`` as ``loop.events.Event``s; the
hub publishes each one here, with the run's id. A subscriber is called on the run's thread,
so it must be quick (hand the event to a queue for slow work).

Invariant: a subscriber that raises is logged (once per subscriber) and cut off; the run and
the other subscribers go on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pollinate.loop.events import Event

log = logging.getLogger("pollinate.hub")

Subscriber = Callable[[str, Event], None]
"""``(run_id, event)``."""


class RunEvents:
    """Publishes each run's events to the current subscribers."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` with every event from now on; returns what unsubscribes it."""
        with self._lock:
            self._subscribers.append(subscriber)
        return lambda: self._drop(subscriber)

    def publish(self, run_id: str, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            try:
                subscriber(run_id, event)
            except Exception:
                log.exception("an event subscriber failed and was unsubscribed: %r", subscriber)
                self._drop(subscriber)

    def _drop(self, subscriber: Subscriber) -> None:
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)
