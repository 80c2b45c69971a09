"""The Queue port's contract (``tenantsearch.queue.port``), run against every adapter.

Every test talks to the adapter through the port only and asserts on outcomes, so a new adapter is
added by adding a param to the ``queue`` fixture and a branch to :func:`_make_queue`. Waits are
short and bounded; "nothing arrives" is checked with a short ``receive`` wait.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantsearch.queue.port import Delivery, Queue, QueueUnavailable
from tenantsearch.queue.rabbitmq import RabbitMqQueue
from tenantsearch.queue.sqlite import SqliteQueue
from tenantsearch.store.db import create_engine, migrate
from tests.support.services import postgres_database

pytestmark = pytest.mark.timeout(60)

MAX_DELIVERIES = 3
"""Every adapter under test is built with this delivery limit."""

NOTHING_WAIT = 0.3
"""How long a receive waits when the test expects nothing to arrive."""

SOMETHING_WAIT = 5.0
"""How long a receive may wait when the test expects something (it returns as soon as it does)."""

OpenQueue = Callable[[], Awaitable[Queue]]
_OPENER = pytest.StashKey[OpenQueue]()


@dataclass
class _Where:
    """Where the test's one queue lives."""

    tmp_path: Path
    broker_url: str = ""
    ledger: AsyncEngine | None = None  # the RabbitMQ adapter's backlog ledger (metadata DB)
    name: str = ""


def _make_queue(kind: str, where: _Where) -> Queue:
    """A new client of the test's one queue: the same file / broker queue every time."""
    if kind == "sqlite":
        return SqliteQueue(where.tmp_path / "queue" / "queue.db", max_deliveries=MAX_DELIVERIES)
    if kind == "rabbitmq":
        assert where.ledger is not None
        return RabbitMqQueue(
            where.broker_url,
            ledger_engine=where.ledger,
            queue=where.name,
            max_deliveries=MAX_DELIVERIES,
            publish_timeout=5.0,
            operation_timeout=5.0,
        )
    raise AssertionError(f"unknown queue adapter {kind!r}")


@pytest.fixture(scope="session")
def queue_ledger_url(postgres_url: str) -> Iterator[str]:
    """The metadata database holding the RabbitMQ adapter's backlog ledger, for every test
    (ledger rows are per queue name, and each test has its own queue)."""
    with postgres_database(postgres_url) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("rabbitmq", marks=pytest.mark.slow)])
async def queue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Queue]:
    kind: str = request.param
    where = _Where(tmp_path)
    if kind == "rabbitmq":
        where.broker_url = request.getfixturevalue("rabbitmq_url")
        where.ledger = create_engine(request.getfixturevalue("queue_ledger_url"))
        await migrate(where.ledger)  # a no-op after the first test
        where.name = f"test.{uuid.uuid4().hex[:12]}"
    opened: list[Queue] = []

    async def open_queue() -> Queue:
        client = _make_queue(kind, where)
        await client.start()
        opened.append(client)
        return client

    request.node.stash[_OPENER] = open_queue
    try:
        first = await open_queue()
        yield first
    finally:
        for client in opened:
            await client.close()
        if where.ledger is not None:
            await where.ledger.dispose()


@pytest.fixture
def open_queue(queue: Queue, request: pytest.FixtureRequest) -> OpenQueue:
    """Opens another client of the same queue: another process, or the same one reconnecting."""
    opener: OpenQueue = request.node.stash[_OPENER]
    return opener


async def drain(queue: Queue, batch: int = 100) -> list[Delivery]:
    """Receive (without acking) until nothing more arrives within ``NOTHING_WAIT``."""
    received: list[Delivery] = []
    while deliveries := await queue.receive(batch, NOTHING_WAIT):
        assert len(deliveries) <= batch
        received.extend(deliveries)
    return received


async def take(queue: Queue, count: int) -> list[Delivery]:
    """Exactly ``count`` deliveries (an adapter may hand them out over several receives)."""
    received: list[Delivery] = []
    while len(received) < count:
        deliveries = await queue.receive(count - len(received), SOMETHING_WAIT)
        assert deliveries, f"expected {count} deliveries, got {len(received)}"
        received.extend(deliveries)
    return received


async def receive_one(queue: Queue) -> Delivery:
    [delivery] = await take(queue, 1)
    return delivery


# -- publish and receive ---------------------------------------------------------------------


async def test_round_trip_is_byte_identical(queue: Queue) -> None:
    bodies = [
        b"",
        bytes(range(256)),
        b"\x00\xff\xfe not utf-8 \x80\x81",
        os.urandom(1_000_000),
    ]
    for index, body in enumerate(bodies):
        await queue.publish(body, tenant=f"tenant-{index}", documents=index + 1)

    received = await drain(queue)

    assert [d.body for d in received] == bodies
    assert [d.tenant for d in received] == [f"tenant-{i}" for i in range(len(bodies))]
    assert all(d.attempts == 1 for d in received)
    assert len({d.tag for d in received}) == len(bodies)


