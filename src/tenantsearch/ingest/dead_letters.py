"""Dead letters: writes the indexer gave up on, for an operator to inspect, replay or purge.

Replaying publishes the message again and reopens its task, so the task ends with the outcome of
the new attempt. The same service backs the platform admin API and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import structlog

from tenantsearch.errors import NotFound
from tenantsearch.ingest.messages import MalformedMessage, decode
from tenantsearch.queue.port import DeadLetter, Queue
from tenantsearch.store.repository import MetadataStore

log = structlog.get_logger(__name__)

MAX_LISTED = 1000


@dataclass(frozen=True)
class DeadLetterSummary:
    id: str
    tenant: str
    reason: str
    attempts: int
    dead_at: datetime
    bytes: int
    kind: str | None
    task_id: str | None
    collection: str | None
    document_ids: list[str]


def summarize(letter: DeadLetter, max_ids: int = 20) -> DeadLetterSummary:
    try:
        message = decode(letter.body)
    except MalformedMessage:
        return DeadLetterSummary(
            letter.id,
            letter.tenant,
            letter.reason,
            letter.attempts,
            letter.dead_at,
            len(letter.body),
            None,
            None,
            None,
            [],
        )
    return DeadLetterSummary(
        id=letter.id,
        tenant=letter.tenant,
        reason=letter.reason,
        attempts=letter.attempts,
        dead_at=letter.dead_at,
        bytes=len(letter.body),
        kind=message.kind,
        task_id=message.task_id,
        collection=message.collection,
        document_ids=[op.id for op in message.ops[:max_ids]],
    )


class DeadLetterService:
    def __init__(self, queue: Queue, store: MetadataStore) -> None:
        self._queue = queue
        self._store = store

    async def list(self, *, tenant: str | None = None, limit: int = 100) -> list[DeadLetterSummary]:
        letters = await self._queue.list_dead_letters(
            min(limit, MAX_LISTED) if tenant is None else MAX_LISTED
        )
        summaries = [summarize(d) for d in letters if tenant is None or d.tenant == tenant]
        return summaries[:limit]

    async def get(self, letter_id: str) -> DeadLetterSummary:
        for letter in await self._queue.list_dead_letters(MAX_LISTED):
            if letter.id == letter_id:
                return summarize(letter, max_ids=10_000)
        raise NotFound(f"dead letter {letter_id!r} not found", code="dead_letter_not_found")

    async def replay(self, letter_id: str) -> DeadLetterSummary:
        summary = await self.get(letter_id)
        if not await self._queue.replay_dead_letter(letter_id):
            raise NotFound(f"dead letter {letter_id!r} not found", code="dead_letter_not_found")
        if summary.task_id is not None:
            await self._store.reopen_task(summary.task_id, documents=len(summary.document_ids))
        log.info("dead_letter_replayed", dead_letter=letter_id, task_id=summary.task_id)
        return summary

    async def purge(self, tenant: str | None = None) -> int:
        purged = await self._queue.purge_dead_letters(tenant)
        log.info("dead_letters_purged", count=purged, purged_tenant=tenant or "*")
        return purged
