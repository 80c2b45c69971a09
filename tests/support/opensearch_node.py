"""Start and stop throwaway *real* OpenSearch 2.19 nodes for tests.

The node is ``tools/opensearch-node`` (a small launcher around OpenSearch's Maven Central
artifacts, see its README). Each node is its own JVM, started through
``tools/opensearch-node/run.sh`` in its own process group, so a test can SIGKILL a node
without touching anything else.

Typical use::

    from tests.support.opensearch_node import start_cluster, start_node

    with start_node(tmp_path, node_name="n1") as node:
        node.request("PUT", "/docs", {"mappings": {...}})

    with start_cluster(tmp_path, n=3) as cluster:
        cluster[0].kill()
        cluster[1].request("GET", "/_cluster/health")

Only the standard library is used. Every node started here is also killed at interpreter
exit, and the JVM itself exits when the Python process that started it is gone
(``OPENSEARCH_NODE_PARENT_PID``), so an aborted test run leaks no JVMs.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = REPO_ROOT / "tools" / "opensearch-node"
RUN_SH = NODE_DIR / "run.sh"
JAR = NODE_DIR / "target" / "opensearch-node.jar"
LIB_DIR = NODE_DIR / "target" / "lib"

DEFAULT_HEAP = "512m"
DEFAULT_CLUSTER_NAME = "tenantsearch-test"
START_TIMEOUT_S = 120.0
BUILD_TIMEOUT_S = 900.0

_build_lock = threading.Lock()
_built = False
_live_nodes: set[OpenSearchNode] = set()
_live_lock = threading.Lock()


class OpenSearchNodeError(RuntimeError):
    """A node could not be built, started or reached."""


class OpenSearchHTTPError(OpenSearchNodeError):
    """OpenSearch answered with a status the caller did not expect."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> HTTP {status}: {body[:2000]}")
        self.status = status
        self.body = body


# --------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------


def _needs_build() -> bool:
    if not JAR.is_file() or not LIB_DIR.is_dir():
        return True
    jar_mtime = JAR.stat().st_mtime
    sources = [NODE_DIR / "pom.xml", *(p for p in (NODE_DIR / "src").rglob("*") if p.is_file())]
    return any(p.stat().st_mtime > jar_mtime for p in sources)