async def test_delivers_in_publish_order(queue: Queue) -> None:
    bodies = [f"message-{i}".encode() for i in range(25)]
    for body in bodies:
        await queue.publish(body, tenant="acme", documents=1)

    received = await drain(queue, batch=7)

    assert [d.body for d in received] == bodies


async def test_receive_returns_at_most_max_messages(queue: Queue) -> None:
    for i in range(10):
        await queue.publish(b"%d" % i, tenant="acme", documents=1)

    first = await queue.receive(3, SOMETHING_WAIT)
    rest = await drain(queue, batch=100)

    assert 1 <= len(first) <= 3
    assert len(first) + len(rest) == 10
    assert [d.body for d in first + rest] == [b"%d" % i for i in range(10)]


async def test_receive_on_empty_queue_waits_then_returns_nothing(queue: Queue) -> None:
    started = time.monotonic()
    assert await queue.receive(10, 0.4) == []
    elapsed = time.monotonic() - started
    assert 0.35 <= elapsed < 3.0

    started = time.monotonic()
    assert await queue.receive(10, 0) == []
    assert time.monotonic() - started < 1.0


async def test_receive_wakes_up_when_a_message_is_published(queue: Queue) -> None:
    waiting = asyncio.create_task(queue.receive(10, 10.0))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await queue.publish(b"wake up", tenant="acme", documents=1)

    deliveries = await waiting

    assert [d.body for d in deliveries] == [b"wake up"]
    assert time.monotonic() - started < 2.0


async def test_receive_sees_messages_published_by_another_client(
    queue: Queue, open_queue: OpenQueue
) -> None:
    publisher = await open_queue()
    waiting = asyncio.create_task(queue.receive(10, 10.0))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await publisher.publish(b"from elsewhere", tenant="acme", documents=1)

    deliveries = await waiting

    assert [d.body for d in deliveries] == [b"from elsewhere"]
    assert time.monotonic() - started < 2.0


async def test_concurrent_publishers_lose_and_duplicate_nothing(queue: Queue) -> None:
    publishers, per_publisher = 20, 50

    async def publish_all(publisher: int) -> None:
        for i in range(per_publisher):
            await queue.publish(f"{publisher}:{i}".encode(), tenant="acme", documents=1)

    await asyncio.gather(*(publish_all(p) for p in range(publishers)))
    received = await drain(queue, batch=250)

    pairs = [tuple(map(int, d.body.split(b":"))) for d in received]
    assert len(pairs) == publishers * per_publisher
    assert set(pairs) == {(p, i) for p in range(publishers) for i in range(per_publisher)}
    for p in range(publishers):  # each publisher's own messages keep their order
        assert [i for q, i in pairs if q == p] == list(range(per_publisher))


# -- leases, ack, retry ----------------------------------------------------------------------


async def test_received_message_is_invisible_to_other_receivers(
    queue: Queue, open_queue: OpenQueue
) -> None:
    other = await open_queue()
    await queue.publish(b"only once", tenant="acme", documents=1)

    first = await receive_one(queue)

    assert await queue.receive(10, NOTHING_WAIT) == []
    assert await other.receive(10, NOTHING_WAIT) == []

    await queue.retry(first, 0)
    again = await receive_one(other)
    assert again.body == b"only once"
    assert again.attempts == 2


async def test_ack_removes_the_message(queue: Queue) -> None:
    await queue.publish(b"done", tenant="acme", documents=4)
    delivery = await receive_one(queue)

    await queue.ack([delivery])

    assert await queue.receive(10, NOTHING_WAIT) == []
    assert (await queue.backlog()).messages == 0
    await queue.ack([delivery])  # acking twice is a no-op
    assert (await queue.backlog()).messages == 0


async def test_ack_of_a_batch(queue: Queue) -> None:
    for i in range(5):
        await queue.publish(b"%d" % i, tenant="acme", documents=1)
    deliveries = await take(queue, 5)

    await queue.ack(deliveries[:3])

    assert (await queue.backlog()).messages == 2
    await queue.retry(deliveries[3], 0)
    await queue.retry(deliveries[4], 0)
    assert [d.body for d in await drain(queue)] == [b"3", b"4"]


async def test_retry_with_delay_redelivers_later(queue: Queue) -> None:
    await queue.publish(b"later", tenant="acme", documents=1)
    first = await receive_one(queue)
    assert first.attempts == 1

    retried_at = time.monotonic()
    await queue.retry(first, 1.0)

    assert await queue.receive(10, 0.2) == []
    second = await receive_one(queue)
    assert time.monotonic() - retried_at >= 0.9
    assert second.body == b"later"
    assert second.attempts == 2


