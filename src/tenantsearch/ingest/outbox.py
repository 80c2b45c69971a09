"""Publishing a task's queue message so that no task is left without one (a transactional outbox).

The task row and its message (``pending_publishes``) are committed in one transaction; the message
is then published, and its row deleted once the queue has confirmed it. So at every moment a task
either has its message durably queued, or its message waits in the metadata database to be
published, by:

- the process that wrote it, which holds the row's *lease* while it publishes;
- a same-``Idempotency-Key`` retry (:meth:`TaskPublisher.settle`), which waits while the lease is
  held and takes the row over once it ended: it answers 202 only after the queue confirmed;
- the sweeper (:meth:`TaskPublisher.sweep`), which every API process runs: rows whose lease ended
  (their writer died, or the queue refused it) are claimed with a compare-and-set and published
  again, so several sweepers never publish one row at the same moment.

A message may therefore be published more than once (the writer's publish timed out but reached
the broker; a process died after the confirm, before its delete): the indexer is idempotent
(external versions, a task finished once), and an indexer taking a task deletes its row too. A
write answered 503 is not acknowledged, but it may still be applied: it is never marked failed,
so a task's status never says ``failed`` for a write that is applied later.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from tenantsearch import failpoints
from tenantsearch.errors import ServiceUnavailable
from tenantsearch.queue.port import Queue, QueueUnavailable
from tenantsearch.store.records import PendingPublish, Task
from tenantsearch.store.repository import MetadataStore, MetadataUnavailable

log = structlog.get_logger(__name__)

SWEEP_BATCH = 100


@dataclass(frozen=True)
class PublishTimes:
    lease_seconds: float = 30.0
    """How long a pending publish is left to the process that holds it before any other may
    publish it again; longer than the queue's publish timeout, so a slow confirm is waited out."""
    settle_seconds: float = 10.0
    """How long a same-key retry waits for another process's lease before answering 503."""
    sweep_seconds: float = 5.0
    """How often the sweeper looks for pending publishes whose lease ended."""


class EarlierRequestPending(ServiceUnavailable):
    code = "idempotent_request_pending"
    title = "An earlier request with this Idempotency-Key is still being queued"


class TaskPublisher:
    def __init__(
        self,
        store: MetadataStore,
        queue: Queue,
        times: PublishTimes | None = None,
        *,
        failpoint: str | None = None,
    ) -> None:
        self._store = store
        self._queue = queue
        self._times = times or PublishTimes()
        self._failpoint = failpoint

    def _lease(self) -> datetime:
        return _now() + timedelta(seconds=self._times.lease_seconds)

    async def submit(
        self,
        task: Task,
        body_of: Callable[[int], bytes],
        *,
        documents: int = 0,
        reserve_versions: int = 0,
    ) -> None:
        """Record ``task`` with its message ``body_of(first reserved version)`` and publish it.
        Returns once the queue confirmed the message; raises
        :class:`tenantsearch.queue.port.QueueUnavailable` when it did not (the message then stays
        pending: the sweeper or a same-key retry publishes it)."""
        body = await self._store.create_task_to_publish(
            task,
            body_of,
            documents=documents,
            lease_until=self._lease(),
            reserve_versions=reserve_versions,
        )
        if self._failpoint == "after_task_commit":
            failpoints.kill(self._failpoint)
        await self._publish(PendingPublish(task.id, task.tenant_id, documents, body, _now()))

    async def _publish(self, pending: PendingPublish) -> None:
        try:
            await self._queue.publish(
                pending.body, tenant=pending.tenant_id, documents=pending.documents
            )
        except QueueUnavailable:
            # Whether or not it reached the queue (a confirm that timed out may still come), the
            # row may be published again: a retry or the sweeper need not wait out the lease.
            with contextlib.suppress(MetadataUnavailable):
                await self._store.release_publish(pending.task_id)
            raise
        if self._failpoint == "after_publish_before_record":
            failpoints.kill(self._failpoint)
        try:
            await self._store.published(pending.task_id)
        except MetadataUnavailable as exc:
            # Queued all the same: the row's lease ends and it is published once more (the
            # indexer applies a message twice as once), or an indexer starting the task drops it.
            log.warning("publish_not_recorded", task_id=pending.task_id, error=exc.detail)

    async def settle(self, task_id: str) -> None:
        """Return once the task's message is known to be queued: at once when no publish is
        pending; else wait while another process holds its lease, and take it over (publish it
        here) when the lease ends. Raises :class:`EarlierRequestPending` when the lease is still
        held after ``settle_seconds``, ``QueueUnavailable`` when this publish fails."""
        deadline = asyncio.get_running_loop().time() + self._times.settle_seconds
        delay = 0.02
        while True:
            pending = await self._store.pending_publish(task_id)
            if pending is None:
                return
            now = _now()
            if pending.lease_until <= now:
                claimed = await self._store.claim_publish(
                    task_id, now=now, lease_until=self._lease()
                )
                if claimed is not None:
                    log.info("publish_taken_over", task_id=task_id)
                    await self._publish(claimed)
                    return
                continue  # another process claimed it just now: wait for its outcome
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise EarlierRequestPending(
                    "an earlier request with this Idempotency-Key is still being queued; "
                    "send it again shortly"
                )
            wait = min(delay, left, (pending.lease_until - now).total_seconds())
            await asyncio.sleep(max(wait, 0.005))
            delay = min(delay * 2, 0.5)

    async def sweep(self) -> int:
        """Publish every pending message whose lease ended; returns how many were published.
        Stops at the first publish the queue refuses (the rows stay for the next sweep)."""
        sent = 0
        while True:
            now = _now()
            expired = await self._store.expired_publishes(now, limit=SWEEP_BATCH)
            for task_id in expired:
                claimed = await self._store.claim_publish(
                    task_id, now=now, lease_until=self._lease()
                )
                if claimed is None:
                    continue  # another sweeper (or a retry) has it
                await self._publish(claimed)
                sent += 1
                log.info("publish_swept", task_id=task_id)
            if len(expired) < SWEEP_BATCH:
                return sent

    async def run_sweeper(self) -> None:
        """Sweep every ``sweep_seconds`` until cancelled; an unavailable queue or database is
        waited out (the next round tries again)."""
        while True:
            await asyncio.sleep(self._times.sweep_seconds)
            try:
                await self.sweep()
            except ServiceUnavailable as exc:
                log.info("publish_sweep_deferred", error=exc.detail)
            except Exception:  # the sweeper must outlive one bad round; logged with its traceback
                log.exception("publish_sweep_failed")


def _now() -> datetime:
    return datetime.now(UTC)
