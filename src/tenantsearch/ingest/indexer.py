"""The indexer: consumes write batches from the queue and applies them to the search engine.

One indexer runs ``concurrency`` *lanes*; each lane receives a batch of messages, applies it
(one bulk per collection) and settles it, independently of the others, so the engine always has
a bulk to work on while another lane receives or settles. Lanes need no ordering between them:
every write carries the version the API reserved for it and the engine applies an op only when
its version is higher than the stored one (deletes leave versioned tombstones), so two lanes (or
two processes) applying writes of one document in either order end with the newest.

How a message ends:

- every op applied, stale or refused for good (``permanent``): its task records the outcome and
  finishes, and the message is acked (a collection's tasks finish in one transaction, and its
  acks go in one call);
- undecodable: dead-lettered at once with the reason;
- ops the engine answers ``retryable`` (429, a write block, a shard not available) while the
  engine itself answers: the lane keeps the message and applies those ops again with capped
  exponential backoff, for up to ``retry_budget_seconds`` from the first such answer; past that
  the message is dead-lettered and its task failed with the reason;
- a dependency unavailable (the engine unreachable or unhealthy, the metadata database, the shared
  cache): the lane keeps what it holds and tries again with capped backoff, logging each wait,
  until it works or the indexer stops (then it gives the messages back). No delivery attempt and
  no retry budget is spent on an outage, however long;
- the queue itself unavailable: what the lane holds goes back to it (the broker requeues the
  deliveries of a closed channel anyway), and the lane receives again a second later;
- anything else that fails (a bug, an answer the engine should never give): the batch's messages
  are tried one by one, so the others land; the failing one goes back to the queue with backoff,
  which counts a delivery, and once it has used ``max_deliveries`` it is dead-lettered with the
  error. A message that kills the process is counted by the queue alone and dead-lettered past
  the queue's delivery limit.

A task says ``succeeded`` only after the engine made its documents searchable (``apply``
refreshes before it returns) and the tenant's cached results were invalidated.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from tenantsearch import failpoints
from tenantsearch.cache.port import Cache, CacheUnavailable
from tenantsearch.errors import ServiceUnavailable
from tenantsearch.ingest.messages import MalformedMessage, Message, decode
from tenantsearch.queue.port import Delivery, Queue, QueueUnavailable
from tenantsearch.search.collections import ref_of
from tenantsearch.search.port import CollectionRef, SearchBackend
from tenantsearch.search.query import WriteResult
from tenantsearch.search.schema import CollectionSchema
from tenantsearch.search.service import tenant_namespace
from tenantsearch.store.records import TaskOutcome
from tenantsearch.store.repository import MetadataStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class IndexerConfig:
    batch_documents: int = 5000
    linger_seconds: float = 0.02
    max_messages: int = 100
    concurrency: int = 2
    """Lanes of one indexer: batches in flight at once (``TENANTSEARCH_INDEXER_CONCURRENCY``)."""
    retry_base_seconds: float = 0.5
    retry_max_seconds: float = 10.0
    """Cap of one wait, for retryable ops and for an unavailable dependency alike."""
    retry_budget_seconds: float = 120.0
    """How long retryable ops of a message are tried again while the engine answers
    (``TENANTSEARCH_INDEXER_RETRY_BUDGET_SECONDS``); then the message is dead-lettered."""
    max_deliveries: int = 5
    task_retention: timedelta = timedelta(days=7)
    failpoint: str | None = None
    """Tests only (``TENANTSEARCH_FAILPOINT``, see docs/operations.md): ``after_apply_before_ack``
    SIGKILLs this process once the engine has applied a batch and before anything is settled."""


FAILPOINTS = failpoints.INDEXER_POINTS

HORIZON_REFRESH_SECONDS = 60.0
"""How long an indexer keeps the tombstone horizon it read before reading it again."""
PURGE_MARGIN = timedelta(minutes=10)
"""Tombstones are purged through the horizon of ``PURGE_MARGIN`` earlier than the one puts are
refused below: every indexer refuses puts below the purged tombstones' versions by then, even
with a horizon read ``HORIZON_REFRESH_SECONDS`` ago and a bulk in flight."""

OUTAGES: tuple[type[Exception], ...] = (ServiceUnavailable, OSError)
"""What an unavailable dependency raises: our adapters' ServiceUnavailable, and a connection
error a driver lets through untranslated (asyncpg's refused connection is a plain OSError).
QueueUnavailable is handled apart: the queue itself takes back what it handed out."""


def backoff(attempt: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff for the ``attempt``-th retry (1-based)."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))  # noqa: S311 - jitter, not crypto


def capped_backoff(attempt: int, base: float, cap: float) -> float:
    """The ``attempt``-th wait (1-based) of a lane holding its messages: exponential up to
    ``cap``, with jitter in its upper half (so waits never collapse to ~0 in an outage)."""
    ceiling = min(cap, base * 2 ** (min(attempt, 32) - 1))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not crypto


class _Stopped(Exception):
    """The indexer was stopped while a lane waited; what it holds goes back to the queue."""


@dataclass
class _Work:
    """One decoded message in a lane's hands, and what the engine said about its ops so far."""

    delivery: Delivery
    message: Message
    results: list[WriteResult | None] = field(default_factory=list)
    recorded: bool = False  # its task holds the outcome

    def __post_init__(self) -> None:
        if not self.results:
            self.results = [None] * len(self.message.ops)

    def todo(self) -> list[int]:
        """Ops not applied yet, or answered ``retryable``."""
        return [i for i, r in enumerate(self.results) if r is None or r.outcome == "retryable"]

    def retryable(self) -> list[WriteResult]:
        return [r for r in self.results if r is not None and r.outcome == "retryable"]

    def outcome(self) -> TaskOutcome:
        """The task's counts and errors, once every op has a result."""
        results = [r for r in self.results if r is not None]
        permanent = [r for r in results if r.outcome == "permanent"]
        return TaskOutcome(
            self.message.task_id,
            indexed=len(results) - len(permanent),
            failed=len(permanent),
            errors=[
                {"id": r.id, "message": r.message or "the engine refused the document"}
                for r in permanent
            ],
        )


@dataclass
class _Group:
    """A lane's messages of one collection, not settled yet."""

    uid: str
    pending: list[_Work]
    invalidated: bool = True  # False: ops were applied and the tenant's cache not bumped yet
    refused_since: float | None = None  # monotonic time of the first "retryable" answer


class _Batch:
    """The deliveries a lane received and has not settled yet."""

    def __init__(self) -> None:
        self.unsettled: dict[str, Delivery] = {}
        self.messages: dict[str, Message] = {}

    def settled(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self.unsettled.pop(delivery.tag, None)


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
        if config.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._queue = queue
        self._backend = backend
        self._store = store
        self._config = config
        self._stopping = asyncio.Event()
        # While run() runs, batches held at a stop are given back once every lane has ended
        # (so another lane does not take them again first).
        self._deferred: list[Delivery] | None = None
        self._last_prune = datetime.min.replace(tzinfo=UTC)
        self._documents_per_message = 1.0  # in the last batch: sizes the next receive
        self._horizon = 0  # puts at or below this version are refused (see _refusal_horizon)
        self._horizon_read_at = -math.inf

    def stop(self) -> None:
        """Stop taking new messages; batches in hand are finished first (or, while a dependency
        is unavailable, given back to the queue)."""
        self._stopping.set()

    async def run(self) -> None:
        log.info("indexer_started", concurrency=self._config.concurrency)
        lanes = [
            asyncio.create_task(self._lane(n), name=f"indexer-lane-{n}")
            for n in range(self._config.concurrency)
        ]
        self._deferred = []
        try:
            await asyncio.gather(*lanes)
        finally:
            for lane in lanes:
                lane.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            deferred, self._deferred = self._deferred, None
            await self._release(deferred)
        log.info("indexer_stopped")

    async def _lane(self, lane: int) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once(wait_seconds=0.5)
                if lane == 0:  # one lane prunes: the others need not wait for it, nor repeat it
                    await self._maybe_prune()
            except ServiceUnavailable as exc:
                log.warning("indexer_dependency_unavailable", lane=lane, error=exc.detail)
                await self._pause(1.0)
            except Exception:
                log.exception("indexer_batch_failed", lane=lane)
                await self._pause(1.0)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def run_once(self, wait_seconds: float) -> int:
        """Take one batch of messages and process it; returns how many messages it handled."""
        want = self._config.batch_documents
        deliveries = await self._queue.receive(self._receive_size(want), wait_seconds)
        if not deliveries:
            return 0
        batch = _Batch()
        decoded = await self._decode(deliveries, batch)
        documents = sum(len(m.ops) for _, m in decoded)
        if documents < want and self._config.linger_seconds > 0:
            # Linger briefly so a stream of small writes is applied in fewer, larger commits.
            try:
                more = await self._queue.receive(
                    self._receive_size(want - documents), self._config.linger_seconds
                )
            except QueueUnavailable:
                more = []  # what is in hand is processed all the same
            decoded.extend(await self._decode(more, batch))
            deliveries.extend(more)
            documents = sum(len(m.ops) for _, m in decoded)
        if decoded:
            self._documents_per_message = max(1.0, documents / len(decoded))
        await self._process_batch(decoded, batch)
        return len(deliveries)

    def _receive_size(self, documents: int) -> int:
        """Messages to ask for to get about ``documents`` documents, judging by the last batch.

        A lane takes about ``batch_documents`` and leaves the rest of a backlog to the other
        lanes: taking everything waiting (up to ``max_messages`` messages of up to 10,000
        documents each) would make one huge bulk in one lane while the others idle."""
        wanted = math.ceil(documents / self._documents_per_message)
        return max(1, min(self._config.max_messages, wanted))

    async def _decode(
        self, deliveries: Sequence[Delivery], batch: _Batch
    ) -> list[tuple[Delivery, Message]]:
        """Decoded messages; an undecodable one is dead-lettered at once with the reason."""
        out: list[tuple[Delivery, Message]] = []
        for delivery in deliveries:
            try:
                message = decode(delivery.body)
            except MalformedMessage as exc:
                log.error("message_malformed", error=str(exc))  # noqa: TRY400 - no traceback needed
                await self._queue.dead_letter(delivery, str(exc))
                continue
            batch.unsettled[delivery.tag] = delivery
            batch.messages[delivery.tag] = message
            out.append((delivery, message))
        return out

    async def process(self, deliveries: Sequence[Delivery]) -> None:
        """Apply these deliveries (decode, group by collection, apply, settle)."""
        batch = _Batch()
        await self._process_batch(await self._decode(deliveries, batch), batch)

    async def _process_batch(
        self, decoded: Sequence[tuple[Delivery, Message]], batch: _Batch
    ) -> None:
        await self._mark_started(decoded)
        try:
            await self._process_isolating(decoded, batch)
        except _Stopped:
            await self._give_back(batch)
        except QueueUnavailable:
            # The queue itself failed. Give back what is not settled (a no-op for deliveries of a
            # channel that closed: the broker has requeued them already).
            held = list(batch.unsettled.values())
            batch.settled(held)
            await self._release(held)
            raise

    async def _mark_started(self, decoded: Sequence[tuple[Delivery, Message]]) -> None:
        """Their tasks say ``processing`` from now on. Only a status shown to clients: while the
        database is unavailable it is skipped (the lane waits for the database when it finishes
        the tasks anyway)."""
        if not decoded:
            return
        try:
            await self._store.start_tasks([message.task_id for _, message in decoded])
        except OUTAGES as exc:
            log.info("task_start_not_recorded", error=repr(exc))

    async def _process_isolating(
        self, decoded: Sequence[tuple[Delivery, Message]], batch: _Batch
    ) -> None:
        try:
            await self._process(decoded, batch)
        except (_Stopped, QueueUnavailable):
            raise
        except Exception as exc:  # noqa: BLE001 - settled (and logged) in _failed
            left = [(batch.unsettled[t], batch.messages[t]) for t in list(batch.unsettled)]
            if len(left) == 1:
                await self._failed(*left[0], exc, batch)
                return
            # One of them may be what breaks: try each alone, so the others land.
            log.warning("indexer_batch_failed_retrying_alone", messages=len(left), error=repr(exc))
            for delivery, message in left:
                try:
                    await self._process([(delivery, message)], batch)
                except (_Stopped, QueueUnavailable):
                    raise
                except Exception as alone:  # noqa: BLE001 - settled below, logged there
                    await self._failed(delivery, message, alone, batch)

    async def _failed(
        self, delivery: Delivery, message: Message, exc: Exception, batch: _Batch
    ) -> None:
        """Processing one message raised: give it back with backoff (a delivery is spent), or
        dead-letter it once it has used ``max_deliveries``."""
        if delivery.tag not in batch.unsettled:
            return
        log.error(
            "write_failed",
            task_id=message.task_id,
            attempt=delivery.attempts,
            error=repr(exc),
            exc_info=exc,
        )
        if delivery.attempts >= self._config.max_deliveries:
            reason = f"failed {delivery.attempts} times: {type(exc).__name__}: {exc}"
            with contextlib.suppress(*OUTAGES):
                await self._store.fail_task(message.task_id, reason)
            await self._queue.dead_letter(delivery, reason)
        else:
            delay = backoff(
                delivery.attempts, self._config.retry_base_seconds, self._config.retry_max_seconds
            )
            await self._queue.retry(delivery, delay)
        batch.settled([delivery])

    async def _give_back(self, batch: _Batch) -> None:
        """Stopped while holding messages: the queue delivers them again (to another indexer,
        or to this one when it comes back)."""
        held = list(batch.unsettled.values())
        batch.settled(held)
        if self._deferred is not None:
            self._deferred.extend(held)
        else:
            await self._release(held)

    async def _release(self, held: Sequence[Delivery]) -> None:
        if held:
            log.info("indexer_giving_back", messages=len(held))
        for delivery in held:
            with contextlib.suppress(QueueUnavailable):
                await self._queue.retry(delivery, 0)

    async def _process(self, decoded: Sequence[tuple[Delivery, Message]], batch: _Batch) -> None:
        by_uid: dict[str, list[_Work]] = defaultdict(list)
        for delivery, message in decoded:
            if delivery.tag not in batch.unsettled:
                continue
            if message.kind == "documents" and message.uid:
                by_uid[message.uid].append(_Work(delivery, message))
            else:
                await self._holding(functools.partial(self._control, delivery, message, batch))
        await self._apply_groups([_Group(uid, items) for uid, items in by_uid.items()], batch)

    async def _holding(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` until it does not raise ServiceUnavailable (the queue's excepted): while
        a dependency is unavailable, wait with capped backoff, logging each wait."""
        waits = 0
        while True:
            try:
                await step()
            except QueueUnavailable:
                raise
            except OUTAGES as exc:
                waits += 1
                await self._wait_for_dependency(exc, waits, held=1)
            else:
                return

    async def _wait_for_dependency(self, exc: Exception, waits: int, held: int) -> None:
        delay = capped_backoff(
            waits, self._config.retry_base_seconds, self._config.retry_max_seconds
        )
        log.warning(
            "indexer_waiting_for_dependency",
            dependency=exc.code if isinstance(exc, ServiceUnavailable) else "connection",
            error=exc.detail if isinstance(exc, ServiceUnavailable) else repr(exc),
            wait=waits,
            delay=round(delay, 3),
            messages_held=held,
        )
        await self._pause(delay)
        if self._stopping.is_set():
            raise _Stopped

    async def _apply_groups(self, groups: list[_Group], batch: _Batch) -> None:
        """Apply each collection's messages until every one is settled: a pass tries every
        collection once; what is left was turned away (retryable ops) or met an outage, and is
        tried again after a wait (see the module docstring). One collection held back never
        keeps the others of the batch waiting."""
        outages = 0
        refusals = 0
        while True:
            outage: Exception | None = None
            for group in groups:
                try:
                    await self._attempt(group, batch)
                except QueueUnavailable:
                    raise
                except OUTAGES as exc:
                    outage = exc
            groups = [g for g in groups if g.pending]
            if not groups:
                return
            if outage is None:
                # The engine turned some ops away. If it is down as a whole, that is an outage.
                try:
                    await self._backend.ping()
                except OUTAGES as exc:
                    outage = exc
            held = sum(len(g.pending) for g in groups)
            if outage is not None:
                for group in groups:
                    group.refused_since = None  # the budget counts refusals of a working engine
                outages += 1
                await self._wait_for_dependency(outage, outages, held)
                continue
            outages = 0
            now = time.monotonic()
            for group in groups:
                if group.refused_since is None:
                    group.refused_since = now
            for group in groups:
                assert group.refused_since is not None
                if now - group.refused_since >= self._config.retry_budget_seconds:
                    await self._give_up(group, now - group.refused_since, batch)
            groups = [g for g in groups if g.pending]
            if not groups:
                return
            refusals += 1
            budget_left = min(
                self._config.retry_budget_seconds - (now - (g.refused_since or now)) for g in groups
            )
            delay = min(
                capped_backoff(
                    refusals, self._config.retry_base_seconds, self._config.retry_max_seconds
                ),
                max(0.0, budget_left) + 0.01,
            )
            first = next(r for g in groups for w in g.pending for r in w.retryable())
            log.warning(
                "write_retry",
                task_ids=[w.message.task_id for g in groups for w in g.pending][:10],
                messages_held=held,
                documents=sum(len(w.todo()) for g in groups for w in g.pending),
                wait=refusals,
                delay=round(delay, 3),
                reason=first.message,
            )
            await self._pause(delay)
            if self._stopping.is_set():
                raise _Stopped

    async def _attempt(self, group: _Group, batch: _Batch) -> None:
        """One try at a collection's pending messages: apply the ops not done yet, then settle
        the messages that are complete. Raises ServiceUnavailable on an outage (what was done
        stays done: applied ops are not sent again, a recorded task not recorded twice)."""
        collection = await self._store.get_collection_by_uid(group.uid)
        if collection is None:
            for work in group.pending:
                if not work.recorded:
                    await self._store.fail_task(work.message.task_id, "the collection was deleted")
                    work.recorded = True
            await self._ack([w.delivery for w in group.pending], batch)
            group.pending = []
            return
        horizon = await self._refusal_horizon()
        for work in group.pending:
            for i in work.todo():
                op = work.message.ops[i]
                if op.document is not None and op.version <= horizon:
                    work.results[i] = WriteResult(op.id, "permanent", self._too_old)
        sending = [(work, i) for work in group.pending for i in work.todo()]
        if sending:
            results = await self._backend.apply(
                ref_of(collection), [work.message.ops[i] for work, i in sending]
            )
            if self._config.failpoint == "after_apply_before_ack":
                failpoints.kill(self._config.failpoint)
            for (work, i), result in zip(sending, results, strict=True):
                work.results[i] = result
            if any(r.outcome == "applied" for r in results):
                group.invalidated = False
        if not group.invalidated:
            # Until the tenant's cached results are invalidated, no task may say "succeeded".
            await self._invalidate(collection.tenant_id)
            group.invalidated = True
        done = [work for work in group.pending if not work.todo()]
        unrecorded = [work for work in done if not work.recorded]
        if unrecorded:
            # One transaction for the whole group, whatever the number of messages in it.
            await self._store.finish_tasks([work.outcome() for work in unrecorded])
            for work in unrecorded:
                work.recorded = True
        await self._ack([w.delivery for w in done], batch)
        group.pending = [work for work in group.pending if work.todo()]

    async def _give_up(self, group: _Group, refused_for: float, batch: _Batch) -> None:
        """The retry budget is spent: dead-letter the collection's pending messages."""
        for work in group.pending:
            first = next(iter(work.retryable()), None)
            reason = (
                f"gave up after {refused_for:.0f}s of retries: "
                f"{first.message if first is not None else 'retryable'}"
            )
            log.error("write_dead_lettered", task_id=work.message.task_id, reason=reason)
            await self._holding(
                functools.partial(self._store.fail_task, work.message.task_id, reason)
            )
            await self._queue.dead_letter(work.delivery, reason)
            batch.settled([work.delivery])
        group.pending = []

    async def _ack(self, deliveries: Sequence[Delivery], batch: _Batch) -> None:
        if deliveries:
            await self._queue.ack(deliveries)
            batch.settled(deliveries)

    async def _invalidate(self, tenant: str) -> None:
        """Bump the tenant's cache generation: every cached search result of the tenant is then
        a miss, and nobody else's. Raises CacheUnavailable when the cache cannot be reached."""
        if self._cache is None:
            return
        try:
            await self._cache.bump_generation(tenant_namespace(tenant))
        except CacheUnavailable:
            log.warning("cache_invalidation_failed", invalidated_tenant=tenant)
            raise

    async def _control(self, delivery: Delivery, message: Message, batch: _Batch) -> None:
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
            batch.settled([delivery])
            return
        await self._invalidate(message.tenant)
        await self._store.finish_tasks([TaskOutcome(message.task_id)])
        await self._ack([delivery], batch)

    @property
    def _too_old(self) -> str:
        days = self._config.task_retention / timedelta(days=1)
        return (
            f"accepted more than {days:g} days ago (older than the tombstone horizon): the "
            "document may have been deleted since; send it again if it is still wanted"
        )

    async def _refusal_horizon(self) -> int:
        """The version at or below which puts are refused: that of the writes accepted more than
        the retention ago (``MetadataStore.tombstone_horizon``). Their document may have been
        deleted since, and that delete's tombstone purged, so nothing would make them stale.
        Read again every ``HORIZON_REFRESH_SECONDS``."""
        now = time.monotonic()
        if now - self._horizon_read_at >= HORIZON_REFRESH_SECONDS:
            at = datetime.now(UTC) - self._config.task_retention
            self._horizon = await self._store.tombstone_horizon(at)
            self._horizon_read_at = now
        return self._horizon

    async def _maybe_prune(self) -> None:
        now = datetime.now(UTC)
        if now - self._last_prune < timedelta(hours=1):
            return
        self._last_prune = now
        await self.prune(now)

    async def prune(self, now: datetime) -> None:
        """Hourly upkeep: tasks past their retention, expired tenant tokens, and delete
        tombstones older than the purge horizon (with a checkpoint of the version counter that
        later horizons are made of; docs/architecture.md)."""
        pruned = await self._store.prune_tasks(now - self._config.task_retention)
        expired = await self._store.prune_tenant_tokens(now - timedelta(days=1))
        purge_at = now - self._config.task_retention - PURGE_MARGIN
        through = await self._store.checkpoint_versions(now, keep_after=purge_at)
        self._horizon_read_at = -math.inf  # the refusal horizon moved too: read it again
        tombstones = 0
        if through > 0:
            refs = [ref_of(c) for c in await self._store.all_collections()]
            tombstones = await self._backend.purge_tombstones(refs, through)
        if pruned or expired or tombstones:
            log.info(
                "pruned",
                tasks=pruned,
                tenant_tokens=expired,
                tombstones=tombstones,
                tombstone_horizon=through,
            )
