"""Ingest throughput of the production pipeline against OpenSearch ``_bulk`` on the same node.

Measures, in one run and on the same generated documents (~1 KB each):

- pipeline: documents/s from the first batch sent to the moment the last document is searchable,
  through ``tenantsearch api`` (validation, versions, tasks, backlog ledger in PostgreSQL) ->
  RabbitMQ (quorum queue, confirms) -> ``tenantsearch indexer`` (``--lanes`` batches in flight,
  each a bulk with external versions and ``refresh=true``) -> OpenSearch; real processes
  (``tests/support/stack.py``);
- direct: the same documents, as the same engine bodies (``engine_document``, external versions,
  tenant routing), sent straight to ``_bulk`` of an index made from the same template with the
  same number of concurrent senders: in the client's batch size with the engine's default
  refresh (what the node can ingest) and with ``refresh=true`` per bulk (what the indexer asks
  for, so a task is searchable when it ends), and in bulks as large as the indexer's, also with
  one sender only (an indexer with one lane: one bulk in flight).

Paths alternate for ``--rounds`` rounds. The headline is the median over the rounds of the
pipeline's rate over the best direct rate of the same round (paths of one round run back to back,
under about the same load from the rest of the machine); the table shows each path's best round
(the machine's other load only ever slows a round down). Also reports the CPU seconds each
process used (from /proc) and the engine's refreshes, which tell which stage limits it, and with
``--profile`` the API's and the indexer's hottest functions (py-spy). ``--pin-engine`` runs
the engine on a core of its own (``bench/affinity.py``). Starts its own OpenSearch
node (full JIT, 512 MB heap), RabbitMQ and PostgreSQL unless URLs are given. Prints a Markdown
table; ``--write`` replaces the pipeline section of docs/benchmarks.md (with ``--pin-engine``,
its pinned section). Usage::

    python -m bench.ingest_pipeline [--docs 20000] [--batch 500] [--senders 4] [--lanes 2]
        [--indexer-batch 5000] [--rounds 5] [--pin-engine] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
from tests.support.api import ADMIN_KEY, bearer
from tests.support.opensearch import drop_prefix, make_backend, new_prefix
from tests.support.opensearch_node import build_node, http_request, start_node
from tests.support.services import postgres, postgres_database, rabbitmq
from tests.support.stack import Stack, StackConfig, TenantsearchProcess

from bench.affinity import cpu_seconds, engine_pinned, pids_named
from bench.docs import write_section
from tenantsearch.search.opensearch_mapping import engine_document, engine_id, field_slots
from tenantsearch.search.schema import parse_schema
from tenantsearch.settings import Settings

FIELDS: dict[str, Any] = {
    "title": {"type": "text", "language": "en"},
    "body": {"type": "text", "language": "en"},
    "tag": {"type": "keyword"},
    "price": {"type": "float"},
    "n": {"type": "integer"},
}
SCHEMA = parse_schema(FIELDS)
WORDS = [f"w{i}" for i in range(3000)] + ["quick", "brown", "fox", "lazy", "dog", "lamp"]
PY_SPY = shutil.which("py-spy") or "/root/.pyenv/shims/py-spy"
SECTIONS = {  # --pin-engine: (markers' name, title)
    False: ("pipeline", "## Ingest pipeline (RabbitMQ + OpenSearch)"),
    True: ("pipeline-pinned", "## Ingest pipeline, the engine on a core of its own"),
}
TENANT = "bench"
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):\d+\)$")


def make_docs(n: int, seed: int = 7, prefix: str = "d") -> list[dict[str, Any]]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        body = " ".join(rng.choices(WORDS, k=150))[:880]
        docs.append(
            {
                "id": f"{prefix}{i:07d}",
                "title": " ".join(rng.choices(WORDS, k=6)),
                "body": body,
                "tag": rng.choice([f"tag{t}" for t in range(20)]),
                "price": round(rng.random() * 100, 2),
                "n": i,
            }
        )
    return docs


def batches(docs: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [docs[i : i + size] for i in range(0, len(docs), size)]


SERVICE_PROCESSES = {"java": "OpenSearch", "beam.smp": "RabbitMQ", "postgres": "PostgreSQL"}
ENGINE = {"java": "OpenSearch"}


def cpu_by_name(names: Mapping[str, str]) -> dict[str, float]:
    """User + system CPU time so far of every process on the machine with one of these command
    names, summed by name: what the engine, the broker and the database used (on a machine
    where nothing else of that name runs)."""
    totals = dict.fromkeys(names.values(), 0.0)
    for pid, comm in pids_named(names):
        with contextlib.suppress(psutil.NoSuchProcess):  # it exited meanwhile
            totals[names[comm]] += cpu_seconds(pid)
    return totals


def engine_refreshes(url: str) -> int:
    """Refreshes the node has made so far (every index, scheduled and asked for)."""
    _, stats = http_request("GET", f"{url}/_nodes/_local/stats/indices/refresh")
    node = next(iter(stats["nodes"].values()))
    return int(node["indices"]["refresh"]["total"])


async def wait_count(url: str, index: str, query: dict[str, Any], n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        _, found = await asyncio.to_thread(
            http_request, "POST", f"{url}/{index}/_count", {"query": query}
        )
        if int(found.get("count", 0)) >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {found.get('count')} of {n} documents searchable")
        await asyncio.sleep(0.05)


# -- direct ----------------------------------------------------------------------------------------


@dataclass
class DirectRun:
    rate: float
    engine_cpu: float
    refreshes: int


class Direct:
    """``_bulk`` straight to an index made from the service's template (under its own prefix):
    the same engine bodies the indexer sends (``engine_document``, external versions, routing)."""

    def __init__(self, url: str, senders: int) -> None:
        self.url = url
        self.senders = senders
        self.prefix = new_prefix()
        self.slots = field_slots(SCHEMA)
        self.versions = itertools.count(1)
        self.runs = itertools.count(1)
        self.http = httpx.AsyncClient(
            base_url=url, timeout=120, limits=httpx.Limits(max_connections=senders)
        )

    async def __aenter__(self) -> Direct:
        backend = make_backend(self.url, self.prefix)
        await backend.start()  # the template, the indices and aliases, as the service makes them
        await backend.close()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await asyncio.to_thread(drop_prefix, self.url, self.prefix)

    def payload(self, uid: str, batch: list[dict[str, Any]]) -> bytes:
        lines = []
        for doc in batch:
            action = {
                "_id": engine_id(uid, doc["id"]),
                "version": next(self.versions),
                "version_type": "external",
                "routing": TENANT,
            }
            body = engine_document(TENANT, uid, doc["id"], doc, SCHEMA, self.slots)
            lines += [orjson.dumps({"index": action}), orjson.dumps(body)]
        return b"\n".join(lines) + b"\n"

    async def run(
        self, docs: list[dict[str, Any]], *, refresh: str, batch: int, senders: int | None = None
    ) -> DirectRun:
        """Documents/s until all of ``docs`` are searchable (bodies are encoded beforehand), and
        the engine's CPU seconds meanwhile."""
        uid = f"u{next(self.runs)}"
        todo = iter([self.payload(uid, b) for b in batches(docs, batch)])

        async def sender() -> None:
            for body in todo:
                r = await self.http.post(
                    f"/{self.prefix}-shared-write/_bulk",
                    content=body,
                    params={"refresh": refresh, "filter_path": "errors"},
                    headers={"Content-Type": "application/x-ndjson"},
                )
                r.raise_for_status()
                if r.json().get("errors"):
                    raise RuntimeError("a direct bulk had errors")

        engine = cpu_by_name(ENGINE)["OpenSearch"]
        refreshes = engine_refreshes(self.url)
        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(senders or self.senders)))
        await self.http.post(f"/{self.prefix}-shared-read/_refresh")
        query = {"term": {"_collection": uid}}
        await wait_count(self.url, f"{self.prefix}-shared-read", query, len(docs), 120)
        rate = len(docs) / (time.perf_counter() - started)
        return DirectRun(
            rate,
            cpu_by_name(ENGINE)["OpenSearch"] - engine,
            engine_refreshes(self.url) - refreshes,
        )


