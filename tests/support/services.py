"""Throwaway *real* RabbitMQ, PostgreSQL and Redis servers for tests.

Each context manager starts a private server on free loopback ports, in its own directory, and
yields a handle with the client ``url`` and ``stop()`` / ``start()`` (a test can restart the server
on the same ports and data). Leaving the block stops the server and removes its directory, whatever
happened inside; a server that does not come up in time is stopped and reported with the tail of
its log. Servers still running when the interpreter exits (an aborted run) are stopped then.

How each server is started on these machines is in ``/work/shared/NOTES-services.md``; the
binaries come from Debian packages (``scripts/install-services``)::

    with rabbitmq(tmp_path) as broker:     # amqp://guest:guest@127.0.0.1:P/
        broker.stop(); broker.start()
    with postgres(tmp_path) as pg:         # postgresql+asyncpg://postgres@127.0.0.1:P/postgres
        with postgres_database(pg.url) as url:   # a fresh database, dropped afterwards
            ...
    with redis(tmp_path) as r:             # redis://127.0.0.1:P/0
        ...

RabbitMQ and PostgreSQL run as their own system users, which must reach their directory: when
``tmp_dir`` is private (pytest's base temp is mode 0700) the directory is made under the system
temp dir instead.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import psutil

from tests.support.server import free_port

__all__ = [
    "PG_BIN",
    "Service",
    "ServiceError",
    "free_port",
    "postgres",
    "postgres_database",
    "rabbitmq",
    "redis",
]

PG_BIN = Path("/usr/lib/postgresql/15/bin")

RABBITMQ_START_TIMEOUT = 60.0
POSTGRES_START_TIMEOUT = 30.0
REDIS_START_TIMEOUT = 10.0
STOP_TIMEOUT = 30.0

S = TypeVar("S", bound="Service")

_live: set[Service] = set()
_live_lock = threading.Lock()


class ServiceError(RuntimeError):
    """A test server could not be started (the message carries the tail of its log)."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _run(argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None) -> None:
    """Run a short command; raise :class:`ServiceError` with its output when it fails."""
    try:
        proc = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"{argv[0]} did not finish within {timeout}s") from exc
    if proc.returncode != 0:
        raise ServiceError(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )


def _traversable_by_others(path: Path) -> bool:
    """Whether another system user can reach ``path`` (every ancestor has o+x)."""
    return all(part.stat().st_mode & stat.S_IXOTH for part in (path, *path.parents))


def _service_dir(tmp_dir: Path, name: str, owner: str | None) -> Path:
    base = Path(tmp_dir)
    base.mkdir(parents=True, exist_ok=True)
    if owner is not None and not _traversable_by_others(base):
        base = Path(tempfile.gettempdir())
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
    if owner is not None:
        path.chmod(0o755)
        user = pwd.getpwnam(owner)
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


