"""The embedded Queue adapter: a durable queue in one SQLite file.

It owns the file's schema and every statement run against it. Several processes may share the
file (the API process publishes, an indexer process receives): every write is a short
``BEGIN IMMEDIATE`` transaction, WAL mode lets readers run beside the writer, and
``synchronous=FULL`` makes each commit durable before the call returns.

How a message moves:

- ``publish`` inserts it ready (``ready = 1``); ids grow monotonically, so ``ORDER BY id`` is
  publish order.
- ``receive`` claims ready rows in id order: ``ready = 0``, ``attempts + 1``, a fresh lease token,
  ``available_at = leased_until = now + lease_seconds``. The tag is ``"<id>.<token>"``.
- A row with ``ready = 0`` waits for ``available_at`` (a lease or a retry delay). Every claim
  first promotes the rows whose time has come back to ``ready = 1``, so an expired lease (a
  crashed consumer) or a finished delay makes the message deliverable again. Promotion keeps the
  lease token: a consumer whose lease ran out may still ack until someone else claims the row.
- ``ack``, ``retry`` and ``dead_letter`` match on id *and* token, so a stale delivery never touches
  a newer lease of the same message.

Two partial indexes keep a claim proportional to its batch (plus the rows it promotes), whatever
the number of leased or delayed rows: ``messages_ready`` (id order of ready rows) and
``messages_waiting`` (due time of waiting rows). Bodies live in their own table, referenced by
``body_id`` from a message or a dead letter: SQLite rewrites a whole record (overflow pages
included) when one of its columns changes size, so a lease, a retry or a move to the dead letters
would otherwise copy a 1 MB body each time; here they touch one small row.

Blocking SQLite calls run on one dedicated thread that owns the connection; the event loop only
awaits them. Receivers in this process are woken at once by publish, retry and replay; receivers
in other processes notice new work by polling (a cheap read, no write lock) every
:data:`POLL_INTERVAL` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from tenantsearch.queue.port import Backlog, DeadLetter, Delivery, QueueUnavailable

__all__ = ["POLL_INTERVAL", "SqliteQueue"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

POLL_INTERVAL = 0.05
"""Seconds between looks for work published by other processes while ``receive`` waits."""

_BUSY_TIMEOUT_MS = 5_000
_BUSY_ATTEMPTS = 3
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SCHEMA_VERSION = 1
_WAL_SIZE_LIMIT = 64 * 1024 * 1024

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    documents INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    ready INTEGER NOT NULL,
    available_at REAL NOT NULL,
    leased_until REAL,
    lease_token TEXT,
    body_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bodies (
    id INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (id) WHERE ready = 1;
CREATE INDEX IF NOT EXISTS messages_waiting ON messages (available_at) WHERE ready = 0;
CREATE INDEX IF NOT EXISTS messages_tenant ON messages (tenant, documents, bytes);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    documents INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    dead_at REAL NOT NULL,
    body_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_tenant ON dead_letters (tenant);
PRAGMA user_version = {_SCHEMA_VERSION};
"""

# Rows whose lease or retry delay has run out become deliverable again.
_PROMOTE_DUE = """
UPDATE messages SET ready = 1, leased_until = NULL
WHERE ready = 0 AND available_at <= ?
"""
_SELECT_READY = """
SELECT m.id, m.tenant, m.attempts, b.data
FROM messages AS m INDEXED BY messages_ready JOIN bodies AS b ON b.id = m.body_id
WHERE m.ready = 1 ORDER BY m.id LIMIT ?
"""
_ANY_AVAILABLE = """
SELECT EXISTS (SELECT 1 FROM messages INDEXED BY messages_ready WHERE ready = 1)
    OR EXISTS (
        SELECT 1 FROM messages INDEXED BY messages_waiting WHERE ready = 0 AND available_at <= ?
    )
"""
_LEASE = """
UPDATE messages
SET ready = 0, attempts = attempts + 1, available_at = ?, leased_until = ?, lease_token = ?
WHERE id = ?
"""
_RELEASE = """
UPDATE messages SET ready = ?, available_at = ?, leased_until = NULL, lease_token = NULL
WHERE id = ? AND lease_token = ?
"""
_TO_DEAD_LETTERS = """
INSERT INTO dead_letters
    (message_id, tenant, documents, bytes, attempts, reason, dead_at, body_id)
SELECT id, tenant, documents, bytes, attempts, ?, ?, body_id FROM messages WHERE id = ?
"""