# -- pipeline --------------------------------------------------------------------------------------


@dataclass
class PipelineRun:
    rate: float
    accept_rate: float
    elapsed: float
    api_cpu: float
    indexer_cpu: float
    others: dict[str, float]
    refreshes: int


class Pipeline:
    """The service's own path: a client POSTs batches to ``tenantsearch api``; one
    ``tenantsearch indexer`` applies them. Each run writes to a new tenant."""

    def __init__(self, stack: Stack, url: str, args: argparse.Namespace) -> None:
        self.stack = stack
        self.url = url
        self.args = args
        self.runs = itertools.count(1)
        self.http = httpx.AsyncClient(
            base_url=stack.url, timeout=120, limits=httpx.Limits(max_connections=args.senders + 2)
        )

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def tenant(self, name: str) -> dict[str, str]:
        admin = bearer(ADMIN_KEY)
        r = await self.http.post("/v1/tenants", json={"id": name, "name": name}, headers=admin)
        r.raise_for_status()
        r = await self.http.post(f"/v1/tenants/{name}/keys", json={"role": "admin"}, headers=admin)
        auth = bearer(r.json()["key"])
        r = await self.http.put("/v1/collections/c", json={"fields": FIELDS}, headers=auth)
        r.raise_for_status()
        return auth

    async def run(self, docs: list[dict[str, Any]]) -> PipelineRun:
        name = f"bench{next(self.runs)}"
        auth = await self.tenant(name)
        # Encoded before the clock starts, as the direct path's bulks are: the client's own JSON
        # encoding runs on the same two cores and is not the service's work.
        todo = iter([orjson.dumps(batch) for batch in batches(docs, self.args.batch)])
        headers = {**auth, "Content-Type": "application/json"}
        task_ids: list[str] = []

        async def sender() -> None:
            for body in todo:
                while True:
                    r = await self.http.post(
                        "/v1/collections/c/documents", content=body, headers=headers
                    )
                    if r.status_code not in (429, 503):
                        break
                    await asyncio.sleep(0.2)
                if r.status_code != 202:
                    raise RuntimeError(f"{r.status_code}: {r.text}")
                task_ids.append(r.json()["id"])

        indexers = self.stack.live_indexers
        api_cpu = cpu_seconds(self.stack.api.pid)
        indexer_cpu = sum(cpu_seconds(p.pid) for p in indexers)
        others = cpu_by_name(SERVICE_PROCESSES)
        refreshes = engine_refreshes(self.url)
        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(self.args.senders)))
        accepted = time.perf_counter() - started
        index = f"{self.stack.config.index_prefix}-shared-read"
        await wait_count(self.url, index, {"term": {"_tenant": name}}, len(docs), 300)
        elapsed = time.perf_counter() - started
        result = PipelineRun(
            rate=len(docs) / elapsed,
            accept_rate=len(docs) / accepted,
            elapsed=elapsed,
            api_cpu=cpu_seconds(self.stack.api.pid) - api_cpu,
            indexer_cpu=sum(cpu_seconds(p.pid) for p in indexers) - indexer_cpu,
            others={k: v - others[k] for k, v in cpu_by_name(SERVICE_PROCESSES).items()},
            refreshes=engine_refreshes(self.url) - refreshes,
        )
        for task_id in task_ids:  # every task ends well, moments later (not timed)
            while True:
                task = (await self.http.get(f"/v1/tasks/{task_id}", headers=auth)).json()
                if task["status"] not in ("queued", "processing"):
                    break
                await asyncio.sleep(0.05)
            if task["status"] != "succeeded" or task["failed"]:
                raise RuntimeError(f"task {task_id}: {task}")
        return result