def build_node() -> Path:
    """Build the launcher once (Maven + AppCDS archive) unless up to date; return its dir.

    Runs ``run.sh --prepare``, which serialises builds with ``flock`` on
    ``target/.build.lock``, so several pytest workers (processes) calling this at once
    build once; within one process a lock and a flag make repeat calls free. With
    ``OPENSEARCH_NODE_SKIP_BUILD=1`` nothing is built and a missing jar is an error.
    """
    global _built
    with _build_lock:
        if _built and not _needs_build():
            return NODE_DIR
        if os.environ.get("OPENSEARCH_NODE_SKIP_BUILD") == "1":
            if _needs_build():
                raise OpenSearchNodeError(
                    f"{JAR} is missing or stale and OPENSEARCH_NODE_SKIP_BUILD=1"
                )
        else:
            (NODE_DIR / "target").mkdir(parents=True, exist_ok=True)
            log = NODE_DIR / "target" / "prepare.log"
            with log.open("ab") as out:  # appended: concurrent callers share it
                proc = subprocess.run(
                    ["bash", str(RUN_SH), "--prepare"],
                    cwd=NODE_DIR,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=BUILD_TIMEOUT_S,
                    check=False,
                )
            if proc.returncode != 0 or _needs_build():
                raise OpenSearchNodeError(
                    f"building {NODE_DIR} failed ({proc.returncode}):\n" + _tail(log, 60)
                )
        _built = True
        return NODE_DIR


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(n: int) -> list[int]:
    """Return ``n`` distinct free ports (all sockets are held until every port is chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(text.splitlines()[-lines:])


def http_request(
    method: str,
    url: str,
    body: object | None = None,
    *,
    timeout: float = 30.0,
    expect: Sequence[int] | None = None,
) -> tuple[int, Any]:
    """Send one request; return ``(status, parsed JSON body or text or None)``.

    ``body``: a dict (sent as JSON), a list of dicts (sent as NDJSON, for ``_bulk``), a
    ``str``/``bytes`` (sent as is, NDJSON content type) or None. Raises
    :class:`OpenSearchHTTPError` if ``expect`` is given and the status is not in it.
    """
    data: bytes | None
    content_type = "application/json"
    if body is None:
        data = None
    elif isinstance(body, bytes):
        data, content_type = body, "application/x-ndjson"
    elif isinstance(body, str):
        data, content_type = body.encode(), "application/x-ndjson"
    elif isinstance(body, list):
        data = "".join(json.dumps(line) + "\n" for line in body).encode()
        content_type = "application/x-ndjson"
    else:
        data = json.dumps(body).encode()
    # Only ever http://127.0.0.1:<port> URLs built by this module.
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            status, raw = int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        status, raw = int(e.code), e.read()
    text = raw.decode("utf-8", errors="replace")
    parsed: Any
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = text
    if expect is not None and status not in expect:
        raise OpenSearchHTTPError(method, url, status, text)
    return status, parsed


# --------------------------------------------------------------------------------------
# one node
# --------------------------------------------------------------------------------------


class OpenSearchNode:
    """One OpenSearch JVM started by :func:`start_node`.

    ``home`` (data, config) is deleted by :meth:`close`; the process output stays in
    ``log_path`` (next to ``home``) for debugging.
    """

    def __init__(
        self,
        *,
        node_name: str,
        cluster_name: str,
        home: Path,
        log_path: Path,
        http_port: int,
        transport_port: int,
        process: subprocess.Popen[bytes],
        started_at: float,
        argv: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        single: bool = True,
    ) -> None:
        self.node_name = node_name
        self.cluster_name = cluster_name
        self.home = home
        self.log_path = log_path
        self.http_port = http_port
        self.transport_port = transport_port
        self.process = process
        self.started_at = started_at
        self.startup_seconds: float | None = None
        self._argv = list(argv)
        self._env = dict(env or {})
        self.single = single  # discovery.type=single-node

    def __repr__(self) -> str:
        return f"OpenSearchNode({self.node_name!r}, url={self.url!r}, pid={self.pid})"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_running(self) -> bool:
        return self.process.poll() is None

    def rss_bytes(self) -> int | None:
        """Resident set size of the JVM (from /proc), or None if it is not running."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text(encoding="ascii")
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return None

    def pss_bytes(self) -> int | None:
        """Proportional set size (shared pages, e.g. the CDS archive, split between JVMs)."""
        try:
            rollup = Path(f"/proc/{self.pid}/smaps_rollup").read_text(encoding="ascii")
        except OSError:
            return None
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
        return None

    def log_tail(self, lines: int = 40) -> str:
        """The launcher's ERROR lines (the cause of a failed start), then the last lines."""
        tail = _tail(self.log_path, lines)
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return tail
        errors = [ln for ln in text.splitlines() if ln.startswith("opensearch-node: ERROR")]
        return "\n".join([*errors, "...", tail]) if errors else tail

    # -- HTTP ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: object | None = None,
        *,
        timeout: float = 30.0,
        expect: Sequence[int] | None = (200, 201),
    ) -> Any:
        """Request ``path`` on this node and return the parsed JSON body.

        Raises :class:`OpenSearchHTTPError` for a status outside ``expect`` (pass
        ``expect=None`` to accept any status).
        """
        _, parsed = http_request(method, self.url + path, body, timeout=timeout, expect=expect)
        return parsed

    def wait_ready(self, timeout: float = START_TIMEOUT_S, *, cluster: bool = True) -> None:
        """Wait until HTTP answers (and, with ``cluster``, a cluster manager is elected).

        Raises :class:`OpenSearchNodeError` with the log tail if the JVM exits or the
        deadline passes.
        """
        deadline = time.monotonic() + timeout
        path = "/_cluster/health?wait_for_status=yellow&timeout=1s" if cluster else "/"
        last_error = "no answer yet"
        while True:
            if not self.is_running():
                raise OpenSearchNodeError(
                    f"node {self.node_name} exited with code {self.process.returncode} "
                    f"before it was ready; last log lines ({self.log_path}):\n{self.log_tail()}"
                )
            try:
                status, body = http_request("GET", self.url + path, timeout=5.0)
                if status == 200:
                    if self.startup_seconds is None:
                        self.startup_seconds = time.monotonic() - self.started_at
                    return
                last_error = f"HTTP {status}: {str(body)[:300]}"
            except (OSError, urllib.error.URLError) as e:
                last_error = repr(e)
            if time.monotonic() > deadline:
                raise OpenSearchNodeError(
                    f"node {self.node_name} not ready after {timeout:.0f}s ({last_error}); "
                    f"last log lines ({self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(0.25)

    # -- lifecycle ----------------------------------------------------------------------

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)  # own process group: the JVM (run.sh exec'd into it)

    def kill(self) -> None:
        """SIGKILL the JVM (a crash: no clean shutdown) and reap it."""
        if self.is_running():
            self._signal(signal.SIGKILL)
        self.process.wait()
        _forget(self)

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the JVM again after :meth:`kill` or :meth:`stop`: same home (its data and
        translog, recovered at start), ports and settings; returns once it is ready, as
        :func:`start_node` does."""
        if self.is_running():
            raise OpenSearchNodeError(f"node {self.node_name} is still running")
        self.process = _launch(self._argv, self._env, self.home, self.log_path)
        self.started_at = time.monotonic()
        self.startup_seconds = None
        with _live_lock:
            _live_nodes.add(self)
        self.wait_ready(timeout, cluster=self.single)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (clean shutdown), then SIGKILL after ``timeout`` seconds."""
        if self.is_running():
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
        _forget(self)

    def close(self) -> None:
        """Stop the node and delete its home (data, config); keep ``log_path``."""
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> OpenSearchNode:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _forget(node: OpenSearchNode) -> None:
    with _live_lock:
        _live_nodes.discard(node)


