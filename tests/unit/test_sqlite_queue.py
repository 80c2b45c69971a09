"""What only the SQLite queue promises: durability across kill -9, leases shared by processes,
and SQLite errors translated. The port's contract itself is in ``tests/contract/test_queue.py``.

The multi-process tests run small scripts in fresh interpreters and SIGKILL them at chosen points.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tenantsearch.queue import sqlite as sqlite_queue
from tenantsearch.queue.port import Delivery, QueueUnavailable
from tenantsearch.queue.sqlite import SqliteQueue

pytestmark = pytest.mark.timeout(60)

SRC = Path(__file__).resolve().parents[2] / "src"

PUBLISHER = """
import asyncio, sys
from pathlib import Path
from tenantsearch.queue.sqlite import SqliteQueue

async def main() -> None:
    queue = SqliteQueue(Path(sys.argv[1]))
    await queue.start()
    i = 0
    while True:
        size = 1_000_000 if i % 25 == 0 else 100 * (i % 50)
        await queue.publish(b"%d:" % i + b"x" * size, tenant="acme", documents=1)
        print(i, flush=True)  # after publish returned: this message is promised to be kept
        i += 1

asyncio.run(main())
"""

LEASE_HOLDER = """
import asyncio, sys
from pathlib import Path
from tenantsearch.queue.sqlite import SqliteQueue

async def main() -> None:
    queue = SqliteQueue(Path(sys.argv[1]), lease_seconds=float(sys.argv[2]))
    await queue.start()
    deliveries = await queue.receive(10, 10.0)
    print(" ".join(d.body.decode() for d in deliveries), flush=True)
    await asyncio.sleep(3600)  # "processing" when it is killed

asyncio.run(main())
"""

CONSUMER = """
import asyncio, json, sys
from pathlib import Path
from tenantsearch.queue.sqlite import SqliteQueue

async def main() -> None:
    queue = SqliteQueue(Path(sys.argv[1]))
    await queue.start()
    print("ready", flush=True)
    sys.stdin.readline()
    processed = []
    while deliveries := await queue.receive(5, 0.5):
        processed.extend(d.body.decode() for d in deliveries)
        await asyncio.sleep(0.002)  # the work
        await queue.ack(deliveries)
    await queue.close()
    print(json.dumps(processed), flush=True)

