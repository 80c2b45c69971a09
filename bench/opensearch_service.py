"""Search through the service vs. the same query sent straight to OpenSearch, in one run.

One real node (``tools/opensearch-node``, full JIT: ``fast_start=False``, one shard) and one
``tenantsearch api`` process (``tests.support.server.ServerProcess``) with
``TENANTSEARCH_SEARCH_BACKEND=opensearch``, on loopback: the API process as it is deployed with
OpenSearch, where indexers run apart (none here: nothing is written during the searches). Documents
are the embedded benchmark's (``bench.embedded.make_docs``: ~1 KB each, two English text fields, a
keyword, a float, an integer). They are ingested straight through the adapter's ``apply`` (batches
of 5000, the indexer's batch size) into the collection the service created, then force-merged to one
segment so background merges do not move the numbers. Every one of them must then be searchable
through the service.

The direct query is the adapter's own translation (``opensearch_query.build_search`` for the
collection's scope, schema and field slots, with the adapter's ``routing`` and ``preference``),
serialized once up front, so both sides run the very same engine request; the first queries of
each shape are checked to give the same total and hit ids both ways.

- latency: searches one after the other over one keep-alive connection per target (stdlib
  ``http.client``), interleaved query by query (which target goes first alternates), after a
  warm-up, in ``--rounds`` rounds; p50 and p99 over all rounds' searches, and the p99 ratio of
  each round (how far the machine's noise moves it).
- max QPS: ``--concurrency`` client threads, each on its own keep-alive connection, for
  ``--seconds`` per target.

The service runs with the search result cache off (``TENANTSEARCH_CACHE_BACKEND=none``: every
search reaches the engine, as the direct one does), no rate limit in the way (plan
``unlimited``) and log level warning. ``--profile`` samples the service with py-spy during an
extra max-QPS run and prints where its CPU goes. ``--pin-engine`` runs the engine on a core of
its own and the client and the service on the others (``bench/affinity.py``).

Usage: ``python -m bench.opensearch_service [--docs 100000] [--rounds 3] [--pin-engine]
[--write] [--profile]`` (``--write`` replaces the OpenSearch section of docs/benchmarks.md, or
with ``--pin-engine`` its pinned section).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from tests.support.opensearch_node import OpenSearchNode, build_node, start_node
from tests.support.server import ServerProcess

from bench.affinity import cpu_seconds, engine_pinned
from bench.docs import write_section
from bench.embedded import FIELDS, FILTER_TAGS, make_docs, percentile, queries
from tenantsearch.search.opensearch_backend import OpenSearchBackend
from tenantsearch.search.opensearch_mapping import field_slots
from tenantsearch.search.opensearch_query import Scope, build_search
from tenantsearch.search.port import CollectionRef
from tenantsearch.search.query import SearchQuery, WriteOp, parse_facets, parse_filter
from tenantsearch.search.schema import CollectionSchema

ADMIN_KEY = "bench-admin-key-0123456789abcdef"
TENANT = "bench"
COLLECTION = "c"
PREFIX = "bench"
INGEST_BATCH = 5000
WARMUP = 100
CHECKED = 25
"""Queries of each shape whose answers are compared between the two targets."""
PY_SPY = os.environ.get("PY_SPY", "/root/.pyenv/shims/py-spy")
ROOT = Path(__file__).resolve().parent.parent
SECTIONS = {  # --pin-engine: (markers' name, title)
    False: ("opensearch", "## OpenSearch: service vs. direct (`bench/opensearch_service.py`)"),
    True: ("opensearch-pinned", "## OpenSearch: service vs. direct, engine on a core of its own"),
}

Shape = tuple[str, dict[str, Any]]
SHAPES: list[Shape] = [
    ("1-2 words, limit 20", {"limit": 20}),
    (
        "1-2 words + tag filter + tag facet, limit 20",
        {"filter": {"tag": {"in": FILTER_TAGS}}, "facets": ["tag"], "limit": 20},
    ),
]


@dataclass
class Target:
    """One HTTP endpoint and the request bodies it gets, query by query."""

    name: str
    port: int
    path: str
    headers: dict[str, str]
    bodies: list[bytes]

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def send(self, conn: http.client.HTTPConnection, body: bytes) -> bytes:
        conn.request("POST", self.path, body, self.headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{self.name} answered {response.status}: {data[:300]!r}")
        return data


@dataclass
class Load:
    qps: float
    p50: float
    p99: float
    errors: int
    cpu_ms: dict[str, float] = field(default_factory=dict)
    """CPU time per search (user + system), by process: what each side costs, whatever else
    runs on the machine."""


@dataclass
class ShapeResult:
    name: str
    rounds: list[dict[str, list[float]]] = field(default_factory=list)
    """Milliseconds per search of each target, one mapping per latency round."""
    load: dict[str, Load] = field(default_factory=dict)

    def latency(self, target: str) -> list[float]:
        """Every round's searches of ``target``, pooled."""
        return [ms for r in self.rounds for ms in r[target]]

    def p99_ratios(self) -> list[float]:
        """Service p99 over direct p99 within each round."""
        return [percentile(r["service"], 0.99) / percentile(r["direct"], 0.99) for r in self.rounds]