@atexit.register
def _kill_leftovers() -> None:
    with _live_lock:
        nodes = list(_live_nodes)
    for node in nodes:
        node.kill()


def spawn_node(
    tmp_dir: Path,
    *,
    cluster_name: str = DEFAULT_CLUSTER_NAME,
    http_port: int | None = None,
    transport_port: int | None = None,
    seed_transport_ports: Sequence[int] | None = None,
    initial_managers: Sequence[str] | None = None,
    node_name: str | None = None,
    heap: str = DEFAULT_HEAP,
    repo_dir: Path | None = None,
    settings: Mapping[str, str] | None = None,
    fast_start: bool = True,
    java_opts: Sequence[str] = (),
) -> OpenSearchNode:
    """Start the JVM and return at once (see :func:`start_node`, which also waits)."""
    build_node()
    spare = iter(free_ports(2))  # distinct, in case both are needed
    http_port = http_port if http_port is not None else next(spare)
    transport_port = transport_port if transport_port is not None else next(spare)
    node_name = node_name or f"node-{http_port}"
    tmp_dir = Path(tmp_dir).resolve()
    home = tmp_dir / node_name
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    repo_dir = Path(repo_dir).resolve() if repo_dir is not None else tmp_dir / "snapshots"
    repo_dir.mkdir(parents=True, exist_ok=True)
    log_path = tmp_dir / f"{node_name}.log"

    s: dict[str, str] = {
        "path.home": str(home),
        "path.repo": str(repo_dir),
        "cluster.name": cluster_name,
        "node.name": node_name,
        "network.host": "127.0.0.1",
        "http.port": str(http_port),
        "transport.port": str(transport_port),
    }
    if seed_transport_ports is None and initial_managers is None:
        s["discovery.type"] = "single-node"
    else:
        if seed_transport_ports:
            s["discovery.seed_hosts"] = ",".join(f"127.0.0.1:{p}" for p in seed_transport_ports)
        if initial_managers:
            s["cluster.initial_cluster_manager_nodes"] = ",".join(initial_managers)
    s.update(settings or {})

    env = dict(os.environ)
    env["OPENSEARCH_HEAP"] = heap
    env["OPENSEARCH_FAST_START"] = "1" if fast_start else "0"
    if java_opts:
        env["OPENSEARCH_JAVA_OPTS"] = " ".join(
            [env.get("OPENSEARCH_JAVA_OPTS", ""), *java_opts]
        ).strip()
    env["OPENSEARCH_NODE_SKIP_BUILD"] = "1"  # built above; never build from run.sh here
    env["OPENSEARCH_NODE_PARENT_PID"] = str(os.getpid())
    argv = ["bash", str(RUN_SH), *(f"-E{k}={v}" for k, v in s.items())]
    process = _launch(argv, env, home, log_path)
    node = OpenSearchNode(
        node_name=node_name,
        cluster_name=cluster_name,
        home=home,
        log_path=log_path,
        http_port=http_port,
        transport_port=transport_port,
        process=process,
        started_at=time.monotonic(),
        argv=argv,
        env=env,
        single=s.get("discovery.type") == "single-node",
    )
    with _live_lock:
        _live_nodes.add(node)
    return node


