"""The production Queue adapter: a RabbitMQ quorum queue, through aio-pika.

Topology (declared by ``start``, idempotently, by every client; ``Q`` is the queue name):

- ``Q``: a durable quorum queue with ``x-delivery-limit`` and at-least-once dead-lettering to
  ``Q.dlx`` (``x-dead-letter-strategy: at-least-once``, which requires ``x-overflow:
  reject-publish``). Messages are persistent.
- ``Q.dlx``: a fanout exchange; ``Q.dead``: the durable quorum queue of dead letters behind it.
- ``Q.delay.<ms>ms``: created on first use, one per delay step (:data:`DELAY_STEPS`): a quorum
  queue with ``x-message-ttl`` that nobody consumes; an expired message is dead-lettered back to
  ``Q`` (at least once). Delayed retries therefore survive a broker restart like everything else.
  A queue-wide TTL (not a per-message one) keeps expiry in FIFO order.

How the port's contract maps onto the broker:

- ``publish``: a confirmed (``publisher_confirms``), ``mandatory`` publish to ``Q`` through the
  default exchange. It returns once the broker has confirmed the message; a nack, a return
  (unroutable: the queue is gone) or no answer within ``publish_timeout`` raises
  :class:`QueueUnavailable`, so the API answers 503, never 202.
- ``receive(n, wait)``: starts a consumer with a prefetch of ``min(n, prefetch)``, takes what
  arrives (waiting up to ``wait`` for the first message, then briefly for the rest of the batch),
  and cancels the consumer. The prefetch bounds what the broker sends, so a receive never holds
  more than it returns, and between receives this client holds no messages it has not handed out:
  another client's receive sees everything not in flight.
- ``attempts`` = ``ts-prior-deliveries`` (a header this adapter maintains across delayed retries,
  which re-enter ``Q`` as new messages) + the broker's ``x-delivery-count`` (returns within the
  current stay in ``Q``: nacks and consumers that went away) + 1.
- ``retry(d, 0)``: ``nack(requeue=True)``; a quorum queue serves returned messages first, so the
  message keeps its place. ``retry(d, delay)``: the delay is rounded *up* to the next step
  (capped at the largest), a copy goes to that step's queue (confirmed, ``ts-prior-deliveries``
  = attempts so far), then the delivery is acked.
- Delivery limit: a retry of a delivery that has used the last attempt dead-letters it instead,
  with reason ``"delivery limit exceeded (N deliveries)"``; a message arriving past its budget
  (after delayed retries) is dead-lettered the same way before it is handed out. Deliveries the
  adapter never sees settled, because their consumer went away, are counted by the broker: past
  ``x-delivery-limit`` it dead-letters them itself with reason ``delivery_limit`` in ``x-death``,
  and they are listed with the same reason.
- ``dead_letter(d, reason)``: a confirmed copy to ``Q.dlx`` carrying the reason, the attempts
  and the time in headers, then an ack.
- Dead letters are browsed with ``basic.get`` on a private channel and given back by closing it
  (the queue keeps their order): ``list`` reads the first ``limit``; ``replay`` and a per-tenant
  ``purge`` scan until they find what they look for, which costs O(dead letters). Two browsers at
  once each see only the part the other does not hold, so admin operations of one client are
  serialized; across processes a concurrent browse can hide dead letters from a listing (rare:
  these are operator actions). The id of a dead letter is its AMQP ``message_id``.
- ``backlog``: RabbitMQ counts neither tenants, documents nor bytes, nor (over AMQP) in-flight
  messages, so every message is recorded in a ledger in the metadata database
  (:mod:`tenantsearch.queue.ledger`): a row is added before the publish and removed before the
  ack / dead letter, so a crash leaves the count low while the message is still queued (it heals
  when the message is settled) rather than high forever. Known over-counts: a process killed
  between adding the row and the confirm (or its clean-up), and a message the *broker*
  dead-letters because its consumer died (the row is removed when a listing of dead letters sees
  it; a clean ``close`` removes it up front).
- Every aio-pika / aiormq error, and every broker call that takes longer than its timeout (the
  robust connection waits for a reconnect otherwise), becomes :class:`QueueUnavailable`.
  Deliveries received on a channel that has since closed are stale: the broker has requeued them,
  and ``ack`` / ``retry`` / ``dead_letter`` of them are no-ops, as the port requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq.exceptions
import pamqp.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantsearch import failpoints
from tenantsearch.queue.ledger import BacklogLedger
from tenantsearch.queue.port import Backlog, DeadLetter, Delivery, QueueUnavailable

__all__ = ["DELAY_STEPS", "RabbitMqQueue"]

_log = logging.getLogger(__name__)

DELAY_STEPS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
)  # fmt: skip
"""Seconds a delayed retry waits: a delay is rounded up to the next step (the largest caps it)."""

IMMEDIATE_RETRY_SECONDS = 0.05
"""A retry delay below this requeues at once (``nack``) instead of going through a delay queue."""

_MIN_FIRST_WAIT = 0.05  # even receive(n, 0) gives the broker a moment to push what it has
_BATCH_GAP = 0.01  # after the first message, wait this long for each further one of the batch
_RECONNECT_INTERVAL = 1.0

_H_TENANT = "ts-tenant"
_H_DOCUMENTS = "ts-documents"
_H_PRIOR = "ts-prior-deliveries"
_H_ORIGIN = "ts-message-id"
_H_REASON = "ts-dead-reason"
_H_DEAD_AT = "ts-dead-at-ms"
_H_DEAD_ATTEMPTS = "ts-dead-attempts"

_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    pamqp.exceptions.PAMQPException,
    OSError,  # ConnectionError included
)
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *_DRIVER_ERRORS)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _delay_step(delay_seconds: float) -> float:
    for step in DELAY_STEPS:
        if delay_seconds <= step:
            return step
    return DELAY_STEPS[-1]


def _limit_reason(deliveries: int) -> str:
    return f"delivery limit exceeded ({deliveries} deliveries)"


@dataclass(frozen=True)
class _InFlight:
    """A message handed out by ``receive`` and not yet settled through this client."""

    message: AbstractIncomingMessage
    message_id: str
    prior: int  # deliveries before the message last entered the queue
    returns: int  # the broker's x-delivery-count when it was delivered

    @property
    def attempts(self) -> int:
        return self.prior + self.returns + 1


@dataclass(frozen=True)
class _Open:
    connection: AbstractRobustConnection
    publisher: AbstractChannel  # publisher confirms, returns raise
    consumer: AbstractChannel
    queue: AbstractQueue  # the main queue, on the consumer channel
    dead_letter_exchange: AbstractExchange  # on the publisher channel


class RabbitMqQueue:
    """The Queue port on a RabbitMQ quorum queue; see the module docstring for how it works.

    ``ledger_engine`` is the metadata database (it holds the backlog ledger; the caller owns and
    disposes of it). ``max_deliveries`` becomes the queue's ``x-delivery-limit``
    (``max_deliveries - 1`` redeliveries): it is fixed when the queue is first declared, and a
    client declaring it with another value fails to start (change it with a policy instead).
    """

    def __init__(
        self,
        url: str,
        *,
        ledger_engine: AsyncEngine,
        queue: str = "tenantsearch.writes",
        max_deliveries: int = 5,
        prefetch: int = 100,
        publish_timeout: float = 10.0,
        operation_timeout: float = 10.0,
        failpoint: str | None = None,
    ) -> None:
        """``failpoint``: tests only (``tenantsearch.failpoints``): ``after_ledger_write`` kills
        the process between recording a message in the backlog ledger and publishing it."""
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        if publish_timeout <= 0 or operation_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self._url = url
        self._name = queue
        self._ledger = BacklogLedger(ledger_engine, queue)
        self._max_deliveries = max_deliveries
        self._prefetch = prefetch
        self._publish_timeout = publish_timeout
        self._timeout = operation_timeout
        self._failpoint = failpoint
        self._open: _Open | None = None
        self._in_flight: dict[str, _InFlight] = {}
        self._tags = itertools.count(1)
        self._client = secrets.token_hex(4)  # tags of another client are unknown here
        self._delay_queues: set[float] = set()
        self._receiving = asyncio.Lock()  # one consumer (and its prefetch) at a time
        self._browsing = asyncio.Lock()  # dead-letter scans of this client, one at a time
        self._wakeups: set[asyncio.Queue[AbstractIncomingMessage | None]] = set()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._open is not None:
            return
        async with self._guard("connecting to RabbitMQ"):
            connection = await aio_pika.connect_robust(
                self._url,
                timeout=self._timeout,
                client_properties={"connection_name": f"tenantsearch {self._name}"},
                reconnect_interval=_RECONNECT_INTERVAL,
            )
        try:
            async with self._guard(f"declaring queue {self._name!r}"):
                publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
                consumer = await connection.channel(publisher_confirms=False)
                exchange = await self._declare(publisher)
                queue = await consumer.get_queue(self._name, ensure=False)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), self._timeout)
            raise
        self._in_flight.clear()
        self._delay_queues.clear()
        self._open = _Open(connection, publisher, consumer, queue, exchange)

    async def close(self) -> None:
        state, self._open = self._open, None
        if state is None:
            return
        for wakeup in self._wakeups:
            wakeup.put_nowait(None)  # waiting receivers fail fast
        in_flight = list(self._in_flight.values())
        self._in_flight.clear()
        # Closing the channel returns the unsettled messages; those on their last delivery are
        # dead-lettered by the broker on return, so they leave the backlog now.
        doomed = [f.message_id for f in in_flight if f.returns + 1 >= self._max_deliveries]
        if doomed:
            try:
                await asyncio.wait_for(self._ledger.remove(doomed), self._timeout)
            except (QueueUnavailable, TimeoutError):
                _log.warning("could not remove dead-lettered messages from the backlog ledger")
        try:
            await asyncio.wait_for(state.connection.close(), self._timeout)
        except _CLOSE_ERRORS:
            _log.warning("closing the RabbitMQ connection failed", exc_info=True)

    async def ping(self) -> None:
        state = self._require()
        async with self._guard("ping"):
            await self._declare_main(state.publisher)

    # -- producer ------------------------------------------------------------------------------

    async def publish(self, body: bytes, *, tenant: str, documents: int) -> None:
        if documents < 0:
            raise ValueError("documents must not be negative")
        state = self._require()
        message_id = uuid.uuid4().hex
        body = bytes(body)
        async with self._guard("recording the message in the backlog ledger"):
            await self._ledger.add(message_id, tenant=tenant, documents=documents, size=len(body))
        if self._failpoint == "after_ledger_write":
            failpoints.kill(self._failpoint)
        message = self._message(
            body, message_id, {_H_TENANT: tenant, _H_DOCUMENTS: documents, _H_PRIOR: 0}
        )
        try:
            await self._publish(state.publisher.default_exchange, message, self._name)
        except BaseException:
            # Not accepted (or unknown: then under-counting it is the safe side).
            with contextlib.suppress(QueueUnavailable, TimeoutError):
                await asyncio.wait_for(self._ledger.remove([message_id]), self._timeout)
            raise

    # -- consumer ------------------------------------------------------------------------------

    async def receive(self, max_messages: int, wait_seconds: float) -> list[Delivery]:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self._require()
        async with self._receiving:
            state = self._require()
            await self._forget_stale()
            messages = await self._consume(state, min(max_messages, self._prefetch), wait_seconds)
        deliveries: list[Delivery] = []
        for message in messages:
            headers = message.headers or {}
            in_flight = _InFlight(
                message=message,
                message_id=_str(message.message_id),
                prior=_int(headers.get(_H_PRIOR)),
                returns=_int(headers.get("x-delivery-count")),
            )
            if in_flight.attempts > self._max_deliveries:
                await self._expire(in_flight)
                continue
            tag = f"{self._client}.{next(self._tags)}"
            self._in_flight[tag] = in_flight
            deliveries.append(
                Delivery(
                    tag=tag,
                    body=message.body,
                    tenant=_str(headers.get(_H_TENANT)),
                    attempts=in_flight.attempts,
                )
            )
        return deliveries

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        taken = self._take([d.tag for d in deliveries])
        if not taken:
            return
        try:
            async with self._guard("updating the backlog ledger"):
                await self._ledger.remove(f.message_id for _, f in taken)
        except BaseException:
            await self._give_back(f for _, f in taken)
            raise
        for _, in_flight in taken:
            async with self._settling(in_flight):
                await in_flight.message.ack()

    async def retry(self, delivery: Delivery, delay_seconds: float) -> None:
        taken = self._take([delivery.tag])
        if not taken:
            return
        [(_, in_flight)] = taken
        if in_flight.attempts >= self._max_deliveries:
            spent = in_flight.attempts
            await self._dead_letter(in_flight, _limit_reason(spent), spent)
            return
        if delay_seconds < IMMEDIATE_RETRY_SECONDS:
            async with self._settling(in_flight):
                await in_flight.message.nack(requeue=True)
            return
        state = self._require()
        step = _delay_step(delay_seconds)
        copy = self._message(
            in_flight.message.body,
            in_flight.message_id,
            {**_own_headers(in_flight.message.headers), _H_PRIOR: in_flight.attempts},
        )
        try:
            routing_key = await self._delay_queue(state, step)
            await self._publish(state.publisher.default_exchange, copy, routing_key)
        except BaseException:
            await self._give_back([in_flight])
            raise
        async with self._settling(in_flight):
            await in_flight.message.ack()

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        taken = self._take([delivery.tag])
        if taken:
            [(_, in_flight)] = taken
            await self._dead_letter(in_flight, reason, in_flight.attempts)

    # -- operations ----------------------------------------------------------------------------

    async def backlog(self, tenant: str | None = None) -> Backlog:
        self._require()
        async with self._guard("reading the backlog"):
            return await self._ledger.totals(tenant)

    async def list_dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            self._require()
            return []
        async with self._browse() as next_dead:
            found: list[DeadLetter] = []
            while len(found) < limit and (message := await next_dead()) is not None:
                found.append(self._as_dead_letter(message))
            # Dead letters the broker made (their consumer went away) may still be in the ledger
            # under their id; ids of the adapter's own dead letters were never there.
            await self._ledger.remove(d.id for d in found)
            return found

    async def replay_dead_letter(self, dead_letter_id: str) -> bool:
        async with self._browse() as next_dead:
            while (message := await next_dead()) is not None:
                if _str(message.message_id) != dead_letter_id:
                    continue
                headers = message.headers or {}
                await self.publish(
                    message.body,
                    tenant=_str(headers.get(_H_TENANT)),
                    documents=_int(headers.get(_H_DOCUMENTS)),
                )
                await self._ledger.remove([dead_letter_id])
                async with self._guard("replaying a dead letter"):
                    await message.ack()
                return True
            return False

    async def purge_dead_letters(self, tenant: str | None = None) -> int:
        if tenant is None:
            state = self._require()
            async with self._browsing, self._guard("purging dead letters"):
                channel = await state.connection.channel(publisher_confirms=False)
                try:
                    dead = await channel.get_queue(f"{self._name}.dead", ensure=False)
                    purged = await dead.purge(timeout=self._timeout)
                finally:
                    await channel.close()
            return int(purged.message_count or 0)
        count = 0
        async with self._browse() as next_dead:
            while (message := await next_dead()) is not None:
                if _str((message.headers or {}).get(_H_TENANT)) == tenant:
                    async with self._guard("purging dead letters"):
                        await message.ack()
                    count += 1
        return count

    # -- internals -----------------------------------------------------------------------------

    def _require(self) -> _Open:
        if self._open is None:
            raise QueueUnavailable("the queue is not started or already closed")
        return self._open

    @contextlib.asynccontextmanager
    async def _guard(self, what: str, timeout: float | None = None) -> AsyncIterator[None]:
        """Bound a broker call in time and translate its errors into :class:`QueueUnavailable`."""
        seconds = self._timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(seconds):
                yield
        except QueueUnavailable:
            raise
        except TimeoutError as exc:
            raise QueueUnavailable(f"{what}: RabbitMQ did not answer within {seconds}s") from exc
        except _DRIVER_ERRORS as exc:
            raise QueueUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
        except asyncio.CancelledError as exc:
            # aiormq fails the calls pending on a channel that closes with CancelledError; only
            # a cancellation of this task itself is passed on as one.
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            raise QueueUnavailable(f"{what}: the channel or connection closed") from exc
        except Exception as exc:
            if self._open is not None:
                raise
            # close() ran meanwhile; aiormq fails what was pending with whatever it closed with.
            raise QueueUnavailable(f"{what}: the queue was closed") from exc

    @contextlib.asynccontextmanager
    async def _settling(self, in_flight: _InFlight) -> AsyncIterator[None]:
        """Settle a delivery on its channel; a closed channel means it is stale (a no-op)."""
        try:
            async with self._guard("settling a delivery"):
                yield
        except QueueUnavailable as exc:
            if not _channel_closed(in_flight.message):
                raise
            _log.info("delivery %s is stale (its channel closed): %s", in_flight.message_id, exc)

    def _take(self, tags: Sequence[str]) -> list[tuple[str, _InFlight]]:
        self._require()
        taken = []
        for tag in tags:
            in_flight = self._in_flight.pop(tag, None)
            if in_flight is not None:
                taken.append((tag, in_flight))
        return taken

    async def _forget_stale(self) -> None:
        """Drop deliveries whose channel closed (the broker requeued them); those that were on
        their last delivery were dead-lettered by the broker and leave the backlog."""
        stale = [tag for tag, f in self._in_flight.items() if _channel_closed(f.message)]
        doomed = []
        for tag in stale:
            in_flight = self._in_flight.pop(tag)
            if in_flight.returns + 1 >= self._max_deliveries:
                doomed.append(in_flight.message_id)
        if doomed:
            try:
                async with self._guard("updating the backlog ledger"):
                    await self._ledger.remove(doomed)
            except QueueUnavailable:
                _log.warning("could not remove dead-lettered messages from the backlog ledger")

    def _main_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self._max_deliveries - 1,
            "x-dead-letter-exchange": f"{self._name}.dlx",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",  # required by at-least-once dead-lettering
        }

    async def _declare_main(self, channel: AbstractChannel) -> AbstractQueue:
        return await channel.declare_queue(
            self._name, durable=True, arguments=self._main_arguments(), timeout=self._timeout
        )

    async def _declare(self, channel: AbstractChannel) -> AbstractExchange:
        exchange = await channel.declare_exchange(
            f"{self._name}.dlx", aio_pika.ExchangeType.FANOUT, durable=True, timeout=self._timeout
        )
        dead = await channel.declare_queue(
            f"{self._name}.dead",
            durable=True,
            arguments={"x-queue-type": "quorum"},
            timeout=self._timeout,
        )
        await dead.bind(exchange, timeout=self._timeout)
        await self._declare_main(channel)
        return exchange

    async def _delay_queue(self, state: _Open, step: float) -> str:
        name = f"{self._name}.delay.{round(step * 1000)}ms"
        if step not in self._delay_queues:
            async with self._guard(f"declaring delay queue {name!r}"):
                await state.publisher.declare_queue(
                    name,
                    durable=True,
                    arguments={
                        "x-queue-type": "quorum",
                        "x-message-ttl": round(step * 1000),
                        "x-dead-letter-exchange": "",
                        "x-dead-letter-routing-key": self._name,
                        "x-dead-letter-strategy": "at-least-once",
                        "x-overflow": "reject-publish",
                    },
                    timeout=self._timeout,
                )
            self._delay_queues.add(step)
        return name

    @staticmethod
    def _message(body: bytes, message_id: str, headers: Mapping[str, Any]) -> aio_pika.Message:
        return aio_pika.Message(
            body,
            headers=dict(headers),
            message_id=message_id,
            content_type="application/octet-stream",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )

    async def _publish(
        self, exchange: AbstractExchange, message: aio_pika.Message, routing_key: str
    ) -> None:
        """Publish and wait for the broker's confirm; a nack, a return or silence raises."""
        async with self._guard(f"publishing to {routing_key!r}", self._publish_timeout):
            await exchange.publish(message, routing_key=routing_key, mandatory=True)

    async def _consume(
        self, state: _Open, prefetch: int, wait_seconds: float
    ) -> list[AbstractIncomingMessage]:
        inbox: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        finished = False

        async def on_message(message: AbstractIncomingMessage) -> None:
            if not finished:
                inbox.put_nowait(message)
                return
            # Arrived after the receive was over (a race with the cancel): give it back. The
            # broker counts this as a delivery (attempts + 1); it is rare, see _consume.
            _log.debug("a delivery arrived after its receive ended; requeued")
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)

        self._wakeups.add(inbox)
        messages: list[AbstractIncomingMessage] = []
        try:
            async with self._guard("starting a consumer"):
                await state.consumer.set_qos(prefetch_count=prefetch, timeout=self._timeout)
                consumer_tag = await state.queue.consume(on_message, timeout=self._timeout)
            try:
                await self._gather(inbox, messages, prefetch, wait_seconds)
            finally:
                if self._open is not state:  # closed: the consumer went with the connection
                    raise QueueUnavailable("the queue was closed while receiving")
                async with self._guard("stopping a consumer"):
                    await state.queue.cancel(consumer_tag, timeout=self._timeout)
                # Deliveries that came before the cancel-ok are ours too (the prefetch bounds
                # them): let their callbacks run, then stop taking any more.
                for _ in range(3):
                    await asyncio.sleep(0)
                finished = True
                while not inbox.empty():
                    message = inbox.get_nowait()
                    if message is not None:
                        messages.append(message)
        except BaseException:
            finished = True
            await self._give_back(messages)  # never handed out
            raise
        finally:
            self._wakeups.discard(inbox)
        if self._open is not state:
            raise QueueUnavailable("the queue was closed while receiving")
        return messages

    async def _gather(
        self,
        inbox: asyncio.Queue[AbstractIncomingMessage | None],
        messages: list[AbstractIncomingMessage],
        prefetch: int,
        wait_seconds: float,
    ) -> None:
        """Move what arrives into ``messages``: the first within ``wait_seconds``, then each
        further one within a short gap, up to ``prefetch``. ``None`` in the inbox: closed."""
        timeout = max(wait_seconds, _MIN_FIRST_WAIT)
        while len(messages) < prefetch:
            if not inbox.empty():
                item = inbox.get_nowait()  # no timer for what has already arrived
            else:
                try:
                    item = await asyncio.wait_for(inbox.get(), timeout)
                except TimeoutError:
                    return
            if item is None:
                raise QueueUnavailable("the queue was closed while receiving")
            messages.append(item)
            timeout = _BATCH_GAP

    async def _dead_letter(self, in_flight: _InFlight, reason: str, attempts: int) -> None:
        """Move a delivery to the dead letters: ledger first (a failure after it under-counts
        until the message is settled), then a confirmed copy, then the ack. On failure the
        message is given back to the queue."""
        state = self._require()
        message = in_flight.message
        headers = _own_headers(message.headers)
        copy = self._message(
            message.body,
            uuid.uuid4().hex,  # the dead letter's own id: unique even if this runs twice
            {
                _H_TENANT: _str(headers.get(_H_TENANT)),
                _H_DOCUMENTS: _int(headers.get(_H_DOCUMENTS)),
                _H_ORIGIN: in_flight.message_id,
                _H_REASON: reason,
                _H_DEAD_ATTEMPTS: attempts,
                _H_DEAD_AT: int(datetime.now(UTC).timestamp() * 1000),
            },
        )
        try:
            async with self._guard("updating the backlog ledger"):
                await self._ledger.remove([in_flight.message_id])
            await self._publish(state.dead_letter_exchange, copy, self._name)
        except BaseException:
            await self._give_back([in_flight])
            raise
        async with self._settling(in_flight):
            await message.ack()

    async def _give_back(self, items: Iterable[_InFlight | AbstractIncomingMessage]) -> None:
        """Requeue messages this client holds but could not settle (best effort: if the
        channel is broken, the broker requeues them when it closes)."""
        for item in items:
            message = item.message if isinstance(item, _InFlight) else item
            with contextlib.suppress(Exception):
                await asyncio.wait_for(message.nack(requeue=True), self._timeout)

    async def _expire(self, in_flight: _InFlight) -> None:
        """Dead-letter a message that arrived past its delivery budget (it is not handed out)."""
        spent = in_flight.attempts - 1
        try:
            await self._dead_letter(in_flight, _limit_reason(spent), spent)
        except QueueUnavailable:
            _log.warning("could not dead-letter an exhausted message; it was requeued")

    @contextlib.asynccontextmanager
    async def _browse(self) -> AsyncIterator[Any]:
        """Yield ``next_dead()``: the next dead letter, held (unacked) on a private channel, or
        ``None`` at the end. Closing the channel gives back what was not acked, in order."""
        state = self._require()
        async with self._browsing:
            async with self._guard("opening a channel for dead letters"):
                channel = await state.connection.channel(publisher_confirms=False)
            try:
                dead = await channel.get_queue(f"{self._name}.dead", ensure=False)

                async def next_dead() -> AbstractIncomingMessage | None:
                    async with self._guard("reading dead letters"):
                        return await dead.get(no_ack=False, fail=False, timeout=self._timeout)

                yield next_dead
            finally:
                # Best effort: if the channel is already broken, the broker has requeued them.
                with contextlib.suppress(*_CLOSE_ERRORS):
                    await asyncio.wait_for(channel.close(), self._timeout)

    def _as_dead_letter(self, message: AbstractIncomingMessage) -> DeadLetter:
        headers = message.headers or {}
        reason = headers.get(_H_REASON)
        if reason is not None:
            attempts = _int(headers.get(_H_DEAD_ATTEMPTS))
            dead_at = datetime.fromtimestamp(_int(headers.get(_H_DEAD_AT)) / 1000, tz=UTC)
            text = _str(reason)
        else:  # dead-lettered by the broker: x-death, newest event first
            deaths = headers.get("x-death")
            death: Mapping[str, Any] = (
                deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict)
                else {}
            )  # fmt: skip
            cause = _str(death.get("reason")) or "unknown"
            prior = _int(headers.get(_H_PRIOR))
            if cause == "delivery_limit":
                attempts = prior + self._max_deliveries
                text = _limit_reason(attempts)
            else:
                attempts = prior
                text = f"dead-lettered by RabbitMQ: {cause}"
            when = death.get("time")
            dead_at = when if isinstance(when, datetime) else datetime.now(UTC)
            if dead_at.tzinfo is None:
                dead_at = dead_at.replace(tzinfo=UTC)
        return DeadLetter(
            id=_str(message.message_id),
            tenant=_str(headers.get(_H_TENANT)),
            body=message.body,
            reason=text,
            attempts=attempts,
            dead_at=dead_at,
        )


def _own_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """This adapter's headers of a message, without what the broker added (x-death, ...)."""
    return {k: v for k, v in (headers or {}).items() if k.startswith("ts-")}


def _channel_closed(message: AbstractIncomingMessage) -> bool:
    try:
        return bool(message.channel.is_closed)
    except aiormq.exceptions.ChannelInvalidStateError:
        return True
