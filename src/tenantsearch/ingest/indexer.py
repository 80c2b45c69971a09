"""The indexer: consumes write batches from the queue and applies them to the search engine.

A message is acked only after every op in it was applied (or found stale) or failed permanently
and that outcome is recorded on its task. An op the engine reports as retryable puts the whole
message back with exponential backoff and jitter (re-applying the ops that did land is harmless:
they come back ``stale``). A message that cannot be decoded, or that fails past the queue's
delivery limit, is dead-lettered with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from tenantsearch.cache.port import Cache, CacheUnavailable
from tenantsearch.errors import ServiceUnavailable
from tenantsearch.ingest.messages import MalformedMessage, Message, decode
from tenantsearch.queue.port import Delivery, Queue
from tenantsearch.search.collections import ref_of
from tenantsearch.search.port import CollectionRef, SearchBackend
from tenantsearch.search.query import WriteOp, WriteResult
from tenantsearch.search.schema import CollectionSchema
from tenantsearch.search.service import tenant_namespace
from tenantsearch.store.records import Collection
from tenantsearch.store.repository import MetadataStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class IndexerConfig:
    batch_documents: int = 5000
    linger_seconds: float = 0.02
    max_messages: int = 100
    retry_base_seconds: float = 0.5
    retry_max_seconds: float = 60.0
    max_deliveries: int = 5
    task_retention: timedelta = timedelta(days=7)
    failpoint: str | None = None
    """Tests only (``TENANTSEARCH_FAILPOINT``, see docs/operations.md): ``after_apply_before_ack``
    SIGKILLs this process once the engine has applied a batch and before anything is settled."""


FAILPOINTS = frozenset({"after_apply_before_ack"})


def backoff(attempt: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff for the ``attempt``-th retry (1-based)."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))  # noqa: S311 - jitter, not crypto


class Indexer:
    def __init__(
        self,
        queue: Queue,
        backend: SearchBackend,
        store: MetadataStore,
        config: IndexerConfig,
        *,
        cache: Cache | None = None,
    ) -> None:
        self._cache = cache
        if config.failpoint is not None and config.failpoint not in FAILPOINTS:
            raise ValueError(f"unknown failpoint {config.failpoint!r}")
        self._queue = queue
        self._backend = backend
        self._store = store
        self._config = config
        self._stopping = asyncio.Event()
        self._last_prune = datetime.min.replace(tzinfo=UTC)

    def stop(self) -> None:
        """Stop taking new messages; the batch in hand is finished first."""
        self._stopping.set()

    async def run(self) -> None:
        log.info("indexer_started")
        while not self._stopping.is_set():
            try:
                await self.run_once(wait_seconds=0.5)
                await self._maybe_prune()
            except ServiceUnavailable as exc:
                log.warning("indexer_dependency_unavailable", error=exc.detail)
                await self._pause(1.0)
            except Exception:
                # Unacked messages are redelivered (and dead-lettered past the delivery limit).
                log.exception("indexer_batch_failed")
                await self._pause(1.0)
        log.info("indexer_stopped")

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def run_once(self, wait_seconds: float) -> int:
        """Take one batch of messages and process it; returns how many messages it handled."""
        deliveries = await self._queue.receive(self._config.max_messages, wait_seconds)
        if not deliveries:
            return 0
        decoded = await self._decode(deliveries)
        documents = sum(len(m.ops) for _, m in decoded)
        if documents < self._config.batch_documents and self._config.linger_seconds > 0:
            # Linger briefly so a stream of small writes is applied in fewer, larger commits.
            more = await self._queue.receive(self._config.max_messages, self._config.linger_seconds)
            decoded.extend(await self._decode(more))
            deliveries.extend(more)
        await self._process(decoded)
        return len(deliveries)

    async def _decode(self, deliveries: Sequence[Delivery]) -> list[tuple[Delivery, Message]]:
        """Decoded messages; an undecodable one is dead-lettered at once with the reason."""
        out: list[tuple[Delivery, Message]] = []
        for delivery in deliveries:
            try:
                out.append((delivery, decode(delivery.body)))
            except MalformedMessage as exc:
                log.error("message_malformed", error=str(exc))  # noqa: TRY400 - no traceback needed
                await self._queue.dead_letter(delivery, str(exc))
        return out

    async def process(self, deliveries: Sequence[Delivery]) -> None:
        """Apply these deliveries (decode, group by collection, apply, settle each)."""
        await self._process(await self._decode(deliveries))

    async def _process(self, decoded: Sequence[tuple[Delivery, Message]]) -> None:
        by_uid: dict[str, list[tuple[Delivery, Message]]] = defaultdict(list)
        for delivery, message in decoded:
            if message.kind == "documents" and message.uid:
                by_uid[message.uid].append((delivery, message))
            else:
                await self._control(delivery, message)
        for uid, items in by_uid.items():
            await self._apply_collection(uid, items)

    async def _apply_collection(self, uid: str, items: list[tuple[Delivery, Message]]) -> None:
        collection = await self._store.get_collection_by_uid(uid)
        if collection is None:
            for delivery, message in items:
                await self._store.fail_task(message.task_id, "the collection was deleted")
                await self._queue.ack([delivery])
            return
        ops: list[WriteOp] = [op for _, message in items for op in message.ops]
        try:
            results = await self._backend.apply(ref_of(collection), ops)
        except ServiceUnavailable as exc:
            # The engine is unreachable or refuses us: give the batch back at once, with backoff,
            # rather than leaving it leased until the queue's lease expires.
            log.warning("engine_unavailable_retry", collection=collection.name, error=exc.code)
            for delivery, _ in items:
                await self._queue.retry(
                    delivery,
                    backoff(
                        delivery.attempts,
                        self._config.retry_base_seconds,
                        self._config.retry_max_seconds,
                    ),
                )
            return
        if self._config.failpoint == "after_apply_before_ack":
            log.warning("failpoint_kill", failpoint=self._config.failpoint)
            os.kill(os.getpid(), signal.SIGKILL)
        if any(r.outcome == "applied" for r in results) and not await self._invalidate(
            collection.tenant_id
        ):
            # Until the tenant's cached results are invalidated, no task may say "succeeded":
            # retry later (re-applying is harmless, the ops come back stale).
            for delivery, _ in items:
                await self._queue.retry(
                    delivery,
                    backoff(
                        delivery.attempts,
                        self._config.retry_base_seconds,
                        self._config.retry_max_seconds,
                    ),
                )
            return
        cursor = 0
        for delivery, message in items:
            mine = results[cursor : cursor + len(message.ops)]
            cursor += len(message.ops)
            await self._settle(delivery, message, mine, collection)

    async def _settle(
        self,
        delivery: Delivery,
        message: Message,
        results: Sequence[WriteResult],
        collection: Collection,
    ) -> None:
        retryable = [r for r in results if r.outcome == "retryable"]
        if retryable and delivery.attempts >= self._config.max_deliveries:
            reason = f"gave up after {delivery.attempts} attempts: {retryable[0].message}"
            log.error("write_dead_lettered", task_id=message.task_id, reason=reason)
            await self._store.fail_task(message.task_id, reason)
            await self._queue.dead_letter(delivery, reason)
            return
        if retryable:
            delay = backoff(
                delivery.attempts, self._config.retry_base_seconds, self._config.retry_max_seconds
            )
            log.warning(
                "write_retry",
                task_id=message.task_id,
                collection=collection.name,
                documents=len(retryable),
                attempt=delivery.attempts,
                delay=round(delay, 3),
                reason=retryable[0].message,
            )
            await self._queue.retry(delivery, delay)
            return
        permanent = [r for r in results if r.outcome == "permanent"]
        errors: list[dict[str, Any]] = [
            {"id": r.id, "message": r.message or "the engine refused the document"}
            for r in permanent
        ]
        await self._store.record_progress(
            message.task_id,
            indexed=len(results) - len(permanent),
            failed=len(permanent),
            errors=errors,
            finish=True,
        )
        await self._queue.ack([delivery])

    async def _invalidate(self, tenant: str) -> bool:
        """Bump the tenant's cache generation: every cached search result of the tenant is then
        a miss, and nobody else's. False when the cache cannot be reached."""
        if self._cache is None:
            return True
        try:
            await self._cache.bump_generation(tenant_namespace(tenant))
        except CacheUnavailable:
            log.warning("cache_invalidation_failed", invalidated_tenant=tenant)
            return False
        return True

    async def _control(self, delivery: Delivery, message: Message) -> None:
        if message.kind == "collection_delete" and message.uid:
            ref = CollectionRef(
                message.tenant, message.collection or "", message.uid, CollectionSchema({})
            )
            await self._backend.drop_collection(ref)
            log.info("collection_dropped", uid=message.uid, task_id=message.task_id)
        elif message.kind == "tenant_erasure":
            await self._backend.drop_tenant(message.tenant)
            await self._store.delete_tenant_metadata(message.tenant, keep_task=message.task_id)
            log.info("tenant_erased", erased_tenant=message.tenant, task_id=message.task_id)
        else:
            await self._queue.dead_letter(delivery, f"unknown message kind {message.kind!r}")
            return
        await self._invalidate(message.tenant)
        await self._store.record_progress(message.task_id, finish=True)
        await self._queue.ack([delivery])

    async def _maybe_prune(self) -> None:
        now = datetime.now(UTC)
        if now - self._last_prune < timedelta(hours=1):
            return
        self._last_prune = now
        pruned = await self._store.prune_tasks(now - self._config.task_retention)
        expired = await self._store.prune_tenant_tokens(now - timedelta(days=1))
        if pruned or expired:
            log.info("pruned", tasks=pruned, tenant_tokens=expired)