# -- setup -------------------------------------------------------------------------------------


def setup_service(server: ServerProcess) -> dict[str, str]:
    """A tenant, its admin key and the collection; returns the key's auth header."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        c.post("/v1/tenants", json={"id": TENANT, "name": TENANT}, headers=admin).raise_for_status()
        r = c.post(f"/v1/tenants/{TENANT}/keys", json={"role": "admin"}, headers=admin)
        r.raise_for_status()
        auth = {"Authorization": f"Bearer {r.json()['key']}"}
        c.put(
            f"/v1/collections/{COLLECTION}", json={"fields": FIELDS}, headers=auth
        ).raise_for_status()
    return auth


def collection_ref(node: OpenSearchNode) -> CollectionRef:
    """The collection as the service registered it (uid and stored schema) in the adapter's
    registry index."""
    node.request("POST", f"/{PREFIX}-registry/_refresh")  # registered without a refresh
    found = node.request(
        "POST",
        f"/{PREFIX}-registry/_search",
        {
            "query": {
                "bool": {"filter": [{"term": {"tenant": TENANT}}, {"term": {"name": COLLECTION}}]}
            }
        },
    )
    [hit] = found["hits"]["hits"]
    schema = CollectionSchema.from_dict(hit["_source"]["schema"])
    return CollectionRef(TENANT, COLLECTION, hit["_id"], schema)


async def ingest(url: str, ref: CollectionRef, docs: list[dict[str, Any]]) -> float:
    """Documents/s of ``apply`` in batches of INGEST_BATCH (refresh=true on every bulk)."""
    backend = OpenSearchBackend([url], index_prefix=PREFIX, replicas=0, timeout_seconds=300)
    await backend.start()
    try:
        started = time.perf_counter()
        for i in range(0, len(docs), INGEST_BATCH):
            chunk = docs[i : i + INGEST_BATCH]
            # The document as the API would store it (its "id" stays in the body).
            ops = [WriteOp(d["id"], 1, d) for d in chunk]
            results = await backend.apply(ref, ops)
            refused = [r for r in results if r.outcome != "applied"]
            if refused:
                raise RuntimeError(f"{len(refused)} documents not applied: {refused[0]}")
        return len(docs) / (time.perf_counter() - started)
    finally:
        await backend.close()


def engine_query(ref: CollectionRef, text: str, shape: dict[str, Any]) -> SearchQuery:
    """The query the service builds from this API request (search/service.py)."""
    schema = ref.schema
    filter_ = shape.get("filter")
    return SearchQuery(
        text=text,
        filter=parse_filter(schema, filter_) if filter_ is not None else None,
        facets=parse_facets(schema, shape.get("facets", [])),
        limit=shape["limit"],
    )


def targets_for(
    server: ServerProcess,
    node: OpenSearchNode,
    auth: dict[str, str],
    ref: CollectionRef,
    texts: Sequence[str],
    shape: dict[str, Any],
) -> tuple[Target, Target]:
    service = Target(
        "service",
        server.port,
        f"/v1/collections/{COLLECTION}/search",
        {**auth, "Content-Type": "application/json"},
        [orjson.dumps({"q": text, **shape}) for text in texts],
    )
    # The adapter's search(): the read alias, routed by tenant, preference = collection uid.
    slots = field_slots(ref.schema)
    scope = Scope(ref.tenant, ref.uid)
    direct = Target(
        "direct",
        node.http_port,
        f"/{PREFIX}-shared-read/_search?routing={ref.tenant}&preference={ref.uid}",
        {"Content-Type": "application/json"},
        [
            orjson.dumps(build_search(scope, ref.schema, slots, engine_query(ref, t, shape)).body)
            for t in texts
        ],
    )
    return service, direct


def check_equivalent(service: Target, direct: Target, n: int) -> None:
    """Both targets give the same total and the same hits, in order, for the first n queries."""
    s_conn, d_conn = service.connect(), direct.connect()
    try:
        for i in range(n):
            mine = orjson.loads(service.send(s_conn, service.bodies[i]))
            theirs = orjson.loads(direct.send(d_conn, direct.bodies[i]))
            ids = [str(h["sort"][-1]) for h in theirs["hits"]["hits"]]
            if (
                mine["total"] != theirs["hits"]["total"]["value"]
                or [h["id"] for h in mine["hits"]] != ids
            ):
                raise RuntimeError(f"query {i}: the service and the engine disagree")
    finally:
        s_conn.close()
        d_conn.close()


# -- measurements ------------------------------------------------------------------------------


def sequential(targets: Sequence[Target], n: int) -> dict[str, list[float]]:
    """Milliseconds per search for each target, interleaved query by query."""
    conns = [t.connect() for t in targets]
    out: dict[str, list[float]] = {t.name: [] for t in targets}
    try:
        for i in range(WARMUP + n):
            order = list(zip(targets, conns, strict=True))
            if i % 2:
                order.reverse()
            for target, conn in order:
                body = target.bodies[i % len(target.bodies)]
                started = time.perf_counter()
                target.send(conn, body)
                elapsed = (time.perf_counter() - started) * 1000
                if i >= WARMUP:
                    out[target.name].append(elapsed)
    finally:
        for conn in conns:
            conn.close()
    return out


def max_qps(
    target: Target, concurrency: int, seconds: float, pids: dict[str, int] | None = None
) -> Load:
    """Searches/s with ``concurrency`` clients (threads, one keep-alive connection each), and
    the CPU per search of the processes in ``pids`` and of this client."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def client(k: int) -> None:
        conn = target.connect()
        i = k * 7919
        start.wait()
        try:
            while time.perf_counter() < deadline[0]:
                body = target.bodies[i % len(target.bodies)]
                i += 1
                t0 = time.perf_counter()
                try:
                    target.send(conn, body)
                except (RuntimeError, OSError, http.client.HTTPException):
                    errors[k] += 1
                    conn.close()
                    conn = target.connect()
                    continue
                latencies[k].append((time.perf_counter() - t0) * 1000)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    pids = pids or {}
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    client_before = time.process_time()
    began = time.perf_counter()
    deadline[0] = began + seconds
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    cpu["client"] = time.process_time() - client_before
    flat = [x for per in latencies for x in per]
    return Load(
        qps=len(flat) / elapsed,
        p50=statistics.median(flat) if flat else float("nan"),
        p99=percentile(flat, 0.99) if flat else float("nan"),
        errors=sum(errors),
        cpu_ms={name: seconds * 1000 / max(1, len(flat)) for name, seconds in cpu.items()},
    )


