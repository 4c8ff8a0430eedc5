"""The dashboard's web app (Starlette): pages, server-sent event streams, and one action.

Routes:

- ``GET /login?token=T`` spends a one-time login token for a session cookie (HttpOnly,
  SameSite=Strict), then redirects to ``/`` (so the token leaves the address bar);
- ``GET /``, ``/runs``, ``/runs/RUN``, ``/nodes/NODE``: the fleet, runs, a run and a node,
  each a page shell whose script fills it from its event stream;
- ``GET /events/fleet``, ``/events/runs``, ``/events/runs/RUN``, ``/events/nodes/NODE``:
  the streams (``text/event-stream``), each starting with a ``snapshot``;
- ``POST /api/runs/RUN/stop``: stops a run; it needs the session's CSRF token in the
  ``X-CSRF-Token`` header, and the source decides whether the session's caller may (a hub:
  ``Hub.stop_run``, ``access.authorize``, audited).

Invariants: every page, stream and action needs a live session (401 otherwise) and shows or
does only what the source allows the session's caller (``views.py``); text that
came from outside reaches the browser as JSON and is set as text by the pages, and what the
server writes into HTML is escaped; a content security policy allows only the dashboard's own
scripts and styles, so injected markup could run nothing.
"""

from __future__ import annotations

import asyncio
import html
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pollinate.dashboard.feed import Activity, Feed, Listener
from pollinate.dashboard.sessions import Session, Sessions, csrf_matches
from pollinate.dashboard.source import Source
from pollinate.dashboard.views import (
    fleet_view,
    log_entries,
    node_view,
    run_row,
    run_view,
    runs_view,
)
from pollinate.hub.access import Caller, Forbidden
from pollinate.loop.events import (
    Event,
    ReplyBounded,
    ReplyReceived,
    RoundFinished,
    StageStarted,
    TaskFailed,
    UpdateRejected,
)
from pollinate.text import MAX_LINE, inert

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "pollinate_session"
TICK = 0.5
"""Seconds between looks at what no event announces (the log, run status, node ages)."""
KEEPALIVE = 15.0
"""Seconds of quiet after which a stream sends a comment, so proxies keep it open."""
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LOG_IN = "Log in with the link that the hub (or `pollinate run --dashboard`) printed."
PAGES = {"fleet": "Fleet", "runs": "Runs", "run": "Run", "node": "Node"}