asyncio.run(main())
"""


def spawn(script: str, *args: str) -> subprocess.Popen[str]:
    path = [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def read_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        _, stderr = process.communicate(timeout=10)
        raise AssertionError(f"child exited early ({process.returncode}): {stderr}")
    return line.strip()


def kill(process: subprocess.Popen[str]) -> str:
    """SIGKILL the child at once; returns what it had printed but we had not read yet."""
    os.kill(process.pid, signal.SIGKILL)
    # Not communicate(): with a timeout it reads the raw pipe and would lose the lines that
    # readline() already pulled into the text buffer (seen as "kept 125, confirmed 120").
    assert process.stdout is not None
    stdout = process.stdout.read()
    process.wait(timeout=10)
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    assert process.returncode == -signal.SIGKILL
    return stdout


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "queue.db"


@pytest.fixture
async def open_queue(db_path: Path) -> AsyncIterator[Callable[..., SqliteQueue]]:
    """Builds (not starts) queues on ``db_path``; closes them all at the end."""
    made: list[SqliteQueue] = []

    def make(
        *,
        max_deliveries: int = 5,
        lease_seconds: float = 300.0,
        release_leases_on_start: bool = False,
    ) -> SqliteQueue:
        queue = SqliteQueue(
            db_path,
            max_deliveries=max_deliveries,
            lease_seconds=lease_seconds,
            release_leases_on_start=release_leases_on_start,
        )
        made.append(queue)
        return queue

    yield make
    for queue in made:
        await queue.close()


async def drain(queue: SqliteQueue, wait: float = 0.2) -> list[Delivery]:
    received: list[Delivery] = []
    while deliveries := await queue.receive(100, wait):
        received.extend(deliveries)
    return received


# -- durability across kill -9 ---------------------------------------------------------------


@pytest.mark.slow
async def test_published_messages_survive_kill_9(
    db_path: Path, open_queue: Callable[..., SqliteQueue]
) -> None:
    db_path.parent.mkdir(parents=True)
    publisher = spawn(PUBLISHER, str(db_path))
    confirmed = [int(read_line(publisher)) for _ in range(120)]
    confirmed += [int(line) for line in kill(publisher).split()]
    assert confirmed == list(range(len(confirmed)))

    with contextlib.closing(sqlite3.connect(db_path)) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    queue = open_queue()
    await queue.start()
    kept = [int(d.body.split(b":", 1)[0]) for d in await drain(queue)]

    # Every confirmed publish is there, in order; at most the one in flight at the kill as well.
    assert kept[: len(confirmed)] == confirmed
    assert len(kept) - len(confirmed) in (0, 1)
    assert kept == list(range(len(kept)))


@pytest.mark.slow
async def test_leases_of_a_killed_consumer_are_released_on_start(
    db_path: Path, open_queue: Callable[..., SqliteQueue]
) -> None:
    producer = open_queue()
    await producer.start()
    for body in (b"a", b"b", b"c"):
        await producer.publish(body, tenant="acme", documents=1)
    await producer.close()

    holder = spawn(LEASE_HOLDER, str(db_path), "300")
    assert read_line(holder) == "a b c"
    kill(holder)

    blocked = open_queue()
    await blocked.start()
    assert await blocked.receive(10, 0.2) == []  # leased for 300 s by the dead process
    await blocked.close()

    restarted = open_queue(release_leases_on_start=True)
    await restarted.start()
    deliveries = await restarted.receive(10, 0)
    assert [(d.body, d.attempts) for d in deliveries] == [(b"a", 2), (b"b", 2), (b"c", 2)]


@pytest.mark.slow
async def test_leases_of_a_killed_consumer_expire(
    db_path: Path, open_queue: Callable[..., SqliteQueue]
) -> None:
    producer = open_queue()
    await producer.start()
    await producer.publish(b"work", tenant="acme", documents=1)

    holder = spawn(LEASE_HOLDER, str(db_path), "1.5")
    assert read_line(holder) == "work"
    kill(holder)
    with contextlib.closing(sqlite3.connect(db_path)) as raw:
        (leased_until,) = raw.execute("SELECT leased_until FROM messages").fetchone()

    if time.time() < leased_until - 0.3:
        assert await producer.receive(10, 0) == []
    deliveries = await producer.receive(10, 10.0)
    assert time.time() >= leased_until
    assert [(d.body, d.attempts) for d in deliveries] == [(b"work", 2)]


@pytest.mark.slow
async def test_two_consumer_processes_process_each_message_once(
    db_path: Path, open_queue: Callable[..., SqliteQueue]
) -> None:
    producer = open_queue()
    await producer.start()
    bodies = [f"m{i}" for i in range(600)]
    for body in bodies:
        await producer.publish(body.encode(), tenant="acme", documents=1)

    consumers = [spawn(CONSUMER, str(db_path)) for _ in range(2)]
    for consumer in consumers:
        assert read_line(consumer) == "ready"
    for consumer in consumers:
        assert consumer.stdin is not None
        consumer.stdin.write("go\n")
        consumer.stdin.flush()
    outputs = [consumer.communicate(timeout=45) for consumer in consumers]

    processed: list[list[str]] = []
    for consumer, (stdout, stderr) in zip(consumers, outputs, strict=True):
        assert consumer.returncode == 0, stderr
        processed.append(json.loads(stdout.strip().splitlines()[-1]))
    first, second = processed
    assert first, "both consumers should have taken part"
    assert second, "both consumers should have taken part"
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(bodies)
    assert len(first) + len(second) == len(bodies)
    assert (await producer.backlog()).messages == 0
    assert await producer.list_dead_letters() == []


# -- leases within one process ---------------------------------------------------------------


async def test_expired_lease_redelivers_and_stale_ack_is_ignored(
    open_queue: Callable[..., SqliteQueue],
) -> None:
    queue = open_queue(lease_seconds=0.3)
    await queue.start()
    await queue.publish(b"slow", tenant="acme", documents=1)
    [first] = await queue.receive(1, 0)

    [second] = await queue.receive(1, 5.0)  # the first lease ran out
    assert (second.body, second.attempts) == (b"slow", 2)

    await queue.ack([first])  # stale: must not delete the message now leased as `second`
    assert (await queue.backlog()).messages == 1
    await queue.ack([second])
    assert (await queue.backlog()).messages == 0


async def test_ack_after_lease_expiry_counts_while_nobody_else_took_it(
    open_queue: Callable[..., SqliteQueue],
) -> None:
    queue = open_queue(lease_seconds=0.2)
    await queue.start()
    await queue.publish(b"late", tenant="acme", documents=1)
    [delivery] = await queue.receive(1, 0)
    await asyncio.sleep(0.3)

    await queue.ack([delivery])

    assert (await queue.backlog()).messages == 0


async def test_cancelled_receive_gives_back_what_it_claimed(
    open_queue: Callable[..., SqliteQueue], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = open_queue()
    await queue.start()
    await queue.publish(b"claimed", tenant="acme", documents=1)
    claimed, resume = threading.Event(), threading.Event()
    real_claim = queue._claim_sync

    def claim_then_stall(max_messages: int, conn: sqlite3.Connection) -> list[Delivery]:
        deliveries = real_claim(max_messages, conn)
        claimed.set()
        resume.wait(10)
        return deliveries

    monkeypatch.setattr(queue, "_claim_sync", claim_then_stall)
    receiving = asyncio.create_task(queue.receive(10, 5.0))
    assert await asyncio.to_thread(claimed.wait, 10)

    receiving.cancel()  # the claim has committed; its caller is gone
    with pytest.raises(asyncio.CancelledError):
        await receiving
    resume.set()
    monkeypatch.undo()

    [again] = await queue.receive(10, 1.0)
    assert (again.body, again.attempts) == (b"claimed", 1)


async def test_publish_in_the_same_process_wakes_receivers_without_polling(
    open_queue: Callable[..., SqliteQueue], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_queue, "POLL_INTERVAL", 30.0)
    queue = open_queue()
    await queue.start()
    receivers = [asyncio.create_task(queue.receive(1, 20.0)) for _ in range(3)]
    await asyncio.sleep(0.1)
    started = time.monotonic()

    for body in (b"1", b"2", b"3"):
        await queue.publish(body, tenant="acme", documents=1)
    received = await asyncio.gather(*receivers)

    assert time.monotonic() - started < 5.0
    assert sorted(d.body for batch in received for d in batch) == [b"1", b"2", b"3"]


async def test_delivery_limit_reason_names_the_count(
    open_queue: Callable[..., SqliteQueue],
) -> None:
    queue = open_queue(max_deliveries=2)
    await queue.start()
    await queue.publish(b"poison", tenant="acme", documents=1)
    for _ in range(2):
        [delivery] = await queue.receive(1, 0)
        await queue.retry(delivery, 0)

    assert await queue.receive(1, 0) == []

    [dead] = await queue.list_dead_letters()
    assert dead.reason == "delivery limit exceeded (2 deliveries)"


# -- files, locks and errors -----------------------------------------------------------------


async def test_start_creates_the_directory_and_a_wal_database(
    tmp_path: Path, open_queue: Callable[..., SqliteQueue]
) -> None:
    queue = SqliteQueue(tmp_path / "a" / "b" / "queue.db")
    await queue.start()
    await queue.start()  # idempotent
    await queue.ping()
    synchronous = await queue._run(lambda conn: conn.execute("PRAGMA synchronous").fetchone())
    assert synchronous == (2,)  # FULL: every commit is fsync'd before publish returns
    await queue.close()

    with contextlib.closing(sqlite3.connect(tmp_path / "a" / "b" / "queue.db")) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_waits_out_a_writer_holding_the_lock(
    db_path: Path, open_queue: Callable[..., SqliteQueue]
) -> None:
    queue = open_queue()
    await queue.start()
    raw = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    raw.execute("BEGIN IMMEDIATE")
    releaser = threading.Timer(0.4, lambda: raw.execute("COMMIT"))
    releaser.start()
    try:
        started = time.monotonic()
        await queue.publish(b"patient", tenant="acme", documents=1)
        assert time.monotonic() - started >= 0.3
    finally:
        releaser.join()
        raw.close()

    assert [d.body for d in await queue.receive(10, 0)] == [b"patient"]


async def test_unusable_file_raises_queue_unavailable(tmp_path: Path) -> None:
    not_a_database = tmp_path / "queue.db"
    not_a_database.write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(QueueUnavailable) as caught:
        await SqliteQueue(not_a_database).start()
    assert isinstance(caught.value.__cause__, sqlite3.Error)

    a_directory = tmp_path / "dir.db"
    a_directory.mkdir()
    with pytest.raises(QueueUnavailable):
        await SqliteQueue(a_directory).start()


async def test_database_errors_during_use_are_translated(
    db_path: Path, open_queue: Callable[..., SqliteQueue]
) -> None:
    queue = open_queue()
    await queue.start()
    with contextlib.closing(sqlite3.connect(db_path)) as raw:
        raw.execute("DROP TABLE messages")
        raw.commit()

    with pytest.raises(QueueUnavailable) as caught:
        await queue.publish(b"nowhere", tenant="acme", documents=1)
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    with pytest.raises(QueueUnavailable):
        await queue.backlog()


async def test_calls_before_start_raise_queue_unavailable(db_path: Path) -> None:
    queue = SqliteQueue(db_path)
    with pytest.raises(QueueUnavailable):
        await queue.ping()
    with pytest.raises(QueueUnavailable):
        await queue.receive(1, 0)


def test_claims_use_the_indexes(tmp_path: Path) -> None:
    """A claim must cost O(batch), not O(leased or delayed rows): it reads the partial indexes."""
    path = tmp_path / "queue.db"
    asyncio.run(_create(path))
    with contextlib.closing(sqlite3.connect(path)) as raw:
        for sql, args in (
            (sqlite_queue._PROMOTE_DUE, (time.time(),)),
            (sqlite_queue._SELECT_READY, (10,)),
            (sqlite_queue._ANY_AVAILABLE, (time.time(),)),
        ):
            plan = " | ".join(row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + sql, args))
            assert "USING INDEX messages_" in plan, plan
            assert "SCAN messages |" not in plan + " |", plan


async def _create(path: Path) -> None:
    queue = SqliteQueue(path)
    await queue.start()
    await queue.close()