async def test_retry_without_delay_redelivers_at_once(queue: Queue) -> None:
    await queue.publish(b"now", tenant="acme", documents=1)
    await queue.retry(await receive_one(queue), 0)

    again = await receive_one(queue)

    assert (again.body, again.attempts) == (b"now", 2)


async def test_retried_message_keeps_its_place_in_order(queue: Queue) -> None:
    for body in (b"a", b"b", b"c"):
        await queue.publish(body, tenant="acme", documents=1)
    first = await receive_one(queue)
    await queue.retry(first, 0)

    assert [d.body for d in await drain(queue)] == [b"a", b"b", b"c"]


async def test_message_of_a_closed_consumer_is_delivered_again(
    queue: Queue, open_queue: OpenQueue
) -> None:
    consumer = await open_queue()
    await queue.publish(b"orphan", tenant="acme", documents=1)
    taken = await receive_one(consumer)
    assert taken.attempts == 1

    await consumer.close()  # goes away without acking

    again = await receive_one(queue)
    assert (again.body, again.attempts) == (b"orphan", 2)


async def test_stale_and_unknown_deliveries_are_no_ops(queue: Queue) -> None:
    await queue.publish(b"contested", tenant="acme", documents=1)
    stale = await receive_one(queue)
    await queue.retry(stale, 0)
    current = await receive_one(queue)
    assert current.attempts == 2

    await queue.ack([stale])
    await queue.retry(stale, 0)
    await queue.dead_letter(stale, "from a stale delivery")

    assert await queue.receive(10, NOTHING_WAIT) == []  # still leased by `current`
    assert await queue.list_dead_letters() == []
    assert (await queue.backlog()).messages == 1

    unknown = [
        Delivery(tag="no-such-tag", body=b"", tenant="acme", attempts=1),
        Delivery(tag="999999999.0123456789abcdef", body=b"", tenant="acme", attempts=1),
        Delivery(tag="", body=b"", tenant="acme", attempts=1),
    ]
    await queue.ack(unknown)
    for delivery in unknown:
        await queue.retry(delivery, 0)
        await queue.dead_letter(delivery, "unknown")
    await queue.ack([])

    await queue.ack([current])
    assert (await queue.backlog()).messages == 0
    assert await queue.list_dead_letters() == []


async def test_deliveries_to_consumers_that_went_away_count_toward_the_limit(
    queue: Queue, open_queue: OpenQueue
) -> None:
    await queue.publish(b"crashes its consumer", tenant="acme", documents=1)
    for attempt in range(1, MAX_DELIVERIES + 1):
        consumer = await open_queue()
        delivery = await receive_one(consumer)
        assert delivery.attempts == attempt
        await consumer.close()  # goes away without settling, like an indexer that crashed

    assert await queue.receive(10, NOTHING_WAIT) == []

    [dead] = await queue.list_dead_letters()
    assert dead.reason.startswith("delivery limit exceeded")
    assert (dead.tenant, dead.body, dead.attempts) == (
        "acme",
        b"crashes its consumer",
        MAX_DELIVERIES,
    )
    assert await queue.backlog() == await queue.backlog("nobody")  # all zero


# -- dead letters ----------------------------------------------------------------------------


async def test_delivery_limit_moves_message_to_dead_letters(queue: Queue) -> None:
    await queue.publish(b"poison", tenant="acme", documents=2)
    for attempt in range(1, MAX_DELIVERIES + 1):
        delivery = await receive_one(queue)
        assert delivery.attempts == attempt
        await queue.retry(delivery, 0)

    assert await queue.receive(10, NOTHING_WAIT) == []

    [dead] = await queue.list_dead_letters()
    assert dead.reason.startswith("delivery limit exceeded")
    assert (dead.tenant, dead.body, dead.attempts) == ("acme", b"poison", MAX_DELIVERIES)
    assert await queue.backlog() == await queue.backlog("nobody")  # all zero


async def test_dead_letter_moves_message_with_its_reason(queue: Queue) -> None:
    before = datetime.now(UTC)
    await queue.publish(b"bad document", tenant="acme", documents=1)
    await queue.publish(b"good document", tenant="acme", documents=1)
    bad = await receive_one(queue)

    await queue.dead_letter(bad, "mapper_parsing_exception: field [price]")

    [dead] = await queue.list_dead_letters()
    assert dead.reason == "mapper_parsing_exception: field [price]"
    assert (dead.tenant, dead.body, dead.attempts) == ("acme", b"bad document", 1)
    assert before - timedelta(seconds=5) <= dead.dead_at <= datetime.now(UTC) + timedelta(seconds=5)
    assert [d.body for d in await drain(queue)] == [b"good document"]
    assert (await queue.backlog()).messages == 1
    await queue.dead_letter(bad, "again")  # already dead-lettered: a no-op
    assert len(await queue.list_dead_letters()) == 1