class Dashboard:
    """The web app over ``source`` (a hub, or a local simulation); ``sessions`` says who is
    logged in, ``feed`` brings the runs' events (subscribe it to the source)."""

    def __init__(self, source: Source, sessions: Sessions, feed: Feed) -> None:
        self.source, self.sessions, self.feed = source, sessions, feed
        self.closing = asyncio.Event()
        self.app = Starlette(
            routes=[
                Route("/login", self.login),
                Route("/favicon.ico", _no_icon),
                Route("/", self.page("fleet")),
                Route("/runs", self.page("runs")),
                Route("/runs/{run_id}", self.page("run")),
                Route("/nodes/{node_id:int}", self.page("node")),
                Route("/events/fleet", self.fleet_events),
                Route("/events/runs", self.runs_events),
                Route("/events/runs/{run_id}", self.run_events),
                Route("/events/nodes/{node_id:int}", self.node_events),
                Route("/api/runs/{run_id}/stop", self.stop_run, methods=["POST"]),
                Mount("/static", StaticFiles(directory=STATIC), name="static"),
            ]
        )

    # --- sessions ---------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        redeemed = self.sessions.redeem(request.query_params.get("token", ""))
        if redeemed is None:
            return _message(
                403,
                "This login link was used already or has expired. Each link opens one "
                "session; ask whoever runs the hub for a new one.",
            )
        session_id, session = redeemed
        response = RedirectResponse("/", status_code=303, headers=HEADERS)
        response.set_cookie(
            COOKIE,
            session_id,
            max_age=int(session.expires - time.time()),
            httponly=True,
            samesite="strict",
            path="/",
        )
        return response

    def session(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE, ""))

    # --- pages ------------------------------------------------------------------------------

    def page(self, name: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = self.session(request)
            if session is None:
                return _message(401, LOG_IN)
            subject = str(request.path_params.get("run_id", request.path_params.get("node_id", "")))
            return HTMLResponse(_shell(name, subject, session), headers=HEADERS)

        return endpoint

    # --- event streams ----------------------------------------------------------------------

    async def fleet_events(self, request: Request) -> Response:
        async def snapshots(caller: Caller) -> AsyncIterator[str]:
            while True:
                activity = dict(self.feed.activity)
                nodes = await asyncio.to_thread(fleet_view, self.source, activity, caller)
                yield _sse("snapshot", {"nodes": nodes})
                if await self._quiet(TICK * 2):
                    return

        return self._stream(request, snapshots)

    async def runs_events(self, request: Request) -> Response:
        async def snapshots(caller: Caller) -> AsyncIterator[str]:
            async for runs in self._changes(lambda: runs_view(self.source, caller)):
                yield "" if runs is None else _sse("snapshot", {"runs": runs})

        return self._stream(request, snapshots)

    async def node_events(self, request: Request) -> Response:
        node_id = int(request.path_params["node_id"])

        async def snapshots(caller: Caller) -> AsyncIterator[str]:
            while True:
                activity = dict(self.feed.activity)
                data = await asyncio.to_thread(node_view, self.source, node_id, activity, caller)
                runs = await asyncio.to_thread(self._runs_of, node_id, activity, caller)
                yield _sse("snapshot", {"node": data, "runs": runs if data else {}})
                if await self._quiet(TICK * 2):
                    return

        return self._stream(request, snapshots)

    async def run_events(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]

        async def events(caller: Caller) -> AsyncIterator[str]:
            with self.feed.listen(lambda run, _: run == run_id) as listener:
                try:
                    data = await asyncio.to_thread(run_view, self.source, run_id, caller)
                except Forbidden as exc:
                    yield _sse("forbidden", {"reason": str(exc).splitlines()[0]})
                    return
                if data is None:
                    yield _sse("missing", {"run": run_id})
                    return
                seq, status = data.pop("seq"), data["run"]
                yield _sse("snapshot", {**data, "took_part": self.feed.took_part(run_id)})
                async for message in self._follow_run(run_id, caller, listener, seq, status):
                    yield message

        return self._stream(request, events)

    async def _follow_run(
        self, run_id: str, caller: Caller, listener: Listener, seq: int, shown: dict[str, Any]
    ) -> AsyncIterator[str]:
        """A run's events as they come; its log and status every ``TICK`` (and after every
        event): what the run's events do not announce."""
        look = 0.0
        while not self.closing.is_set() and not listener.overflowed:
            try:
                _, event = await asyncio.wait_for(listener.queue.get(), TICK)
                yield _sse(*_event(event))
            except TimeoutError:
                yield ""
            if time.monotonic() < look:
                continue
            look = time.monotonic() + TICK
            rows = await asyncio.to_thread(self.source.log_after, run_id, seq)
            if rows:
                seq = rows[-1].seq
                rounds, lines = log_entries(rows)
                for record in rounds:
                    yield _sse("round", record)
                if lines:
                    yield _sse("log", lines)
            row = await asyncio.to_thread(self.source.run, run_id, caller)
            may_stop = row is not None and self.source.may_stop(row, caller)
            if row is not None and (now := run_row(row, may_stop)) != shown:
                shown = now
                yield _sse("run", now)

    async def _changes(self, read: Callable[[], Any]) -> AsyncIterator[Any]:
        """What ``read`` returns (in a worker thread) each time it changes; None on a tick
        when it did not."""
        last: Any = None
        while True:
            now = await asyncio.to_thread(read)
            yield None if now == last else now
            last = now
            if await self._quiet(TICK):
                return

    def _stream(self, request: Request, events: Callable[[Caller], AsyncIterator[str]]) -> Response:
        session = self.session(request)
        if session is None:
            return _message(401, LOG_IN)

        async def body() -> AsyncIterator[str]:
            last = time.monotonic()
            async for message in events(
                session.caller
            ):  # an empty message: a tick with nothing new
                if self.closing.is_set():
                    return
                if message or time.monotonic() - last > KEEPALIVE:
                    last = time.monotonic()
                    yield message or ": keep-alive\n\n"

        headers = {**HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    async def _quiet(self, seconds: float) -> bool:
        """Wait ``seconds``; True if the dashboard is closing meanwhile."""
        try:
            await asyncio.wait_for(self.closing.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _runs_of(
        self, node_id: int, activity: dict[int, Activity], caller: Caller
    ) -> dict[str, list[int]]:
        """Run -> the rounds this dashboard saw the node take part in, of its last run (if
        ``caller`` may read it)."""
        last = activity.get(node_id)
        # the runs caller may read, not run() for this one: a refusal each second would be audited
        if last is None or last.run_id not in {row.run_id for row in self.source.runs(caller)}:
            return {}
        rounds = self.feed.took_part(last.run_id)
        return {last.run_id: sorted(r for r, nodes in rounds.items() if node_id in nodes)}

    # --- actions ----------------------------------------------------------------------------

    async def stop_run(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return _refuse(401, "no session: log in with the login link that was printed")
        if not csrf_matches(session, request.headers.get("x-csrf-token", "")):
            return _refuse(403, "missing or wrong CSRF token: reload the page and try again")
        run_id = request.path_params["run_id"]
        try:
            reason = await asyncio.to_thread(self.source.stop, run_id, session.caller)
        except Forbidden as exc:
            return _refuse(403, str(exc).splitlines()[0])
        if reason is not None:
            return _refuse(409, reason)
        return JSONResponse({"stopped": run_id}, headers=HEADERS)


def _event(event: Event) -> tuple[str, dict[str, Any]]:
    """A loop event as an event-stream message: its name and data."""
    if isinstance(event, RoundFinished):
        return "round", event.record.to_dict()
    if isinstance(event, StageStarted):
        return "stage", {"round": event.round, "stage": str(event.stage), "tasks": event.tasks}
    if isinstance(event, ReplyReceived):
        data = {"round": event.round, "stage": str(event.stage), "ok": event.ok}
        return "reply", {**data, "node": event.node_id}
    if isinstance(event, TaskFailed):
        data = {"round": event.round, "stage": str(event.stage), "kind": str(event.kind)}
        return "failed", {**data, "node": event.node_id}
    if isinstance(event, UpdateRejected):
        data = {"round": event.round, "node": event.node_id}
        return "rejected", {**data, "reason": inert(event.reason, MAX_LINE)}
    if isinstance(event, ReplyBounded):
        data = {"round": event.round, "stage": str(event.stage), "node": event.node_id}
        return "bounded", {**data, "note": inert(event.note, MAX_LINE)}
    raise TypeError(f"not a loop event: {event!r}")


def _sse(name: str, data: Any) -> str:
    # json.dumps writes no raw newline, so the data is one `data:` line
    return f"event: {name}\ndata: {json.dumps(data, allow_nan=False, default=str)}\n\n"


def _shell(page: str, subject: str, session: Session) -> str:
    """A page: the frame, and the script that fills it. ``subject`` (a run id from the
    address) is escaped like anything else the server writes into HTML."""
    role, title = session.caller.role.value, PAGES[page]
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{html.escape(session.csrf)}">
<title>pollinate · {title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/uPlot.min.css">
<link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/uPlot.iife.min.js" defer></script>
<script src="/static/dashboard.js" defer></script>
</head>
<body data-page="{page}" data-subject="{html.escape(subject)}" data-role="{role}">
<header>
<span class="brand">pollinate</span>
<nav><a href="/">Fleet</a> <a href="/runs">Runs</a></nav>
<span id="live" class="live" title="live updates">connecting…</span>
<span class="role">{role}</span>
</header>
<main id="main"></main>
</body>
</html>
"""


async def _no_icon(request: Request) -> Response:
    return Response(status_code=204, headers=HEADERS)


def _message(status: int, text: str) -> HTMLResponse:
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>pollinate</title>'
        f'<link rel="icon" href="data:,"></head><body><p>{html.escape(text)}</p></body></html>'
    )
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def _refuse(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=HEADERS)
