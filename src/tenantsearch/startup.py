"""Waiting at start-up for dependencies that are down or still starting.

``tenantsearch api`` and ``tenantsearch indexer`` may start before the metadata database, the
search engine, the queue or Redis (a host reboot, an orchestrator starting everything at once):
instead of exiting, they try again with capped backoff, logging each wait
(``<process>_waiting_for_dependency``), until the dependency answers or the process is told to
stop. A setting that makes a dependency unusable (:class:`~tenantsearch.errors.Misconfigured`)
is not waited out: it is logged as ``<process>_misconfigured`` and the start fails with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from sqlalchemy.exc import SQLAlchemyError

from tenantsearch.errors import Misconfigured, ServiceUnavailable
from tenantsearch.ingest.indexer import capped_backoff

log = structlog.get_logger(__name__)

STARTUP_RETRY_BASE_SECONDS = 0.5
STARTUP_RETRY_MAX_SECONDS = 5.0
STARTUP_ERRORS: tuple[type[BaseException], ...] = (ServiceUnavailable, SQLAlchemyError, OSError)
"""What a dependency that is down (or still starting) raises at start-up: waited out."""


async def start_when_available(
    process: str, what: str, start: Callable[[], Awaitable[None]], stopping: asyncio.Event
) -> bool:
    """Run ``start`` until it works (True) or ``stopping`` is set (False), waiting with capped
    backoff between tries and logging each wait as ``<process>_waiting_for_dependency``."""
    attempt = 0
    while not stopping.is_set():
        attempt += 1
        try:
            await start()
        except Misconfigured as exc:
            log.error(f"{process}_misconfigured", dependency=what, error=exc.detail)  # noqa: TRY400 - the message says it all
            raise
        except STARTUP_ERRORS as exc:
            delay = capped_backoff(attempt, STARTUP_RETRY_BASE_SECONDS, STARTUP_RETRY_MAX_SECONDS)
            detail = exc.detail if isinstance(exc, ServiceUnavailable) else repr(exc)
            log.warning(
                f"{process}_waiting_for_dependency",
                dependency=what,
                error=detail,
                attempt=attempt,
                delay=round(delay, 3),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
        else:
            if attempt > 1:
                log.info(f"{process}_dependency_available", dependency=what, attempts=attempt)
            return True
    return False


@contextlib.asynccontextmanager
async def stop_watch(
    requested: Callable[[], bool] | None, interval: float = 0.2
) -> AsyncIterator[asyncio.Event]:
    """An event set once ``requested()`` turns true (checked every ``interval`` seconds): how a
    process whose signals another library handles (uvicorn sets a flag) learns it should stop."""
    stopping = asyncio.Event()
    if requested is None:
        yield stopping
        return

    async def watch() -> None:
        while not requested():  # noqa: ASYNC110 - a flag set by a signal handler, not an event
            await asyncio.sleep(interval)
        stopping.set()

    watcher = asyncio.create_task(watch(), name="stop-watch")
    try:
        yield stopping
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
