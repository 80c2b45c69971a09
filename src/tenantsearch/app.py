"""The composition root: ``create_app(settings)`` picks every adapter and wires every service.

This is the only module that decides which adapter implements a port. Nothing is created at import
time; the lifespan builds clients on start-up and closes them on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import httpx
import structlog
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantsearch import __version__, failpoints
from tenantsearch.api import problems
from tenantsearch.api.deps import Services
from tenantsearch.api.middleware import BodyLimit, RequestContext
from tenantsearch.api.routes import (
    audit as audit_routes,
)
from tenantsearch.api.routes import (
    collections,
    dead_letters,
    documents,
    keys,
    ops,
    search,
    tasks,
    tenants,
)
from tenantsearch.api.routes import (
    tokens as token_routes,
)
from tenantsearch.api.routes import (
    usage as usage_routes,
)
from tenantsearch.api.search_fast import SearchFastPath
from tenantsearch.auth.audit import AuditLog
from tenantsearch.auth.oidc import OidcConfig, OidcVerifier
from tenantsearch.auth.service import AuthService, ClaimNames, KeyService
from tenantsearch.auth.tenant_tokens import TenantTokenService
from tenantsearch.cache.memory import MemoryCache
from tenantsearch.cache.port import Cache
from tenantsearch.cache.redis import RedisCache
from tenantsearch.cache.refresh_ahead import StaleServing
from tenantsearch.ingest.dead_letters import DeadLetterService
from tenantsearch.ingest.indexer import Indexer, IndexerConfig
from tenantsearch.ingest.outbox import PublishTimes, TaskPublisher
from tenantsearch.ingest.service import DocumentReader, TaskService, WriteLimits, WriteService
from tenantsearch.limits.memory import MemoryRateLimiter
from tenantsearch.limits.port import RateLimiter
from tenantsearch.limits.redis import RedisRateLimiter
from tenantsearch.limits.service import LimitService
from tenantsearch.limits.usage import UsageService
from tenantsearch.observability.metrics import Metrics
from tenantsearch.queue.port import Queue, QueueUnavailable
from tenantsearch.queue.rabbitmq import RabbitMqQueue
from tenantsearch.queue.sqlite import SqliteQueue
from tenantsearch.search.collections import CollectionService
from tenantsearch.search.opensearch_backend import OpenSearchBackend
from tenantsearch.search.port import SearchBackend
from tenantsearch.search.service import SearchService
from tenantsearch.search.tantivy_backend import TantivyBackend
from tenantsearch.settings import (
    CacheBackendKind,
    LimiterBackendKind,
    QueueBackendKind,
    SearchBackendKind,
    Settings,
)
from tenantsearch.startup import start_when_available, stop_watch
from tenantsearch.store.db import create_engine, migrate
from tenantsearch.store.repository import MetadataStore
from tenantsearch.tenants.service import TenantService

log = structlog.get_logger(__name__)


def build_backend(settings: Settings) -> SearchBackend:
    match settings.search_backend:
        case SearchBackendKind.TANTIVY:
            return TantivyBackend(settings.data_dir / "indexes")
        case SearchBackendKind.OPENSEARCH:
            password, api_key = settings.opensearch_password, settings.opensearch_api_key
            return OpenSearchBackend(
                settings.opensearch_hosts,
                index_prefix=settings.opensearch_index_prefix,
                username=settings.opensearch_username,
                password=password.get_secret_value() if password else None,
                api_key=api_key.get_secret_value() if api_key else None,
                ca_file=settings.opensearch_ca_file,
                verify_certs=settings.opensearch_verify_certs,
                timeout_seconds=settings.opensearch_timeout_seconds,
                pool_size=settings.opensearch_pool_size,
                shards=settings.opensearch_shards,
                replicas=settings.opensearch_replicas,
                dedicated_tenants=settings.opensearch_dedicated_tenant_ids,
            )


def build_queue(settings: Settings, *, consumer: bool, engine: AsyncEngine) -> Queue:
    """The queue adapter; ``engine`` is the metadata database (RabbitMQ's backlog ledger)."""
    match settings.queue_backend:
        case QueueBackendKind.SQLITE:
            return SqliteQueue(
                settings.data_dir / "queue.db",
                max_deliveries=settings.indexer_max_deliveries + 1,
                # The embedded server is the queue's only consumer: whatever a previous run had
                # leased when it stopped (even by kill -9) is delivered again at once.
                release_leases_on_start=consumer,
            )
        case QueueBackendKind.RABBITMQ:
            if settings.rabbitmq_url is None:  # refused by Settings validation already
                raise ValueError("rabbitmq_url is required for the rabbitmq queue backend")
            return RabbitMqQueue(
                settings.rabbitmq_url.get_secret_value(),
                ledger_engine=engine,
                queue=settings.rabbitmq_queue,
                max_deliveries=settings.indexer_max_deliveries + 1,
                prefetch=settings.rabbitmq_prefetch,
                publish_timeout=settings.rabbitmq_publish_timeout_seconds,
                # Fault injection for reliability tests only; unset in production.
                failpoint=failpoints.chosen(failpoints.QUEUE_POINTS),
            )


def build_limiter(settings: Settings) -> RateLimiter:
    match settings.limiter_backend:
        case LimiterBackendKind.MEMORY:
            return MemoryRateLimiter()
        case LimiterBackendKind.REDIS:
            assert settings.redis_url is not None  # checked by Settings
            return RedisRateLimiter(
                settings.redis_url.get_secret_value(), timeout=settings.limiter_timeout_seconds
            )


def build_cache(settings: Settings, *, run_indexer: bool) -> Cache | None:
    """The search result cache, or None. An in-process cache only works where the indexer runs
    in the same process (it bumps the generations that invalidate entries): with separate
    indexer processes, results are cached only in Redis."""
    match settings.cache_backend:
        case CacheBackendKind.NONE:
            return None
        case CacheBackendKind.MEMORY:
            if not run_indexer:
                log.warning("search_cache_disabled", reason="in-process cache without indexer")
                return None
            return MemoryCache(max_entries=settings.cache_max_entries)
        case CacheBackendKind.REDIS:
            assert settings.redis_url is not None  # checked by Settings
            return RedisCache(settings.redis_url.get_secret_value())


def build_oidc(settings: Settings, http: httpx.AsyncClient) -> OidcVerifier | None:
    if not settings.oidc_issuer or not settings.oidc_audience:
        return None
    return OidcVerifier(
        OidcConfig(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            jwks_file=settings.oidc_jwks_file,
            cache_seconds=settings.oidc_jwks_cache_seconds,
            refetch_interval_seconds=settings.oidc_jwks_refetch_seconds,
            leeway_seconds=settings.oidc_leeway_seconds,
        ),
        http,
    )


def indexer_config(settings: Settings) -> IndexerConfig:
    return IndexerConfig(
        batch_documents=settings.indexer_batch_documents,
        linger_seconds=settings.indexer_linger_ms / 1000,
        max_deliveries=settings.indexer_max_deliveries,
        concurrency=settings.indexer_concurrency,
        retry_budget_seconds=settings.indexer_retry_budget_seconds,
        task_retention=timedelta(days=settings.task_retention_days),
        # Fault injection for reliability tests only (docs/operations.md); unset in production.
        failpoint=failpoints.chosen(failpoints.INDEXER_POINTS),
    )


async def start_queue(queue: Queue) -> asyncio.Task[bool] | None:
    """Start the queue. If the broker is down, start-up goes on and a background task keeps
    trying (``start_when_available``) until it comes up: meanwhile ``/readyz`` answers 503 naming
    the queue, and writes answer 503 problem+json. Returns that task, or None if the queue
    started."""
    try:
        await queue.start()
    except QueueUnavailable as exc:
        log.warning("queue_unavailable_at_start", error=exc.detail)
    else:
        return None
    never = asyncio.Event()  # the task is cancelled at shutdown instead
    return asyncio.create_task(
        start_when_available("api", "queue", queue.start, never), name="queue-start"
    )


def announce_admin_key(token: str) -> None:
    """Print a generated admin key once, to the terminal, never to the logs."""
    sys.stdout.write(
        "\n"
        "  A platform admin key was generated. It is shown only this once (only its hash is"
        " kept):\n"
        f"\n      {token}\n\n"
        "  Set TENANTSEARCH_ADMIN_KEY (or TENANTSEARCH_ADMIN_KEY_FILE) to use your own instead.\n\n"
    )
    sys.stdout.flush()


class StartupStopped(RuntimeError):
    """The process was told to stop while it waited for a dependency at start-up."""


def create_app(
    settings: Settings,
    *,
    run_indexer: bool = True,
    stop_requested: Callable[[], bool] | None = None,
) -> FastAPI:
    """The API (and, with ``run_indexer``, an indexer in the same process). At start-up it waits
    for PostgreSQL and OpenSearch while they are down, until ``stop_requested()`` (the server's
    signal flag) turns true; the queue is connected in the background instead (``start_queue``),
    so the API can serve and answer 503 meanwhile."""
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            settings.resolved_database_url, pool_size=settings.database_pool_size
        )
        store = MetadataStore(engine)
        backend = build_backend(settings)
        queue = build_queue(settings, consumer=run_indexer, engine=engine)
        # A server may be down or still starting: waited for. The embedded SQLite file and
        # Tantivy index are local: an error there is a misconfiguration, which fails at once.
        starts: list[tuple[str, Callable[[], Awaitable[None]], bool]] = [
            (
                "metadata database",
                lambda: migrate(engine),
                not settings.resolved_database_url.startswith("sqlite"),
            ),
            ("search engine", backend.start, settings.search_backend != SearchBackendKind.TANTIVY),
        ]
        async with stop_watch(stop_requested) as stopping:
            for what, start, remote in starts:
                if not remote:
                    await start()
                elif not await start_when_available("api", what, start, stopping):
                    raise StartupStopped(f"stopped while waiting for the {what}")
        queue_starter = await start_queue(queue)
        admin_key = settings.admin_key.get_secret_value() if settings.admin_key else None
        audit = AuditLog(store)
        stale = StaleServing(settings.metadata_stale_seconds)
        metrics.watch_stale_metadata(stale.oldest_age)
        tokens = TenantTokenService(store, stale=stale)
        await tokens.start()
        http = httpx.AsyncClient(follow_redirects=False)
        auth = AuthService(
            store,
            admin_key=admin_key,
            audit=audit,
            tokens=tokens,
            oidc=build_oidc(settings, http),
            claims=ClaimNames(tenant=settings.oidc_tenant_claim, roles=settings.oidc_roles_claim),
            metrics_token=(
                settings.metrics_token.get_secret_value() if settings.metrics_token else None
            ),
            stale=stale,
        )
        limiter = build_limiter(settings)
        cache = build_cache(settings, run_indexer=run_indexer)
        await limiter.start()  # Redis clients connect on first use: nothing to wait for here
        if cache is not None:
            await cache.start()
        limits = LimitService(
            limiter, store, metrics, default_plan=settings.default_plan, stale=stale
        )
        usage = UsageService(store, backend)

        async def document_quota(tenant_id: str, incoming: int, size: int) -> None:
            tenant_limits = await limits.limits_of(tenant_id)
            await usage.check_document_quota(
                tenant_id,
                incoming,
                tenant_limits.max_documents,
                size=size,
                max_stored_bytes=tenant_limits.max_stored_bytes,
            )

        generated = await auth.bootstrap_admin_key()
        if generated:
            announce_admin_key(generated)
        publisher = TaskPublisher(
            store,
            queue,
            PublishTimes(
                lease_seconds=settings.publish_lease_seconds,
                settle_seconds=min(10.0, settings.publish_lease_seconds),
                sweep_seconds=settings.publish_sweep_seconds,
            ),
            failpoint=failpoints.chosen(failpoints.PUBLISHER_POINTS),
        )
        sweeper = asyncio.create_task(publisher.run_sweeper(), name="publish-sweeper")
        collections_service = CollectionService(store, backend, publisher, stale=stale)
        app.state.services = Services(
            stale=stale,
            settings=settings,
            store=store,
            backend=backend,
            queue=queue,
            metrics=metrics,
            auth=auth,
            audit=audit,
            tokens=tokens,
            keys=KeyService(store, auth, audit),
            tenants=TenantService(
                store, publisher, auth, audit, default_plan=settings.default_plan
            ),
            collections=collections_service,
            writes=WriteService(
                store,
                queue,
                publisher,
                WriteLimits(
                    max_document_bytes=settings.max_document_bytes,
                    max_batch_documents=settings.max_batch_documents,
                    max_tenant_backlog_documents=settings.max_tenant_backlog_documents,
                    max_tenant_backlog_bytes=settings.max_tenant_backlog_bytes,
                    max_backlog_documents=settings.max_backlog_documents,
                ),
                quota=document_quota,
            ),
            tasks=TaskService(store),
            documents=DocumentReader(backend),
            search=SearchService(backend, cache, metrics, settings.cache_ttl_seconds),
            dead_letters=DeadLetterService(queue, store),
            limits=limits,
            usage=usage,
        )
        indexer_task = None
        indexer = None
        if run_indexer:
            indexer = Indexer(queue, backend, store, indexer_config(settings), cache=cache)
            indexer_task = asyncio.create_task(indexer.run(), name="indexer")
        log.info("started", version=__version__, data_dir=str(settings.data_dir))
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            if indexer is not None and indexer_task is not None:
                indexer.stop()
                await indexer_task
            if queue_starter is not None:
                queue_starter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await queue_starter
            await queue.close()
            await backend.close()
            await store.close()
            await http.aclose()
            await limiter.close()
            if cache is not None:
                await cache.close()
            log.info("stopped")

    app = FastAPI(
        title="tenantsearch",
        version=__version__,
        description="A multi-tenant search service. Authenticate with "
        "`Authorization: Bearer <api key>`; the tenant comes from the key.",
        lifespan=lifespan,
    )
    problems.install(app)
    routers = (
        tenants,
        keys,
        token_routes,
        collections,
        documents,
        search,
        tasks,
        audit_routes,
        dead_letters,
        usage_routes,
        ops,
    )
    for module in routers:
        app.include_router(module.router)
    app.add_middleware(SearchFastPath)  # added first: innermost, inside the two below
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContext, metrics=metrics)  # added last: outermost
    return app
