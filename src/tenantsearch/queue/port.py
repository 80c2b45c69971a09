"""The Queue port: a durable queue of write batches between the API and the indexer.

Contract (tested once for every adapter in ``tests/contract/test_queue.py``):

- ``publish`` returns only once the queue has durably accepted the message (fsync'd / confirmed);
  if it cannot, it raises :class:`QueueUnavailable` and the message must be taken as not accepted.
  (A publish that raises or is cancelled may still have been accepted: delivery is at least once.)
- A published message is delivered by ``receive`` at least once, in publish order among the
  messages that are available, until it is acked or dead-lettered. Bodies come back byte for byte.
- ``receive(n, wait)`` returns between 1 and ``n`` deliveries (``n >= 1``) as soon as any message
  is available, waiting at most ``wait`` seconds for the first one; ``[]`` when none came in time.
- A received message is invisible to other receivers until it is acked, retried, or its consumer
  goes away (``close``, or the adapter's lease or connection ends); then it is delivered again
  with ``attempts`` one higher. ``attempts`` is 1 on the first delivery and counts every delivery.
- ``retry(d, delay)`` makes the message available again after ``delay`` seconds (0: at once).
- A message is delivered at most ``max_deliveries`` times: when it would be delivered once more it
  moves to the dead letters instead, with a reason starting ``"delivery limit exceeded"``. A
  message passed to ``dead_letter`` moves there with the given reason. Dead letters are no longer
  delivered; they keep tenant, body and attempts; they can be listed (oldest first), replayed
  (published again with attempts reset; ``False`` for an unknown id) or purged (returns the count).
- ``backlog(tenant)`` counts messages, documents and body bytes not yet acked or dead-lettered
  (waiting, delayed and in-flight alike), for one tenant or for all.
- ``ack``, ``retry`` and ``dead_letter`` of an unknown delivery, an already settled one, or a stale
  one (its message was delivered again since) are no-ops: they never raise for that reason and
  never affect the newer delivery.
- Failures of the underlying store or broker raise :class:`QueueUnavailable`, never a driver
  error. ``start`` before first use; after ``close`` every call raises ``QueueUnavailable``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from tenantsearch.errors import ServiceUnavailable


class QueueUnavailable(ServiceUnavailable):
    code = "queue_unavailable"
    title = "The ingestion queue is unavailable"


@dataclass(frozen=True)
class Delivery:
    tag: str
    body: bytes
    tenant: str
    attempts: int


@dataclass(frozen=True)
class Backlog:
    messages: int
    documents: int
    bytes: int


@dataclass(frozen=True)
class DeadLetter:
    id: str
    tenant: str
    body: bytes
    reason: str
    attempts: int
    dead_at: datetime


class Queue(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def publish(self, body: bytes, *, tenant: str, documents: int) -> None: ...

    async def receive(self, max_messages: int, wait_seconds: float) -> list[Delivery]:
        """Up to ``max_messages`` deliveries; waits at most ``wait_seconds`` for the first one."""
        ...

    async def ack(self, deliveries: Sequence[Delivery]) -> None: ...

    async def retry(self, delivery: Delivery, delay_seconds: float) -> None: ...

    async def dead_letter(self, delivery: Delivery, reason: str) -> None: ...

    async def backlog(self, tenant: str | None = None) -> Backlog: ...

    async def list_dead_letters(self, limit: int = 100) -> list[DeadLetter]: ...

    async def replay_dead_letter(self, dead_letter_id: str) -> bool: ...

    async def purge_dead_letters(self, tenant: str | None = None) -> int: ...
