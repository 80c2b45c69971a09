"""The production shape of tenantsearch as real processes, for reliability tests and benchmarks.

One ``tenantsearch api`` process and any number of ``tenantsearch indexer`` processes, each in its
own process group with its output in a log file, wired to a given OpenSearch node, RabbitMQ broker
and PostgreSQL database. Every stack gets its own RabbitMQ queue name and OpenSearch index prefix,
so stacks on one broker and one node never see each other's writes::

    with postgres_database(postgres_url) as database_url:
        with Stack(tmp_path, StackConfig(opensearch_url, rabbitmq_url, database_url)) as stack:
            stack.start()                  # the API (ready: /readyz answers 200), one indexer
            stack.kill_indexer()           # SIGKILL: no shutdown code runs
            stack.start_indexer()          # a new one (ready: it has started consuming)
    # leaving the block stops every process (SIGTERM, then SIGKILL) and drops the index prefix

Processes are :class:`tests.support.server.ServerProcess` objects started with another command;
any still running when the interpreter exits (an aborted run) are killed then.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from tenantsearch.app import build_backend
from tenantsearch.settings import load_settings
from tests.support.api import ADMIN_KEY
from tests.support.opensearch import drop_prefix, new_prefix
from tests.support.server import ServerProcess, process_env

__all__ = ["Stack", "StackConfig", "TenantsearchProcess"]

START_TIMEOUT = 60.0
INDEXER_READY_LINE = b'"indexer_started"'

_live: set[TenantsearchProcess] = set()
_live_lock = threading.Lock()


def new_queue_name() -> str:
    return f"ts-test.{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class StackConfig:
    """Where a stack's processes find their services; ``env`` adds ``TENANTSEARCH_*`` settings
    for every process of the stack (per-process settings go to ``start_indexer(env=...)``)."""

    opensearch_url: str
    rabbitmq_url: str
    database_url: str
    queue: str = field(default_factory=new_queue_name)
    index_prefix: str = field(default_factory=new_prefix)
    env: Mapping[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        return {
            "TENANTSEARCH_ADMIN_KEY": ADMIN_KEY,
            "TENANTSEARCH_DATABASE_URL": self.database_url,
            "TENANTSEARCH_SEARCH_BACKEND": "opensearch",
            "TENANTSEARCH_OPENSEARCH_URL": self.opensearch_url,
            "TENANTSEARCH_OPENSEARCH_INDEX_PREFIX": self.index_prefix,
            "TENANTSEARCH_OPENSEARCH_SHARDS": "1",
            "TENANTSEARCH_OPENSEARCH_REPLICAS": "0",  # one node: replicas would stay unassigned
            "TENANTSEARCH_QUEUE_BACKEND": "rabbitmq",
            "TENANTSEARCH_RABBITMQ_URL": self.rabbitmq_url,
            "TENANTSEARCH_RABBITMQ_QUEUE": self.queue,
            "TENANTSEARCH_LOG_FORMAT": "json",
            # The write path is under test here, not the rate limiter (tests/*/test_*limits*):
            # no plan limit may turn the tests' bursts away.
            "TENANTSEARCH_DEFAULT_PLAN": "unlimited",
            **self.env,
        }


class TenantsearchProcess(ServerProcess):
    """``python -m tenantsearch <command>`` (``api``, ``indexer``, ``serve``) as a ServerProcess:
    the same environment, process group, ``kill()`` (SIGKILL) and ``stop()`` (SIGTERM). Ready
    means ``/readyz`` answers 200 for a process that serves HTTP, and the ``indexer_started`` log
    line for an indexer. Its output goes to ``log_path``."""

    def __init__(
        self, command: str, data_dir: Path, log_path: Path, env: Mapping[str, str]
    ) -> None:
        super().__init__(data_dir, env)
        self.command = command
        self.stdout_path = log_path
        self._log_offset = 0  # where this run's output starts in the log

    @property
    def log_path(self) -> Path:
        return self.stdout_path

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"tenantsearch {self.command} was never started")
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the process and return at once (see :meth:`wait_ready`)."""
        env = process_env(self.port, self.data_dir, self.extra_env)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tenantsearch", self.command],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        with _live_lock:
            _live.add(self)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(
                    f"tenantsearch {self.command} exited early; log tail:\n{self.log_tail()}"
                )
            if self._ready():
                return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(
            f"tenantsearch {self.command} not ready after {timeout}s; log tail:\n{self.log_tail()}"
        )

    def ready(self) -> bool:
        """Running and ready (see the class docstring); does not wait."""
        return self.running() and self._ready()

    def _ready(self) -> bool:
        if self.command == "indexer":
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return INDEXER_READY_LINE in log.read()
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def rss_bytes(self) -> int:
        """Resident set size (``VmRSS`` of /proc/<pid>/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def kill(self) -> None:
        super().kill()
        self._forget()

    def stop(self) -> bool:
        try:
            return super().stop()
        finally:
            self._forget()

    def _forget(self) -> None:
        if not self.running():
            with _live_lock:
                _live.discard(self)


class Stack:
    """An API process and its indexers (see the module docstring)."""

    def __init__(self, tmp_dir: Path, config: StackConfig) -> None:
        self.config = config
        self.directory = Path(tmp_dir) / f"stack-{config.index_prefix}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.api = TenantsearchProcess(
            "api", self.directory / "api", self.directory / "api.log", config.environment()
        )
        self.indexers: list[TenantsearchProcess] = []
        self.more_apis: list[TenantsearchProcess] = []

    @property
    def url(self) -> str:
        return self.api.url

    @property
    def live_indexers(self) -> list[TenantsearchProcess]:
        return [p for p in self.indexers if p.running()]

    def start(self, *, indexers: int = 1, indexer_env: Mapping[str, str] | None = None) -> None:
        """The API and ``indexers`` indexers, started together (start-up is mostly imports);
        returns once every one is ready. The engine's indices are made first, from here, as a
        deployment's first process would: several processes creating them at the same moment
        can fail to start (a bug of the OpenSearch adapter, see ``prepare_engine``)."""
        self.prepare_engine()
        self.api.spawn()
        started = [self.start_indexer(env=indexer_env, wait=False) for _ in range(indexers)]
        for process in [self.api, *started]:
            process.wait_ready()

    def prepare_engine(self) -> None:
        """Create the stack's index template, indices and aliases with the same adapter and
        settings its processes use. (Started at once on a fresh prefix, OpenSearchBackend.start
        of several processes fails in most of them: the mapping lookup of ``_size`` answers 404,
        taken as "the search indices are missing".)"""

        async def create() -> None:
            backend = build_backend(load_settings(environ=self.config.environment()))
            try:
                await backend.start()
            finally:
                await backend.close()

        asyncio.run(create())

    def add_api(self, *, env: Mapping[str, str] | None = None) -> TenantsearchProcess:
        """Another API process on the stack's services (not started yet), with ``env`` added to
        its environment; stopped with the stack."""
        n = len(self.more_apis) + 2
        process = TenantsearchProcess(
            "api",
            self.directory / f"api-{n}",
            self.directory / f"api-{n}.log",
            {**self.config.environment(), **(env or {})},
        )
        self.more_apis.append(process)
        return process

    def start_indexer(
        self, *, env: Mapping[str, str] | None = None, wait: bool = True
    ) -> TenantsearchProcess:
        n = len(self.indexers) + 1
        process = TenantsearchProcess(
            "indexer",
            self.directory / f"indexer-{n}",
            self.directory / f"indexer-{n}.log",
            {
                **self.config.environment(),
                "TENANTSEARCH_LOG_LEVEL": "info",  # for the indexer_started line
                **(env or {}),
            },
        )
        self.indexers.append(process)
        if wait:
            process.start()
        else:
            process.spawn()
        return process

    def kill_indexer(self, process: TenantsearchProcess | None = None) -> TenantsearchProcess:
        """SIGKILL ``process`` (default: the oldest running indexer)."""
        if process is None:
            live = self.live_indexers
            if not live:
                raise RuntimeError("no indexer is running")
            process = live[0]
        process.kill()
        return process

    def indexer_logs(self) -> str:
        return "".join(p.output() for p in self.indexers)

    def stop(self) -> None:
        """Stop the indexers (each finishes its batch in hand), then the API."""
        for process in self.live_indexers:
            with contextlib.suppress(ProcessLookupError):
                process.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for process in [*self.indexers, *self.more_apis, self.api]:
            process.stop()
            process.kill()  # a no-op unless it did not stop in time

    def close(self) -> None:
        """Stop every process and drop the stack's indices and index template."""
        try:
            self.stop()
        finally:
            drop_prefix(self.config.opensearch_url, self.config.index_prefix)

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@atexit.register
def _kill_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live)
        _live.clear()
    for process in leftovers:
        if process.process is not None and process.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.process.pid, signal.SIGKILL)