def _wait_until(
    ready: Callable[[], bool], *, alive: Callable[[], bool], timeout: float, what: str, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not alive():
            raise ServiceError(f"{what} exited before it was ready; log tail:\n{_tail(log)}")
        time.sleep(0.1)
    raise ServiceError(f"{what} was not ready after {timeout}s; log tail:\n{_tail(log)}")


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _kill_group(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL the process group of ``proc`` (its own session) and reap ``proc``."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _stop_group(proc: subprocess.Popen[bytes] | None, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process group of ``proc`` (its own session), SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)


class Service:
    """A running test server: ``url`` for clients, ``stop()`` / ``start()`` to restart it."""

    name = "service"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log_path = directory / "server.log"
        self.url = ""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _dispose(self) -> None:
        """Stop the server and everything it started; remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)


@contextlib.contextmanager
def _running(make: Callable[[Path], S], directory: Path) -> Iterator[S]:
    """Start ``make(directory)``; stop it and remove ``directory`` afterwards, whatever happens."""
    try:
        service = make(directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    with _live_lock:
        _live.add(service)
    try:
        service.start()
        yield service
    finally:
        with _live_lock:
            _live.discard(service)
        service._dispose()


@atexit.register
def _stop_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live)
        _live.clear()
    for service in leftovers:
        with contextlib.suppress(Exception):
            service._dispose()


# -- RabbitMQ ----------------------------------------------------------------------------------


class RabbitMq(Service):
    """A private RabbitMQ node: its own node name, AMQP, distribution and epmd ports.

    The node runs as the ``rabbitmq`` user (the Debian scripts insist); its epmd is started here,
    as a child of the test process, so it is stopped by pid rather than left behind.
    """

    name = "rabbitmq"

    def __init__(
        self, directory: Path, *, config: Sequence[str] = (), advanced: str = "[]"
    ) -> None:
        super().__init__(directory)
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"ts{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self._epmd: subprocess.Popen[bytes] | None = None
        self._server: subprocess.Popen[bytes] | None = None
        (directory / "mnesia").mkdir()
        (directory / "log").mkdir()
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "advanced.config").write_text(f"{advanced}.\n")
        (directory / "rabbitmq.conf").write_text(
            "loopback_users = none\n"
            # Tests publish 1 MB bodies in bursts; keep the node from blocking publishers on a
            # small machine (the defaults are sized for a dedicated server).
            "vm_memory_high_watermark.relative = 0.6\n"
            "disk_free_limit.absolute = 50MB\n" + "".join(f"{line}\n" for line in config)
        )
        rabbit = pwd.getpwnam("rabbitmq")
        for path in (directory, *directory.rglob("*")):
            os.chown(path, rabbit.pw_uid, rabbit.pw_gid)

    def _env(self) -> dict[str, str]:
        d = self.directory
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_FEATURE_FLAGS_FILE=str(d / "mnesia" / "feature_flags"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_LOGS="-",  # to stdout, which goes to server.log
        )
        return env

    def start(self, timeout: float = RABBITMQ_START_TIMEOUT) -> None:
        env = self._env()
        if self._epmd is None or self._epmd.poll() is not None:
            epmd = shutil.which("epmd") or next(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))
            self._epmd = subprocess.Popen(
                [str(epmd), "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            _wait_until(
                lambda: _port_open(self.epmd_port),
                alive=lambda: self._epmd is not None and self._epmd.poll() is None,
                timeout=10,
                what="epmd",
                log=self.log_path,
            )
        with self.log_path.open("ab") as log:
            self._server = subprocess.Popen(
                ["runuser", "-u", "rabbitmq", "--", "/usr/lib/rabbitmq/bin/rabbitmq-server"],
                env=env,
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_until(
                lambda: _amqp_ready(self.port),
                alive=lambda: self._server is not None and self._server.poll() is None,
                timeout=timeout,
                what=f"rabbitmq-server {self.node}",
                log=self.log_path,
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the broker (graceful: SIGTERM); its epmd keeps running until disposal."""
        server, self._server = self._server, None
        _stop_group(server)

    def kill(self) -> None:
        """SIGKILL the broker (a crash: nothing is flushed or closed); ``start`` recovers it."""
        server, self._server = self._server, None
        _kill_group(server)

    def freeze(self) -> None:
        """SIGSTOP every process of the broker: connections stay open and nothing answers (a
        broker stalled on its disk or in a long GC); :meth:`thaw` resumes it."""
        self._signal_group(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_group(signal.SIGCONT)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._server is None:
            raise RuntimeError("the broker is not running")
        os.killpg(self._server.pid, sig)

    def _dispose(self) -> None:
        try:
            self.stop()
        finally:
            epmd, self._epmd = self._epmd, None
            _stop_group(epmd, timeout=5)
            shutil.rmtree(self.directory, ignore_errors=True)


def _amqp_ready(port: int) -> bool:
    """Whether the broker answers the AMQP 0-9-1 protocol header with ``Connection.Start``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            frame = sock.recv(7)
    except OSError:
        return False
    return len(frame) == 7 and frame[0] == 1  # a method frame on channel 0


@contextlib.contextmanager
def rabbitmq(
    tmp_dir: Path, *, config: Sequence[str] = (), advanced: str = "[]"
) -> Iterator[RabbitMq]:
    """A private RabbitMQ broker; ``.url`` is its AMQP URL (user guest). ``config``: more
    ``rabbitmq.conf`` lines; ``advanced``: the Erlang term of ``advanced.config``."""
    directory = _service_dir(tmp_dir, "rabbitmq", "rabbitmq")
    maker = functools.partial(RabbitMq, config=config, advanced=advanced)
    with _running(maker, directory) as broker:
        yield broker


# -- PostgreSQL --------------------------------------------------------------------------------


class Postgres(Service):
    """A private PostgreSQL 15 cluster (trust auth, fsync off: tests need no durability).

    ``durable``: commits wait for their WAL to be written (``synchronous_commit`` on, as
    PostgreSQL's default), so a commit survives :meth:`kill` of every server process. fsync stays
    off: the kernel keeps what was written, and only a crash of the machine would lose it.
    """

    name = "postgres"

    def __init__(self, directory: Path, *, durable: bool = False) -> None:
        super().__init__(directory)
        self.durable = durable
        self.port = free_port()
        self.data = directory / "data"
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
        self._started = False
        _run(
            [
                "runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"),
                "-D", str(self.data), "-A", "trust", "-U", "postgres",
                "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
            ],
            timeout=60,
        )  # fmt: skip

    def start(self, timeout: float = POSTGRES_START_TIMEOUT) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        if not self.durable:
            options += " -c synchronous_commit=off"
        self._started = True
        try:
            _run(
                [
                    "runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"),
                    "-D", str(self.data), "-o", options, "-l", str(self.log_path),
                    "-w", "-t", str(int(timeout)), "start",
                ],
                timeout=timeout + 10,
            )  # fmt: skip
        except ServiceError as exc:
            self.stop()
            raise ServiceError(f"{exc}\nlog tail:\n{self.log_tail()}") from exc

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        # fast: roll back open transactions and disconnect clients instead of waiting for them.
        _run(
            [
                "runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"),
                "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop",
            ],
            timeout=40,
        )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL the postmaster and every server process at once (a crash: ``start`` then runs
        crash recovery from the WAL). Each server process is a session of its own (PostgreSQL
        calls setsid in every child), so they are found as the postmaster's children."""
        if not self._started:
            return
        self._started = False
        postmaster = psutil.Process(int((self.data / "postmaster.pid").read_text().split()[0]))
        doomed = [postmaster, *postmaster.children()]
        for process in doomed:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        # Dead at once, but the postmaster was started by pg_ctl, so init reaps them (here,
        # within ~2 s). Until then the old postmaster's pid still "exists" and a new postmaster
        # refuses to start on its lock file. A dead server's lock file is stale: remove it if
        # the zombies outlive the wait.
        _, left = psutil.wait_procs(doomed, timeout=10)
        if any(_still_running(process) for process in left):
            raise ServiceError(f"PostgreSQL processes survived SIGKILL: {left}")
        (self.data / "postmaster.pid").unlink(missing_ok=True)


def _still_running(process: psutil.Process) -> bool:
    """Whether ``process`` still runs (a zombie waiting to be reaped does not)."""
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def postgres(tmp_dir: Path, *, durable: bool = False) -> Iterator[Postgres]:
    """A private PostgreSQL server; ``.url`` is an asyncpg SQLAlchemy URL of db ``postgres``."""
    directory = _service_dir(tmp_dir, "postgres", "postgres")
    with _running(functools.partial(Postgres, durable=durable), directory) as server:
        yield server


def _psql(server_url: str, sql: str) -> None:
    """Run one statement as ``postgres`` on the server of ``server_url`` (over TCP)."""
    port = server_url.rsplit(":", 1)[1].split("/", 1)[0]
    _run(
        [str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
         "-p", port, "-U", "postgres", "-d", "postgres", "-c", sql],
        timeout=60,
    )  # fmt: skip


@contextlib.contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A new empty database on the server of ``server_url`` (a :func:`postgres` URL); yields its
    URL and drops it afterwards, disconnecting whoever is still connected."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    _psql(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield server_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        _psql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- Redis -------------------------------------------------------------------------------------


class Redis(Service):
    """A private redis-server without persistence."""

    name = "redis"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._server: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = REDIS_START_TIMEOUT) -> None:
        with self.log_path.open("ab") as log:
            self._server = subprocess.Popen(
                [
                    "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--daemonize", "no",
                    "--dir", str(self.directory),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            _wait_until(
                lambda: _redis_ping(self.port),
                alive=lambda: self._server is not None and self._server.poll() is None,
                timeout=timeout,
                what="redis-server",
                log=self.log_path,
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        server, self._server = self._server, None
        _stop_group(server)


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis(tmp_dir: Path) -> Iterator[Redis]:
    """A private Redis server; ``.url`` is its ``redis://`` URL."""
    with _running(Redis, _service_dir(tmp_dir, "redis", None)) as server:
        yield server
