"""The backlog ledger: which messages a broker-backed queue holds, per tenant, in the metadata DB.

A broker counts a queue's messages but not a tenant's, and not documents or bytes; per-tenant
backpressure needs all three, from every API process alike. So the RabbitMQ adapter records each
message here (one row keyed by queue and message id) before it publishes it and deletes the row
when the message leaves the queue (ack, dead letter); ``totals`` sums the rows. The table
(``queued_messages``) lives in the metadata database and is created by its migrations.

Rows are keyed by message id, so every step is idempotent: a redelivered message acked twice, or a
delete racing a retry, cannot drive a count negative or count a message twice. Where the broker
and the database cannot change together, the adapter orders the two so that a crash leaves the
count *low* for as long as the message stays queued (the row is deleted before the broker ack),
which heals itself, rather than high forever. The remaining over-count windows are documented on
:class:`tenantsearch.queue.rabbitmq.RabbitMqQueue`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantsearch.queue.port import Backlog, QueueUnavailable
from tenantsearch.store.models import QueuedMessageRow

__all__ = ["BacklogLedger"]


class BacklogLedger:
    """The rows of one queue (``queue``) in the ``queued_messages`` table of ``engine``."""

    def __init__(self, engine: AsyncEngine, queue: str) -> None:
        self._engine = engine
        self._queue = queue

    async def add(self, message_id: str, *, tenant: str, documents: int, size: int) -> None:
        row = {
            "queue": self._queue,
            "message_id": message_id,
            "tenant_id": tenant,
            "documents": documents,
            "bytes": size,
            "published_at": datetime.now(UTC),
        }
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(QueuedMessageRow), [row])
        except SQLAlchemyError as exc:
            raise QueueUnavailable("cannot record the message in the backlog ledger") from exc

    async def remove(self, message_ids: Iterable[str]) -> None:
        ids = sorted(set(message_ids))  # sorted: concurrent deletes lock rows in the same order
        if not ids:
            return
        query = delete(QueuedMessageRow).where(
            QueuedMessageRow.queue == self._queue, QueuedMessageRow.message_id.in_(ids)
        )
        try:
            async with self._engine.begin() as conn:
                await conn.execute(query)
        except SQLAlchemyError as exc:
            raise QueueUnavailable("cannot update the backlog ledger") from exc

    async def totals(self, tenant: str | None) -> Backlog:
        query = select(
            func.count(),
            func.coalesce(func.sum(QueuedMessageRow.documents), 0),
            func.coalesce(func.sum(QueuedMessageRow.bytes), 0),
        ).where(QueuedMessageRow.queue == self._queue)
        if tenant is not None:
            query = query.where(QueuedMessageRow.tenant_id == tenant)
        try:
            async with self._engine.connect() as conn:
                messages, documents, size = (await conn.execute(query)).one()
        except SQLAlchemyError as exc:
            raise QueueUnavailable("cannot read the backlog ledger") from exc
        return Backlog(messages=int(messages), documents=int(documents), bytes=int(size))