def _is_busy(exc: sqlite3.Error) -> bool:
    return (exc.sqlite_errorcode & 0xFF) in (_SQLITE_BUSY, _SQLITE_LOCKED)


@contextlib.contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A short write transaction that takes the write lock up front.

    ``BEGIN IMMEDIATE`` waits (``busy_timeout``) for the lock instead of failing later, when a
    read transaction would have to be upgraded and SQLite returns SQLITE_BUSY at once.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _parse_tag(tag: str) -> tuple[int, str] | None:
    message_id, sep, token = tag.partition(".")
    if not sep or not token or not message_id.isdigit():
        return None
    return int(message_id), token


class SqliteQueue:
    """The Queue port on one SQLite file; see the module docstring for how it works.

    ``release_leases_on_start`` makes every leased message deliverable at once when the queue
    starts. Only the sole consumer of the file may ask for it (the single-process embedded
    server, whose previous instance may have been killed mid-batch): it would hand a live
    consumer's messages to someone else.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_deliveries: int = 5,
        lease_seconds: float = 300.0,
        release_leases_on_start: bool = False,
    ) -> None:
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self._path = Path(path)
        self._max_deliveries = max_deliveries
        self._lease_seconds = lease_seconds
        self._release_leases_on_start = release_leases_on_start
        self._executor: ThreadPoolExecutor | None = None
        # Touched only on the worker thread: the connection, and the leases this instance holds
        # (id -> token), which close() gives back so they need not wait for the lease to end.
        self._conn: sqlite3.Connection | None = None
        self._leases: dict[int, str] = {}
        # Touched only on the event loop: one event per waiting receive() call.
        self._waiters: set[asyncio.Event] = set()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._executor is not None:
            return
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QueueUnavailable(f"cannot create the queue directory: {exc}") from exc
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-queue")
        try:
            await asyncio.wrap_future(executor.submit(self._open_sync))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.wrap_future(executor.submit(self._close_sync))
        finally:
            executor.shutdown(wait=False)
            self._notify()  # waiting receivers fail fast instead of sleeping out their wait

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT 1 FROM messages LIMIT 1").fetchall())

    # -- producer ------------------------------------------------------------------------------

    async def publish(self, body: bytes, *, tenant: str, documents: int) -> None:
        if documents < 0:
            raise ValueError("documents must not be negative")
        await self._run(functools.partial(self._publish_sync, bytes(body), tenant, documents))
        self._notify()

    # -- consumer ------------------------------------------------------------------------------

    async def receive(self, max_messages: int, wait_seconds: float) -> list[Delivery]:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait_seconds)
        woken = True  # the first look claims directly
        while True:
            # Registered before looking, so a publish between the look and the wait is not missed.
            waiter = asyncio.Event()
            self._waiters.add(waiter)
            try:
                if woken or await self._run(self._any_available_sync):
                    deliveries = await self._claim(max_messages)
                    if deliveries:
                        return deliveries
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return []
                try:
                    async with asyncio.timeout(min(POLL_INTERVAL, remaining)):
                        await waiter.wait()
                    woken = True
                except TimeoutError:
                    woken = False
            finally:
                self._waiters.discard(waiter)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        keys = [key for key in (_parse_tag(d.tag) for d in deliveries) if key is not None]
        if keys:
            await self._run(functools.partial(self._ack_sync, keys))

    async def retry(self, delivery: Delivery, delay_seconds: float) -> None:
        key = _parse_tag(delivery.tag)
        if key is None:
            return
        if await self._run(functools.partial(self._retry_sync, key, delay_seconds)):
            self._notify()

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        key = _parse_tag(delivery.tag)
        if key is not None:
            await self._run(functools.partial(self._dead_letter_sync, key, reason))

    # -- operations ----------------------------------------------------------------------------

    async def backlog(self, tenant: str | None = None) -> Backlog:
        return await self._run(functools.partial(self._backlog_sync, tenant))

    async def list_dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return await self._run(functools.partial(self._list_dead_letters_sync, limit))

    async def replay_dead_letter(self, dead_letter_id: str) -> bool:
        if not dead_letter_id.isdigit():
            return False
        replayed = await self._run(functools.partial(self._replay_sync, int(dead_letter_id)))
        if replayed:
            self._notify()
        return replayed

    async def purge_dead_letters(self, tenant: str | None = None) -> int:
        return await self._run(functools.partial(self._purge_sync, tenant))

    # -- event-loop side helpers ---------------------------------------------------------------

    def _notify(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        executor = self._executor
        if executor is None:
            raise QueueUnavailable("the queue is not started or already closed")
        try:
            future = executor.submit(self._in_worker, fn)
        except RuntimeError as exc:  # shut down between the check and the submit
            raise QueueUnavailable("the queue is closed") from exc
        return await asyncio.wrap_future(future)

    async def _claim(self, max_messages: int) -> list[Delivery]:
        executor = self._executor
        if executor is None:
            raise QueueUnavailable("the queue is not started or already closed")
        future = executor.submit(self._in_worker, functools.partial(self._claim_sync, max_messages))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # The claim may still commit on the worker thread; give its messages back at once
            # rather than leaving them invisible until their lease ends. The worker runs jobs in
            # order, so this runs after the claim has finished (or was cancelled before it ran).
            with contextlib.suppress(RuntimeError):
                executor.submit(self._unclaim_sync, future)
            raise

    # -- worker-thread side --------------------------------------------------------------------

    def _in_worker(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the connection, retrying lock contention; translate SQLite errors."""
        conn = self._conn
        if conn is None:
            raise QueueUnavailable("the queue is not started or already closed")
        pause = 0.01
        for attempt in range(1, _BUSY_ATTEMPTS + 1):
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                if _is_busy(exc) and attempt < _BUSY_ATTEMPTS:
                    _log.warning("sqlite queue busy, retrying (attempt %d)", attempt)
                    time.sleep(pause)
                    pause *= 4
                    continue
                raise QueueUnavailable(f"queue database error: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _open_sync(self) -> None:
        pause = 0.01
        for attempt in range(1, _BUSY_ATTEMPTS + 1):
            conn: sqlite3.Connection | None = None
            try:
                conn = sqlite3.connect(
                    self._path,
                    timeout=_BUSY_TIMEOUT_MS / 1000,
                    isolation_level=None,  # autocommit; transactions are explicit
                )
                self._configure_sync(conn)
            except BaseException as exc:
                if conn is not None:
                    conn.close()
                if not isinstance(exc, sqlite3.Error):
                    raise
                if _is_busy(exc) and attempt < _BUSY_ATTEMPTS:
                    time.sleep(pause)
                    pause *= 4
                    continue
                raise QueueUnavailable(f"cannot open the queue database: {exc}") from exc
            self._conn = conn
            self._leases.clear()
            return

    def _configure_sync(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise QueueUnavailable(f"the queue database cannot use WAL mode (got {mode!r})")
        # FULL: a commit (publish, ack, ...) is on disk before it returns, even across power loss.
        conn.execute("PRAGMA synchronous = FULL")
        # Debian builds SQLite with secure_delete on, which zero-fills every freed page: each ack of
        # a 1 MB message would write 1 MB of zeros and cut receive+ack throughput about tenfold.
        # FAST zeroes only what is written anyway; freed body pages keep stale bytes until reused.
        conn.execute("PRAGMA secure_delete = FAST")
        # The WAL is reused in place after each checkpoint; this only trims it after a spike.
        conn.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
        with _write_transaction(conn):
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > _SCHEMA_VERSION:
                raise QueueUnavailable(
                    f"the queue database has schema version {version}, newer than this code"
                )
            if version < _SCHEMA_VERSION:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            if self._release_leases_on_start:
                conn.execute(
                    "UPDATE messages SET ready = 1, available_at = ?, leased_until = NULL,"
                    " lease_token = NULL WHERE leased_until IS NOT NULL",
                    (time.time(),),
                )

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self._leases:
                # The consumer goes away: its unacked messages are delivered again now (attempts
                # kept), like a broker requeueing when a channel closes.
                now = time.time()
                with _write_transaction(conn):
                    conn.executemany(
                        _RELEASE,
                        [(1, now, mid, token) for mid, token in self._leases.items()],
                    )
        except sqlite3.Error:
            _log.warning("could not release leases on close; they end on expiry", exc_info=True)
        finally:
            self._leases.clear()
            conn.close()

    def _publish_sync(
        self, body: bytes, tenant: str, documents: int, conn: sqlite3.Connection
    ) -> None:
        with _write_transaction(conn):
            body_id = conn.execute("INSERT INTO bodies (data) VALUES (?)", (body,)).lastrowid
            conn.execute(
                "INSERT INTO messages (tenant, documents, bytes, attempts, ready, available_at,"
                " body_id) VALUES (?, ?, ?, 0, 1, ?, ?)",
                (tenant, documents, len(body), time.time(), body_id),
            )

    def _any_available_sync(self, conn: sqlite3.Connection) -> bool:
        (found,) = conn.execute(_ANY_AVAILABLE, (time.time(),)).fetchone()
        return bool(found)

    def _claim_sync(self, max_messages: int, conn: sqlite3.Connection) -> list[Delivery]:
        now = time.time()
        until = now + self._lease_seconds
        deliveries: list[Delivery] = []
        leased: dict[int, str] = {}
        with _write_transaction(conn):
            conn.execute(_PROMOTE_DUE, (now,))
            while len(deliveries) < max_messages:
                rows = conn.execute(_SELECT_READY, (max_messages - len(deliveries),)).fetchall()
                if not rows:
                    break
                for message_id, tenant, attempts, body in rows:
                    if attempts >= self._max_deliveries:
                        reason = f"delivery limit exceeded ({attempts} deliveries)"
                        self._move_to_dead_letters(conn, message_id, reason, now)
                        continue
                    token = secrets.token_hex(8)
                    conn.execute(_LEASE, (until, until, token, message_id))
                    leased[message_id] = token
                    deliveries.append(
                        Delivery(
                            tag=f"{message_id}.{token}",
                            body=body,
                            tenant=tenant,
                            attempts=attempts + 1,
                        )
                    )
        self._leases.update(leased)
        return deliveries

    def _unclaim_sync(self, claim: Future[list[Delivery]]) -> None:
        """Undo a claim whose receive() was cancelled: nobody saw these deliveries."""
        if claim.cancelled() or claim.exception() is not None or self._conn is None:
            return
        keys = [key for key in (_parse_tag(d.tag) for d in claim.result()) if key is not None]
        if not keys:
            return
        now = time.time()

        def unclaim(conn: sqlite3.Connection) -> None:
            with _write_transaction(conn):
                conn.executemany(
                    "UPDATE messages SET ready = 1, attempts = attempts - 1, available_at = ?,"
                    " leased_until = NULL, lease_token = NULL WHERE id = ? AND lease_token = ?",
                    [(now, mid, token) for mid, token in keys],
                )

        try:
            self._in_worker(unclaim)
        except QueueUnavailable:
            _log.warning("could not give back a cancelled claim; it ends on expiry", exc_info=True)
        for mid, _ in keys:
            self._leases.pop(mid, None)

    def _forget(self, keys: Sequence[tuple[int, str]]) -> None:
        for mid, token in keys:
            if self._leases.get(mid) == token:
                del self._leases[mid]

    def _ack_sync(self, keys: Sequence[tuple[int, str]], conn: sqlite3.Connection) -> None:
        with _write_transaction(conn):
            conn.executemany(
                "DELETE FROM bodies WHERE id ="
                " (SELECT body_id FROM messages WHERE id = ? AND lease_token = ?)",
                keys,
            )
            conn.executemany("DELETE FROM messages WHERE id = ? AND lease_token = ?", keys)
        self._forget(keys)

    def _retry_sync(
        self, key: tuple[int, str], delay_seconds: float, conn: sqlite3.Connection
    ) -> bool:
        delay = max(0.0, delay_seconds)
        ready = 1 if delay == 0 else 0
        with _write_transaction(conn):
            changed = conn.execute(_RELEASE, (ready, time.time() + delay, *key)).rowcount
        self._forget([key])
        return changed > 0 and ready == 1

    def _dead_letter_sync(
        self, key: tuple[int, str], reason: str, conn: sqlite3.Connection
    ) -> None:
        with _write_transaction(conn):
            row = conn.execute(
                "SELECT 1 FROM messages WHERE id = ? AND lease_token = ?", key
            ).fetchone()
            if row is not None:
                self._move_to_dead_letters(conn, key[0], reason, time.time())
        self._forget([key])

    @staticmethod
    def _move_to_dead_letters(
        conn: sqlite3.Connection, message_id: int, reason: str, now: float
    ) -> None:
        conn.execute(_TO_DEAD_LETTERS, (reason, now, message_id))
        conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))

    def _backlog_sync(self, tenant: str | None, conn: sqlite3.Connection) -> Backlog:
        sql = "SELECT count(*), coalesce(sum(documents), 0), coalesce(sum(bytes), 0) FROM messages"
        if tenant is None:
            row = conn.execute(sql).fetchone()
        else:
            row = conn.execute(sql + " WHERE tenant = ?", (tenant,)).fetchone()
        return Backlog(messages=row[0], documents=row[1], bytes=row[2])

    def _list_dead_letters_sync(self, limit: int, conn: sqlite3.Connection) -> list[DeadLetter]:
        rows = conn.execute(
            "SELECT d.id, d.tenant, b.data, d.reason, d.attempts, d.dead_at"
            " FROM dead_letters AS d JOIN bodies AS b ON b.id = d.body_id"
            " ORDER BY d.id LIMIT ?",
            (max(0, limit),),
        ).fetchall()
        return [
            DeadLetter(
                id=str(dl_id),
                tenant=tenant,
                body=body,
                reason=reason,
                attempts=attempts,
                dead_at=datetime.fromtimestamp(dead_at, tz=UTC),
            )
            for dl_id, tenant, body, reason, attempts, dead_at in rows
        ]

    def _replay_sync(self, dead_letter_id: int, conn: sqlite3.Connection) -> bool:
        with _write_transaction(conn):
            inserted = conn.execute(
                "INSERT INTO messages (tenant, documents, bytes, attempts, ready, available_at,"
                " body_id) SELECT tenant, documents, bytes, 0, 1, ?, body_id FROM dead_letters"
                " WHERE id = ?",
                (time.time(), dead_letter_id),
            ).rowcount
            if inserted:
                conn.execute("DELETE FROM dead_letters WHERE id = ?", (dead_letter_id,))
        return inserted > 0

    def _purge_sync(self, tenant: str | None, conn: sqlite3.Connection) -> int:
        with _write_transaction(conn):
            if tenant is None:
                conn.execute("DELETE FROM bodies WHERE id IN (SELECT body_id FROM dead_letters)")
                cursor = conn.execute("DELETE FROM dead_letters")
            else:
                conn.execute(
                    "DELETE FROM bodies WHERE id IN"
                    " (SELECT body_id FROM dead_letters WHERE tenant = ?)",
                    (tenant,),
                )
                cursor = conn.execute("DELETE FROM dead_letters WHERE tenant = ?", (tenant,))
        return cursor.rowcount
