"""Entry points without HTTP: the standalone indexer, and the operator's direct access to the
queue and metadata (dead letters, migrations) from the CLI.

They build the same adapters the API does (``app.build_backend`` / ``app.build_queue``), so a
worker and an API process configured alike always agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from tenantsearch.app import build_backend, build_cache, build_queue, indexer_config
from tenantsearch.ingest.dead_letters import DeadLetterService
from tenantsearch.ingest.indexer import Indexer
from tenantsearch.queue.port import Queue
from tenantsearch.search.port import SearchBackend
from tenantsearch.settings import CacheBackendKind, Settings
from tenantsearch.startup import start_when_available
from tenantsearch.store.db import create_engine, migrate
from tenantsearch.store.repository import MetadataStore

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    store: MetadataStore
    queue: Queue
    backend: SearchBackend | None


@contextlib.asynccontextmanager
async def runtime(
    settings: Settings, *, consumer: bool, with_backend: bool
) -> AsyncIterator[Runtime]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.resolved_database_url)
    await migrate(engine)
    store = MetadataStore(engine)
    queue = build_queue(settings, consumer=consumer, engine=engine)
    backend = build_backend(settings) if with_backend else None
    await queue.start()
    try:
        if backend is not None:
            await backend.start()
        yield Runtime(store, queue, backend)
    finally:
        if backend is not None:
            await backend.close()
        await queue.close()
        await store.close()


async def run_indexer(settings: Settings) -> None:
    """Consume until SIGTERM or SIGINT; then finish the batches in hand and exit.

    A dependency that is down at start-up (the metadata database, the queue, the engine, the
    shared cache) is waited for, with capped backoff and a log line per try, until it comes up or
    the process is told to stop; ``indexer_started`` is logged once everything is up.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    indexer: Indexer | None = None

    def stop() -> None:
        stopping.set()
        if indexer is not None:
            indexer.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as resources:
        engine = create_engine(settings.resolved_database_url)
        store = MetadataStore(engine)
        resources.push_async_callback(store.close)
        if not await start_when_available(
            "indexer", "metadata database", lambda: migrate(engine), stopping
        ):
            return
        # Each is closed on the way out even if it never started (a client may exist already).
        queue = build_queue(settings, consumer=True, engine=engine)
        resources.push_async_callback(queue.close)
        if not await start_when_available("indexer", "queue", queue.start, stopping):
            return
        backend = build_backend(settings)
        resources.push_async_callback(backend.close)
        if not await start_when_available("indexer", "search engine", backend.start, stopping):
            return
        # A shared (Redis) result cache must learn of every applied batch; an in-process cache
        # of this process would serve nobody (API processes do not cache without a shared cache).
        cache = (
            build_cache(settings, run_indexer=True)
            if settings.cache_backend == CacheBackendKind.REDIS
            else None
        )
        if cache is not None:
            resources.push_async_callback(cache.close)
            if not await start_when_available("indexer", "cache", cache.start, stopping):
                return
        indexer = Indexer(queue, backend, store, indexer_config(settings), cache=cache)
        if stopping.is_set():
            return
        await indexer.run()


@contextlib.asynccontextmanager
async def dead_letters(settings: Settings) -> AsyncIterator[DeadLetterService]:
    async with runtime(settings, consumer=False, with_backend=False) as rt:
        yield DeadLetterService(rt.queue, rt.store)


async def run_migrations(settings: Settings) -> None:
    engine = create_engine(settings.resolved_database_url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