def _launch(
    argv: Sequence[str], env: Mapping[str, str], home: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            cwd=home,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_node(
    tmp_dir: Path,
    *,
    cluster_name: str = DEFAULT_CLUSTER_NAME,
    http_port: int | None = None,
    transport_port: int | None = None,
    seed_transport_ports: Sequence[int] | None = None,
    initial_managers: Sequence[str] | None = None,
    node_name: str | None = None,
    heap: str = DEFAULT_HEAP,
    repo_dir: Path | None = None,
    settings: Mapping[str, str] | None = None,
    fast_start: bool = True,
    java_opts: Sequence[str] = (),
    timeout: float = START_TIMEOUT_S,
) -> OpenSearchNode:
    """Start one node under ``tmp_dir/<node_name>`` and wait until it is ready.

    With neither ``seed_transport_ports`` nor ``initial_managers`` the node runs
    ``discovery.type=single-node`` and this waits for cluster health yellow; otherwise it
    only waits for HTTP (the cluster forms once enough nodes are up, see
    :func:`start_cluster`). Ports default to free ones; ``path.repo`` defaults to
    ``tmp_dir/snapshots`` (shared by every node under the same ``tmp_dir``, as an ``fs``
    snapshot repository must be). Extra node settings go in ``settings``.

    ``fast_start`` (default) runs the JVM with the C1 JIT only
    (``-XX:TieredStopAtLevel=1``): about half the start-up CPU and ~50 MiB less RSS, at
    the price of slower steady-state throughput; pass ``False`` for benchmarks.
    ``java_opts`` are appended to the JVM options.

    The returned node is a context manager; leaving it (or :meth:`OpenSearchNode.close`)
    stops the JVM and deletes ``tmp_dir/<node_name>``.
    """
    single = seed_transport_ports is None and initial_managers is None
    # Ports chosen here can be taken by someone else before the JVM binds them (parallel
    # test workers): then retry with new ones. Ports given by the caller are not retried.
    attempts = 3 if http_port is None and transport_port is None else 1
    for attempt in range(1, attempts + 1):
        node = spawn_node(
            tmp_dir,
            cluster_name=cluster_name,
            http_port=http_port,
            transport_port=transport_port,
            seed_transport_ports=seed_transport_ports,
            initial_managers=initial_managers,
            node_name=node_name,
            heap=heap,
            repo_dir=repo_dir,
            settings=settings,
            fast_start=fast_start,
            java_opts=java_opts,
        )
        try:
            node.wait_ready(timeout, cluster=single)
        except OpenSearchNodeError as e:
            node.close()
            if attempt < attempts and "Address already in use" in str(e):
                continue
            raise
        except BaseException:
            node.close()
            raise
        return node
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------
# cluster
# --------------------------------------------------------------------------------------


class OpenSearchCluster:
    """The nodes of :func:`start_cluster`; indexable and iterable like a list of nodes."""

    def __init__(self, nodes: list[OpenSearchNode]) -> None:
        self.nodes = nodes

    def __getitem__(self, i: int) -> OpenSearchNode:
        return self.nodes[i]

    def __iter__(self) -> Iterator[OpenSearchNode]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def running(self) -> list[OpenSearchNode]:
        return [n for n in self.nodes if n.is_running()]

    def request(self, method: str, path: str, body: object | None = None, **kw: Any) -> Any:
        """Send the request to the first running node."""
        alive = self.running()
        if not alive:
            raise OpenSearchNodeError("no node of the cluster is running")
        return alive[0].request(method, path, body, **kw)

    def wait_for_health(
        self,
        status: str = "green",
        *,
        nodes: int | None = None,
        timeout: float = START_TIMEOUT_S,
        index: str = "",
    ) -> Any:
        """Wait until the cluster (or ``index``) reports ``status`` with ``nodes`` nodes."""
        want_nodes = nodes if nodes is not None else len(self.running())
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            for node in self.running():
                try:
                    _, last = http_request(
                        "GET",
                        f"{node.url}/_cluster/health/{index}?wait_for_status={status}"
                        f"&wait_for_nodes={want_nodes}&timeout=2s",
                        timeout=10.0,
                    )
                except (OSError, urllib.error.URLError) as e:
                    last = repr(e)
                    continue
                if (
                    isinstance(last, dict)
                    and not last.get("timed_out", True)
                    and last.get("number_of_nodes") == want_nodes
                ):
                    return last
                break
            time.sleep(0.25)
        raise OpenSearchNodeError(
            f"cluster not {status} with {want_nodes} nodes after {timeout:.0f}s: {last}"
        )

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> OpenSearchCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_cluster(
    tmp_dir: Path,
    n: int = 3,
    *,
    cluster_name: str = DEFAULT_CLUSTER_NAME,
    heap: str = DEFAULT_HEAP,
    node_name_prefix: str = "node",
    repo_dir: Path | None = None,
    settings: Mapping[str, str] | None = None,
    fast_start: bool = True,
    java_opts: Sequence[str] = (),
    wait_for_status: str = "green",
    timeout: float = 180.0,
) -> OpenSearchCluster:
    """Start ``n`` cluster-manager-eligible data nodes forming one cluster; wait for health.

    All JVMs start at once (each lists every transport port as a seed and every node as an
    initial cluster manager). Returns when ``wait_for_status`` (``green``/``yellow``) is
    reported with all ``n`` nodes joined. On failure every node is stopped.
    """
    ports = free_ports(2 * n)
    http_ports, transport_ports = ports[:n], ports[n:]
    names = [f"{node_name_prefix}-{i + 1}" for i in range(n)]
    repo = Path(repo_dir) if repo_dir is not None else Path(tmp_dir) / "snapshots"
    nodes: list[OpenSearchNode] = []
    cluster = OpenSearchCluster(nodes)
    try:
        for i in range(n):
            nodes.append(
                spawn_node(
                    tmp_dir,
                    cluster_name=cluster_name,
                    http_port=http_ports[i],
                    transport_port=transport_ports[i],
                    seed_transport_ports=transport_ports,
                    initial_managers=names,
                    node_name=names[i],
                    heap=heap,
                    repo_dir=repo,
                    settings=settings,
                    fast_start=fast_start,
                    java_opts=java_opts,
                )
            )
        deadline = time.monotonic() + timeout
        for node in nodes:
            node.wait_ready(max(1.0, deadline - time.monotonic()), cluster=False)
        cluster.wait_for_health(
            wait_for_status, nodes=n, timeout=max(1.0, deadline - time.monotonic())
        )
    except BaseException:
        cluster.close()
        raise
    return cluster