# -- profiling ---------------------------------------------------------------------------------


def profile_service(
    pid: int, run: Callable[[], Load], seconds: float, out_dir: Path
) -> tuple[str, Load]:
    """Sample the service with py-spy while ``run`` loads it; a summary of where time goes."""
    raw = out_dir / "service.pyspy.txt"
    spy = subprocess.Popen(
        [
            PY_SPY,
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(seconds)),
            "-r",
            "250",
            "-f",
            "raw",
            "-o",
            str(raw),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # let py-spy attach
    load = run()
    _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0 or not raw.exists():
        return f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}", load
    return summarize_profile(raw.read_text()), load


def _function(frame: str) -> str:
    """``func (path/to/module.py:line)`` -> ``func (package/module.py)``."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("/site-packages/", "/src/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def summarize_profile(text: str, top: int = 40) -> str:
    """Self time, then inclusive time (the function anywhere on the stack) of the event loop
    thread, in % of its samples; frames on (nearly) every stack (start-up chain) left out."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = threads = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if not frames[0].startswith("_run_module_as_main"):
            threads += n  # worker threads (thread pool, aiosqlite), mostly waiting
            continue
        total += n
        self_time[_function(frames[-1])] += n
        for function in {_function(f) for f in frames}:
            inclusive[function] += n
    if not total:
        return "no samples"
    lines = [
        f"event loop thread: {total} samples; other threads: {threads} (mostly idle waits)",
        "",
        "self time:",
    ]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in self_time.most_common(15)]
    lines += ["", "inclusive time:"]
    shown = [(f, n) for f, n in inclusive.most_common() if n < 0.95 * total][:top]
    lines += [f"  {n / total:6.1%}  {function}" for function, n in shown]
    return "\n".join(lines)