async def test_list_replay_and_purge_dead_letters(queue: Queue) -> None:
    for body, tenant in ((b"first", "acme"), (b"second", "acme"), (b"third", "globex")):
        await queue.publish(body, tenant=tenant, documents=1)
    for index, delivery in enumerate(await drain(queue)):
        await queue.dead_letter(delivery, f"reason {index}")

    dead = await queue.list_dead_letters()
    assert [(d.body, d.tenant, d.reason) for d in dead] == [
        (b"first", "acme", "reason 0"),
        (b"second", "acme", "reason 1"),
        (b"third", "globex", "reason 2"),
    ]
    assert len({d.id for d in dead}) == 3
    assert [d.body for d in await queue.list_dead_letters(limit=2)] == [b"first", b"second"]

    assert await queue.replay_dead_letter(dead[0].id) is True
    assert await queue.replay_dead_letter(dead[0].id) is False
    assert await queue.replay_dead_letter("no-such-dead-letter") is False
    replayed = await receive_one(queue)
    assert (replayed.body, replayed.tenant, replayed.attempts) == (b"first", "acme", 1)
    assert [d.body for d in await queue.list_dead_letters()] == [b"second", b"third"]

    assert await queue.purge_dead_letters(tenant="acme") == 1
    assert [d.body for d in await queue.list_dead_letters()] == [b"third"]
    assert await queue.purge_dead_letters() == 1
    assert await queue.list_dead_letters() == []
    assert await queue.purge_dead_letters() == 0


async def test_replayed_message_gets_a_fresh_delivery_budget(queue: Queue) -> None:
    await queue.publish(b"poison", tenant="acme", documents=1)
    for _ in range(MAX_DELIVERIES):
        await queue.retry(await receive_one(queue), 0)
    assert await queue.receive(10, NOTHING_WAIT) == []
    [dead] = await queue.list_dead_letters()

    assert await queue.replay_dead_letter(dead.id)

    for attempt in range(1, MAX_DELIVERIES + 1):
        delivery = await receive_one(queue)
        assert delivery.attempts == attempt
        await queue.retry(delivery, 0)
    assert await queue.receive(10, NOTHING_WAIT) == []
    assert len(await queue.list_dead_letters()) == 1


# -- backlog ---------------------------------------------------------------------------------


async def test_backlog_counts_per_tenant_and_in_total(queue: Queue) -> None:
    await queue.publish(b"x" * 10, tenant="acme", documents=3)
    await queue.publish(b"x" * 20, tenant="acme", documents=5)
    await queue.publish(b"x" * 7, tenant="globex", documents=1)

    acme = await queue.backlog("acme")
    assert (acme.messages, acme.documents, acme.bytes) == (2, 8, 30)
    globex = await queue.backlog("globex")
    assert (globex.messages, globex.documents, globex.bytes) == (1, 1, 7)
    total = await queue.backlog()
    assert (total.messages, total.documents, total.bytes) == (3, 9, 37)
    nobody = await queue.backlog("nobody")
    assert (nobody.messages, nobody.documents, nobody.bytes) == (0, 0, 0)

    first, second = await take(queue, 2)
    assert await queue.backlog() == total  # in-flight messages still count

    await queue.ack([first])
    await queue.dead_letter(second, "rejected")

    assert await queue.backlog("acme") == await queue.backlog("nobody")
    total = await queue.backlog()
    assert (total.messages, total.documents, total.bytes) == (1, 1, 7)


async def test_backlog_counts_delayed_messages(queue: Queue) -> None:
    await queue.publish(b"12345", tenant="acme", documents=2)
    await queue.retry(await receive_one(queue), 30)

    backlog = await queue.backlog("acme")

    assert (backlog.messages, backlog.documents, backlog.bytes) == (1, 2, 5)


# -- lifecycle -------------------------------------------------------------------------------


async def test_ping_and_closed_queue(queue: Queue, open_queue: OpenQueue) -> None:
    await queue.ping()
    await queue.publish(b"kept", tenant="acme", documents=1)
    await queue.close()

    with pytest.raises(QueueUnavailable):
        await queue.ping()
    with pytest.raises(QueueUnavailable):
        await queue.publish(b"refused", tenant="acme", documents=1)
    with pytest.raises(QueueUnavailable):
        await queue.receive(1, 0)
    await queue.close()  # closing twice is harmless

    reopened = await open_queue()
    assert [d.body for d in await drain(reopened)] == [b"kept"]


async def test_close_wakes_a_waiting_receiver(queue: Queue) -> None:
    waiting = asyncio.create_task(queue.receive(10, 10.0))
    await asyncio.sleep(0.1)
    started = time.monotonic()

    await queue.close()

    with pytest.raises(QueueUnavailable):
        await waiting
    assert time.monotonic() - started < 2.0
