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
    """Consume until SIGTERM or SIGINT; then finish the batch in hand and exit."""
    # A shared (Redis) result cache must learn of every applied batch; an in-process cache of
    # this process would serve nobody (API processes do not cache without a shared cache).
    cache = (
        build_cache(settings, run_indexer=True)
        if settings.cache_backend == CacheBackendKind.REDIS
        else None
    )
    async with runtime(settings, consumer=True, with_backend=True) as rt:
        assert rt.backend is not None
        if cache is not None:
            await cache.start()
        indexer = Indexer(rt.queue, rt.backend, rt.store, indexer_config(settings), cache=cache)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, indexer.stop)
        try:
            await indexer.run()
        finally:
            if cache is not None:
                await cache.close()


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
