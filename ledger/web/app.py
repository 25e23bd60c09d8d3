"""The dashboard's web application (Starlette) and the server that runs it (uvicorn).

Read-only unless started with actions allowed: then the cancel, retry, pause and resume forms
appear, and each POST must carry the server's token (compared in constant time) and the name of
who acted, which the library records in the event it writes. A POST without the right token is
refused before the library is called, so it writes nothing.

Pages update live: one watcher thread sleeps on the database's own wake-up
(`Backend.wait_for_change`, through the reads' `_wait_for_change`), and when the log's last
position moved it tells every open ``/events`` stream (server-sent events), at most once per
`DEBOUNCE` seconds however fast commits come; the page's script then fetches itself and swaps in
the fresh ``<main>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..api import Ledger
from ..errors import InvalidArgument, JobNotFound, LedgerError
from . import metrics, pages
from .pages import BadRequest, Site

log = logging.getLogger("ledger.web")
DEBOUNCE = 0.25  # seconds: the shortest time between two live updates of a page
KEEPALIVE = 15.0  # seconds: a comment line on an idle stream, so proxies keep it open
WATCH_SLICE = 1.0  # seconds: the longest one wait of the watcher (its stop is seen within it)
_STATIC = Path(__file__).parent / "static"
_ACTIONS = {"cancel", "retry", "pause", "resume"}


class ChangeFeed:
    """Tells subscribers (one asyncio queue per open stream) the log's new last position."""

    def __init__(self, ledger: Ledger, debounce: float = DEBOUNCE) -> None:
        self._ledger = ledger
        self._debounce = debounce
        self._stop = threading.Event()
        self._subscribers: set[asyncio.Queue[int]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.position = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.position = self._ledger.last_position()
        self._thread = threading.Thread(target=self._watch, name="ledger-web-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def subscribe(self) -> asyncio.Queue[int]:
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[int]) -> None:
        self._subscribers.discard(queue)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._ledger._wait_for_change(WATCH_SLICE, self._stop):
                    continue
                position = self._ledger.last_position()
            except LedgerError as e:  # the database went away for a moment: say so, go on
                log.warning("watching the ledger for changes: %s", e)
                self._stop.wait(WATCH_SLICE)
                continue
            if position != self.position and self._loop is not None:
                self.position = position
                self._loop.call_soon_threadsafe(self._publish, position)
                self._stop.wait(self._debounce)  # commits in the meantime: one update after

    def _publish(self, position: int) -> None:
        for queue in list(self._subscribers):
            if queue.full():  # the stream has not sent the last one yet: it will send this
                queue.get_nowait()
            queue.put_nowait(position)


def create_app(
    ledger: Ledger, *, allow_actions: bool = False, token: str | None = None
) -> Starlette:
    """The dashboard over ``ledger``. ``allow_actions`` needs a ``token`` (the forms' secret)."""
    if allow_actions and not token:
        raise InvalidArgument("token", token, "actions need a token; set one")
    site = Site(ledger, allow_actions=allow_actions)
    feed = ChangeFeed(ledger)

    def page(render: Callable[[Site, Request], Response]) -> Callable[[Request], Awaitable[Any]]:
        async def endpoint(request: Request) -> Response:
            return await run_in_threadpool(_guarded, site, render, request)

        return endpoint

    async def metrics_endpoint(request: Request) -> Response:
        body = await run_in_threadpool(metrics.render, ledger)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    async def events_endpoint(request: Request) -> Response:
        queue = feed.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield f"retry: 2000\nevent: hello\ndata: {feed.position}\n\n"
                while True:
                    try:
                        position = await asyncio.wait_for(queue.get(), KEEPALIVE)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"event: change\ndata: {position}\n\n"
            finally:
                feed.unsubscribe(queue)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def action_endpoint(request: Request) -> Response:
        action = request.path_params["action"]
        target = request.path_params.get("job_id") or request.path_params.get("queue", "")
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = form.get("token", [""])[0]
        if action not in _ACTIONS:
            return site.error(404, f"no such action: {action}")
        if token is None or not hmac.compare_digest(given.encode(), token.encode()):
            log.warning("refused %s of %s: the token is missing or wrong", action, target)
            return site.error(403, "Refused: the token is missing or wrong. Nothing was written.")
        by = form.get("by", [""])[0].strip()
        if not by or len(by) > 100:
            return site.error(400, "Say who you are (1 to 100 characters) in the 'by' field.")
        try:
            where = await run_in_threadpool(pages.act, site, action, target, f"web:{by}")
        except JobNotFound as e:
            return site.error(404, str(e))
        except InvalidArgument as e:
            return site.error(400, str(e))
        except LedgerError as e:
            return site.error(409, str(e))
        log.info("%s of %s by %s", action, target, by)
        return RedirectResponse(where, status_code=303)

    routes = [
        Route("/", page(pages.overview)),
        Route("/jobs", page(pages.job_list)),
        Route("/jobs/{job_id}", page(pages.job_page)),
        Route("/chats/{chat_id}", page(pages.chat_page)),
        Route("/workers", page(pages.workers_page)),
        Route("/metrics", metrics_endpoint),
        Route("/events", events_endpoint),
        Mount("/static", StaticFiles(directory=_STATIC), name="static"),
    ]
    if allow_actions:
        routes += [
            Route("/jobs/{job_id}/{action}", action_endpoint, methods=["POST"]),
            Route("/queues/{queue}/{action}", action_endpoint, methods=["POST"]),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        feed.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            feed.stop()

    async def not_found(request: Request, exc: Exception) -> Response:
        return site.error(404, f"No page at {request.url.path}.")

    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found})


def _guarded(site: Site, render: Callable[[Site, Request], Response], request: Request) -> Response:
    """A page, or the error page its failure deserves."""
    try:
        return render(site, request)
    except BadRequest as e:
        return site.error(400, f"Bad filter: {e}")
    except JobNotFound as e:
        return site.error(404, str(e))
    except InvalidArgument as e:
        return site.error(400, str(e))
    except LedgerError as e:  # the database said no (busy, gone, damaged): say so, in words
        log.warning("page %s: %s", request.url.path, e)
        return site.error(503, f"The ledger could not be read: {e}")


def serve(
    ledger: Ledger,
    *,
    host: str = "127.0.0.1",
    port: int = 8400,
    allow_actions: bool = False,
    token: str | None = None,
) -> None:
    """Run the dashboard until interrupted (uvicorn, one process)."""
    import uvicorn

    app = create_app(ledger, allow_actions=allow_actions, token=token)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    uvicorn.Server(config).run()