@contextlib.contextmanager
def profiling(process: TenantsearchProcess, enabled: bool) -> Iterator[list[tuple[str, float]]]:
    """With ``enabled``, sample ``process`` with py-spy meanwhile; yields the hottest functions
    (own time, share of samples) once the block is left."""
    hot: list[tuple[str, float]] = []
    if not enabled:
        yield hot
        return
    raw = process.log_path.with_suffix(".pyspy.txt")
    spy = subprocess.Popen(
        [PY_SPY, "record", "--pid", str(process.pid), "--format", "raw", "--rate", "200",
         "--output", str(raw), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield hot
    finally:
        spy.send_signal(2)  # SIGINT: py-spy writes what it has and exits
        spy.wait(timeout=30)
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, count = line.rpartition(" ")
        total += int(count)
        frame = FRAME.match(stack.split(";")[-1])
        name = f"{frame['func']} ({Path(frame['file']).name})" if frame else stack.split(";")[-1]
        own[name] += int(count)
    hot.extend((name, n / total) for name, n in own.most_common(10) if total)


# -- report ----------------------------------------------------------------------------------------


def report(
    args: argparse.Namespace,
    base: dict[str, DirectRun],
    run: PipelineRun,
    ratios: list[float],
    hot: dict[str, list[tuple[str, float]]],
) -> str:
    best = max(v.rate for k, v in base.items() if k != "direct_serial")

    def row(label: str, path: DirectRun) -> str:
        return (
            f"| {label} | {path.rate:,.0f} | {run.rate / path.rate:.2f}x "
            f"| {path.engine_cpu:.1f} | {path.refreshes} |"
        )

    lines = [
        f"{args.docs:,} documents of ~1 KB (2 English text fields, a keyword, a float, an "
        f"integer); {args.senders} concurrent senders; one `tenantsearch api` and "
        f"{args.indexers} `tenantsearch indexer` process(es) of {args.lanes} lane(s) each "
        f"(`TENANTSEARCH_INDEXER_CONCURRENCY`), bulks of at most {args.indexer_batch:,} documents "
        "(`TENANTSEARCH_INDEXER_BATCH_DOCUMENTS`); OpenSearch 2.19 (1 shard, 0 "
        "replicas, 512 MB heap, full JIT), RabbitMQ 3.10 and PostgreSQL 15 on the same 2-core "
        "machine as the client"
        + (
            ": **the engine on a CPU of its own, everything else (client, API, indexer, "
            "RabbitMQ, PostgreSQL) on the other** (`--pin-engine`), as when the engine runs on "
            "machines of its own, in both paths. "
            if args.pin_engine
            else ", every process sharing both cores. "
        )
        + f"{args.rounds} alternating rounds per path, after a warm-up of "
        f"{args.warmup:,} documents on each. Every request body (the pipeline's and the direct "
        "bulks) is encoded before the clock starts; "
        "searchable = all counted by `_count`.",
        "",
        "| path | documents/s | pipeline / path | OpenSearch CPU s | refreshes |",
        "|---|---|---|---|---|",
        f"| **pipeline**: client batches of {args.batch} -> API -> RabbitMQ -> indexer -> "
        f"OpenSearch, until searchable | **{run.rate:,.0f}** | 1.00x "
        f"| {run.others['OpenSearch']:.1f} | {run.refreshes} |",
        row(f"direct `_bulk`, batches of {args.batch}, default refresh (1 s)", base["direct"]),
        row(f"direct `_bulk`, batches of {args.batch}, `refresh=true`", base["direct_refresh"]),
        row(f"direct `_bulk`, batches of {args.big_batch}, default refresh", base["direct_big"]),
        row(
            f"direct `_bulk`, batches of {args.big_batch}, `refresh=true`, one sender "
            "(an indexer with one lane: one bulk in flight)",
            base["direct_serial"],
        ),
        "",
        "Pipeline / best direct path of the same round, median of the rounds: "
        f"**{statistics.median(ratios):.2f}x** (target >= 0.8x; rounds: "
        + ", ".join(f"{r:.2f}x" for r in ratios)
        + f"). Best pipeline round / best direct round: {run.rate / best:.2f}x. "
        "The API accepted "
        f"(202) {run.accept_rate:,.0f} documents/s. CPU used in the best pipeline run "
        f"({run.elapsed:.1f} s): API {run.api_cpu:.1f} s, indexer(s) {run.indexer_cpu:.1f} s, "
        + ", ".join(f"{name} {cpu:.1f} s" for name, cpu in run.others.items())
        + f" (every process of that name on the machine), of {2 * run.elapsed:.0f} "
        "core-seconds (the rest: the client, and anything else running).",
    ]
    own = run.api_cpu + run.indexer_cpu + run.others["RabbitMQ"] + run.others["PostgreSQL"]
    engine = run.others["OpenSearch"]
    where = (
        "they ran on the other core"
        if args.pin_engine
        else "on two shared cores that CPU is the engine's to lose, which bounds the ratio "
        "whatever the pipeline overlaps"
    )
    lines += [
        "",
        f"The pipeline's own processes (API, indexer(s), RabbitMQ, PostgreSQL) used {own:.1f} "
        f"core-seconds in that run, {own / engine:.0%} of the engine's {engine:.1f}: {where}.",
    ]
    for process, functions in hot.items():
        if functions:
            lines += ["", f"{process}, hottest functions in the last pipeline run (own time):", ""]
            lines += [f"- {share:.0%} `{name}`" for name, share in functions]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------


async def measure(
    args: argparse.Namespace, os_url: str, amqp_url: str, database_url: str, tmp: Path
) -> str:
    docs = make_docs(args.docs)
    warmup = make_docs(args.warmup, seed=3, prefix="w")
    rates: dict[str, list[DirectRun]] = collections.defaultdict(list)
    runs: list[PipelineRun] = []
    hot: dict[str, list[tuple[str, float]]] = {}
    print("starting tenantsearch api + indexer...", flush=True)
    env = {
        "TENANTSEARCH_INDEXER_CONCURRENCY": str(args.lanes),
        "TENANTSEARCH_INDEXER_BATCH_DOCUMENTS": str(args.indexer_batch),
    }
    config = StackConfig(os_url, amqp_url, database_url, env=env)
    with Stack(tmp, config) as stack, contextlib.ExitStack() as pinning:
        await asyncio.to_thread(stack.start, indexers=args.indexers)
        if args.pin_engine:
            others = [stack.api.pid, *(p.pid for p in stack.live_indexers)]
            pin = engine_pinned(others, services={"beam.smp", "postgres"})
            engine, rest = pinning.enter_context(pin)
            print(f"engine on CPU {sorted(engine)}, everything else on {sorted(rest)}", flush=True)
        async with Direct(os_url, args.senders) as direct, Pipeline(stack, os_url, args) as pipe:
            await direct.run(warmup, refresh="false", batch=args.batch)
            await pipe.run(warmup)
            for n in range(1, args.rounds + 1):
                rates["direct"].append(await direct.run(docs, refresh="false", batch=args.batch))
                rates["direct_refresh"].append(
                    await direct.run(docs, refresh="true", batch=args.batch)
                )
                rates["direct_big"].append(
                    await direct.run(docs, refresh="false", batch=args.big_batch)
                )
                rates["direct_serial"].append(
                    await direct.run(docs, refresh="true", batch=args.big_batch, senders=1)
                )
                last = n == args.rounds
                profile = args.profile and last
                with (
                    profiling(stack.api, profile) as hot["API"],
                    profiling(stack.live_indexers[0], profile) as hot["Indexer"],
                ):
                    runs.append(await pipe.run(docs))
                print(
                    f"round {n}: pipeline {runs[-1].rate:,.0f}/s (engine "
                    f"{runs[-1].others['OpenSearch']:.1f} s CPU, {runs[-1].refreshes} refreshes), "
                    "direct "
                    + ", ".join(
                        f"{k} {v[-1].rate:,.0f}/s ({v[-1].engine_cpu:.1f} s, {v[-1].refreshes})"
                        for k, v in rates.items()
                    ),
                    flush=True,
                )
    base = {k: max(v, key=lambda r: r.rate) for k, v in rates.items()}
    # Each round's paths ran back to back, under about the same load from the rest of the
    # machine: the ratio within a round is steadier than one of bests taken from different rounds.
    ratios = [
        run.rate / max(v[n].rate for k, v in rates.items() if k != "direct_serial")
        for n, run in enumerate(runs)
    ]
    return report(args, base, max(runs, key=lambda r: r.rate), ratios, hot)


def main() -> None:
    parser = argparse.ArgumentParser(description="Ingest pipeline vs. direct _bulk.")
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=500, help="documents per client request")
    parser.add_argument("--big-batch", type=int, default=5000, help="a direct run's larger bulks")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--indexers", type=int, default=1, help="indexer processes")
    parser.add_argument(
        "--lanes",
        type=int,
        default=Settings.model_fields["indexer_concurrency"].default,
        help="batches each indexer applies at once (default: the service's default)",
    )
    parser.add_argument(
        "--indexer-batch",
        type=int,
        default=Settings.model_fields["indexer_batch_documents"].default,
        help="documents per indexer bulk, at most (default: the service's default)",
    )
    parser.add_argument(
        "--pin-engine",
        action="store_true",
        help="the engine on a core of its own, the rest on the others (as when deployed apart)",
    )
    parser.add_argument("--opensearch-url", help="use this node instead of starting one")
    parser.add_argument("--rabbitmq-url", help="use this broker instead of starting one")
    parser.add_argument("--postgres-url", help="use this server instead of starting one")
    parser.add_argument("--profile", action="store_true", help="py-spy the API and the indexer")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    with contextlib.ExitStack() as services:
        tmp = Path(services.enter_context(tempfile.TemporaryDirectory()))
        os_url = args.opensearch_url
        if os_url is None:
            print("starting OpenSearch (full JIT, 512 MB heap)...", flush=True)
            build_node()
            node = start_node(tmp / "opensearch", node_name="bench", fast_start=False)
            services.callback(node.close)
            os_url = node.url
        amqp_url = args.rabbitmq_url
        if amqp_url is None:
            print("starting RabbitMQ...", flush=True)
            amqp_url = services.enter_context(rabbitmq(tmp)).url
        pg_url = args.postgres_url
        if pg_url is None:
            pg_url = services.enter_context(postgres(tmp)).url
        database_url = services.enter_context(postgres_database(pg_url))
        text = asyncio.run(measure(args, os_url, amqp_url, database_url, tmp))
    print(text)
    if args.write:
        name, title = SECTIONS[args.pin_engine]
        flag = " --pin-engine" if args.pin_engine else ""
        usage = f"`python -m bench.ingest_pipeline{flag} --write` (`bench/ingest_pipeline.py`)"
        write_section(name, text, f"{title}\n\n{usage}")


if __name__ == "__main__":
    main()