# -- report ------------------------------------------------------------------------------------


def verdict(svc: float, base: float, ratio: float, slack_ms: float | None) -> str:
    ok = svc <= base * ratio or (slack_ms is not None and svc - base <= slack_ms)
    target = f"<= {ratio:.2f}x" + (f" or +{slack_ms:.0f} ms" if slack_ms is not None else "")
    return f"{'met' if ok else 'MISSED'} ({target})"


def report(
    args: argparse.Namespace, ingest_rate: float, results: list[ShapeResult], setup: str
) -> str:
    lines = [
        f"{args.docs:,} documents of ~1 KB (`bench.embedded.make_docs`), ingested straight with "
        f"the adapter's `apply` (batches of {INGEST_BATCH:,}, refresh=true on every bulk) at "
        f"{ingest_rate:,.0f} documents/s, then force-merged to 1 segment. {setup} The direct "
        "query is the adapter's translation (`build_search`, same routing and preference) of the "
        "same request, so both sides run the same engine request; the first "
        f"{CHECKED} queries of each shape gave the same total and hits both ways.",
        "",
        f"Latency: {args.rounds} rounds of {args.queries:,} searches (1-2 of the 300 most common "
        "words) per shape and target, sequential over one keep-alive connection each (stdlib "
        f"`http.client`), interleaved query by query, after {WARMUP} warm-up searches; p50 and "
        "p99 are over every round's searches, and each round's p99 ratio is listed. Max QPS: "
        f"{args.concurrency} client threads with a keep-alive connection each, "
        f"{args.seconds:.0f} s per target.",
        "",
        "| search | measure | service (HTTP, end to end) | OpenSearch direct | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        s, d = r.latency("service"), r.latency("direct")
        sp50, dp50 = statistics.median(s), statistics.median(d)
        sp99, dp99 = percentile(s, 0.99), percentile(d, 0.99)
        ls, ld = r.load["service"], r.load["direct"]
        lines += [
            f"| {r.name} | p50, ms | {sp50:.2f} | {dp50:.2f} | {sp50 / dp50:.2f}x "
            f"(+{sp50 - dp50:.2f} ms) | {verdict(sp50, dp50, 1.15, 2.0)} |",
            f"| | p99, ms | {sp99:.2f} | {dp99:.2f} | {sp99 / dp99:.2f}x (rounds: "
            + ", ".join(f"{x:.2f}x" for x in r.p99_ratios())
            + f") | {verdict(sp99, dp99, 1.3, None)} |",
            f"| | max QPS ({args.concurrency} clients) | {ls.qps:,.0f} | {ld.qps:,.0f} | "
            f"{ls.qps / ld.qps:.2f}x | |",
            f"| | p50 / p99 at max QPS, ms | {ls.p50:.1f} / {ls.p99:.1f} | "
            f"{ld.p50:.1f} / {ld.p99:.1f} | | |",
            f"| | CPU per search at max QPS, ms: service process / engine / client | "
            f"{ls.cpu_ms['service']:.2f} / {ls.cpu_ms['engine']:.2f} / {ls.cpu_ms['client']:.2f} | "
            f"- / {ld.cpu_ms['engine']:.2f} / {ld.cpu_ms['client']:.2f} | | |",
        ]
        if ls.errors or ld.errors:
            lines.append(f"| | errors under load | {ls.errors} | {ld.errors} | | |")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def run(args: argparse.Namespace, tmp: Path) -> str:
    print(f"generating {args.docs:,} documents...", flush=True)
    docs, words = make_docs(args.docs)
    texts = queries(words, args.queries)
    build_node()
    print(f"starting an OpenSearch node (heap {args.heap}, full JIT)...", flush=True)
    with start_node(tmp / "engine", node_name="bench", heap=args.heap, fast_start=False) as node:
        env = {
            "TENANTSEARCH_ADMIN_KEY": ADMIN_KEY,
            "TENANTSEARCH_SEARCH_BACKEND": "opensearch",
            "TENANTSEARCH_OPENSEARCH_URL": node.url,
            "TENANTSEARCH_OPENSEARCH_INDEX_PREFIX": PREFIX,
            "TENANTSEARCH_OPENSEARCH_REPLICAS": "0",
            "TENANTSEARCH_OPENSEARCH_POOL_SIZE": str(max(10, args.concurrency)),
            "TENANTSEARCH_CACHE_BACKEND": "none",
            "TENANTSEARCH_DEFAULT_PLAN": "unlimited",
            "TENANTSEARCH_LOG_LEVEL": "warning",
        }
        if args.service_pythonpath:
            # An experiment: the service from another source tree (ahead of the editable one).
            env["PYTHONPATH"] = str(args.service_pythonpath)
        server = ServerProcess(tmp / "service" / "data", env, command="api")
        server.data_dir.mkdir(parents=True)
        server.start()
        pinning = contextlib.ExitStack()
        try:
            if args.pin_engine:
                assert server.process is not None
                engine, rest = pinning.enter_context(engine_pinned([server.process.pid]))
                print(f"engine on CPU {sorted(engine)}, the rest on {sorted(rest)}", flush=True)
            auth = setup_service(server)
            ref = collection_ref(node)
            print(f"ingesting through the adapter's apply (uid {ref.uid})...", flush=True)
            rate = asyncio.run(ingest(node.url, ref, docs))
            print(f"  {rate:,.0f} documents/s; force-merging...", flush=True)
            node.request(
                "POST", f"/{PREFIX}-shared-read/_forcemerge?max_num_segments=1", timeout=900
            )
            with httpx.Client(base_url=server.url, timeout=60) as c:
                r = c.post(f"/v1/collections/{COLLECTION}/search", json={"limit": 1}, headers=auth)
                total = r.json()["total"]
            if total != args.docs:
                raise RuntimeError(f"{total} documents searchable through the service")

            assert server.process is not None
            pids = {"service": server.process.pid, "engine": node.pid}
            load_before = os.getloadavg()[0]
            results: list[ShapeResult] = []
            for name, shape in SHAPES:
                print(f"{name}: checking, then latency...", flush=True)
                service, direct = targets_for(server, node, auth, ref, texts, shape)
                check_equivalent(service, direct, CHECKED)
                result = ShapeResult(name)
                for _ in range(args.rounds):
                    result.rounds.append(sequential([service, direct], args.queries))
                for target in (direct, service):
                    print(f"  max QPS, {target.name}...", flush=True)
                    max_qps(target, args.concurrency, 2.0)  # warm-up
                    result.load[target.name] = max_qps(target, args.concurrency, args.seconds, pids)
                results.append(result)

            if args.profile:
                service, _ = targets_for(server, node, auth, ref, texts, SHAPES[0][1])
                assert server.process is not None
                print("profiling the service under load (py-spy)...", flush=True)
                summary, load = profile_service(
                    server.process.pid,
                    lambda: max_qps(service, args.concurrency, args.seconds),
                    args.seconds + 1,
                    tmp,
                )
                print(f"(profiled run: {load.qps:,.0f} QPS)\n{summary}\n")
                if args.keep_profile:
                    shutil.copy(tmp / "service.pyspy.txt", args.keep_profile)
            load_after = os.getloadavg()[0]
        finally:
            pinning.close()
            server.stop()
    setup = f"{os.cpu_count()} cores (1-min load average {load_before:.1f} before the searches, "
    setup += f"{load_after:.1f} after: other work on the machine counts); "
    if args.pin_engine:
        setup += (
            "**the engine on a CPU of its own, the client and the service on the other** "
            "(`--pin-engine`), as when the engine runs on machines of its own, for both targets; "
        )
    setup += f"node heap {args.heap}, G1, full JIT; service: one "
    setup += (
        "`tenantsearch api` process (uvicorn, one worker), result cache off, log level warning."
    )
    return report(args, rate, results, f"Setup: {setup}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Service vs. direct OpenSearch search.")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds per shape")
    parser.add_argument(
        "--pin-engine",
        action="store_true",
        help="the engine on a core of its own, the rest on the others (as when deployed apart)",
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0, help="per max-QPS run")
    parser.add_argument("--heap", default="512m")
    parser.add_argument("--profile", action="store_true", help="py-spy the service under load")
    parser.add_argument("--keep-profile", type=Path, help="copy py-spy's raw stacks here")
    parser.add_argument(
        "--service-pythonpath",
        type=Path,
        help="experiments: run the service from this source dir (e.g. a patched copy of src/)",
    )
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-opensearch-") as tmp:
        text = run(args, Path(tmp))
    print(text)
    if args.write:
        name, title = SECTIONS[args.pin_engine]
        write_section(name, text, title)


if __name__ == "__main__":
    main()
