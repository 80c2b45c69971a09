"""Self-test for tests/support/opensearch_node.py: real OpenSearch nodes, end to end.

    python tests/support/opensearch_node_selftest.py [--keep-logs] [--heap 512m]

Starts one node and checks analyzers, external versioning, highlighting, terms
aggregations, search_after, _delete_by_query, _reindex, painless, mustache and fs
snapshots; then starts a 3-node cluster, creates an index with 1 replica, SIGKILLs the
elected cluster manager and checks that searches still return every document. Prints
timings and the RSS of every JVM. Exits non-zero on the first failure.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# run as a script (`python tests/support/opensearch_node_selftest.py`): make `tests` importable
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.opensearch_node import (
    OpenSearchCluster,
    OpenSearchNode,
    build_node,
    start_cluster,
    start_node,
)

_T0 = time.monotonic()


def say(msg: str) -> None:
    sys.stdout.write(f"[{time.monotonic() - _T0:7.1f}s] {msg}\n")
    sys.stdout.flush()


def check(cond: bool, what: str, detail: object = "") -> None:
    if not cond:
        raise AssertionError(f"FAILED: {what} {detail}")
    say(f"ok   {what}")


def mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.0f} MiB"


def node_line(node: OpenSearchNode) -> str:
    start = "?" if node.startup_seconds is None else f"{node.startup_seconds:.1f}s"
    return (
        f"{node.node_name}: pid {node.pid} start {start} RSS {mib(node.rss_bytes())} "
        f"PSS {mib(node.pss_bytes())}"
    )


# --------------------------------------------------------------------------------------


MAPPING: dict[str, Any] = {
    "settings": {
        "number_of_shards": 1,
        "number_of_replicas": 0,
        "analysis": {
            "analyzer": {
                "folded": {"tokenizer": "standard", "filter": ["lowercase", "asciifolding"]}
            }
        },
    },
    "mappings": {
        "properties": {
            "title": {"type": "text", "analyzer": "english"},
            "title_de": {"type": "text", "analyzer": "german"},
            "name": {"type": "text", "analyzer": "folded"},
            "tag": {"type": "keyword"},
            "seq": {"type": "integer"},
        }
    },
}

DOCS: list[dict[str, Any]] = [
    {
        "title": "Runners are running fast",
        "title_de": "Häuser",
        "name": "Crème brûlée",
        "tag": "a",
        "seq": 1,
    },
    {"title": "A quiet library", "title_de": "Haus", "name": "Café", "tag": "b", "seq": 2},
    {"title": "She runs home", "title_de": "Bücher", "name": "Zoë", "tag": "a", "seq": 3},
]


def single_node_checks(node: OpenSearchNode, repo_dir: Path) -> None:
    info = node.request("GET", "/")
    check(info["version"]["number"].startswith("2.19."), "version 2.19.x", info["version"])

    # analyzers (english/german/french/spanish are CommonAnalysisPlugin's)
    for analyzer, text, want in [
        ("english", "running runners", ["run", "runner"]),
        ("german", "Häuser", ["haus"]),
        ("french", "les chevaux", ["cheval"]),
        ("spanish", "canciones", ["cancion"]),
    ]:
        r = node.request("POST", "/_analyze", {"analyzer": analyzer, "text": text})
        tokens = [t["token"] for t in r["tokens"]]
        check(tokens == want, f"_analyze {analyzer} {text!r} -> {tokens}", want)

    # painless extension of analysis-common (the launcher loads module PainlessExtensions)
    r = node.request(
        "POST",
        "/_analyze",
        {
            "tokenizer": "whitespace",
            "filter": [
                {"type": "predicate_token_filter", "script": {"source": "token.term.length() > 3"}}
            ],
            "text": "a quick brown fox",
        },
    )
    check([t["token"] for t in r["tokens"]] == ["quick", "brown"], "predicate_token_filter script")

    node.request("PUT", "/docs", MAPPING)
    r = node.request("POST", "/docs/_analyze", {"analyzer": "folded", "text": "Crème brûlée"})
    check([t["token"] for t in r["tokens"]] == ["creme", "brulee"], "asciifolding analyzer")

    # bulk with external versions
    bulk: list[dict[str, Any]] = []
    for i, doc in enumerate(DOCS, start=1):
        bulk.append(
            {
                "index": {
                    "_index": "docs",
                    "_id": str(i),
                    "version": 10 + i,
                    "version_type": "external",
                }
            }
        )
        bulk.append(doc)
    r = node.request("POST", "/_bulk?refresh=true", bulk)
    check(r["errors"] is False, "bulk index 3 docs with version_type=external", r)
    check([it["index"]["_version"] for it in r["items"]] == [11, 12, 13], "external versions")
    stale = node.request(
        "PUT", "/docs/_doc/1?version=5&version_type=external", DOCS[0], expect=None
    )
    check(stale.get("status") == 409, "older external version rejected (409)", stale)
    newer = node.request(
        "PUT", "/docs/_doc/1?version=20&version_type=external&refresh=true", DOCS[0]
    )
    check(newer["_version"] == 20, "newer external version accepted")

    # search: english stemming + highlight + terms agg + sort for search_after
    query: dict[str, Any] = {
        "size": 1,
        "query": {"match": {"title": "run"}},
        "highlight": {"fields": {"title": {}}},
        "aggs": {"tags": {"terms": {"field": "tag"}}},
        "sort": [{"seq": "asc"}],
    }
    r = node.request("POST", "/docs/_search", query)
    check(r["hits"]["total"]["value"] == 2, "english match 'run' hits 2 docs", r["hits"])
    hit = r["hits"]["hits"][0]
    check("<em>" in hit["highlight"]["title"][0], f"highlight {hit['highlight']['title']}")
    buckets = {b["key"]: b["doc_count"] for b in r["aggregations"]["tags"]["buckets"]}
    check(buckets == {"a": 2}, f"terms aggregation {buckets}")
    page2 = node.request("POST", "/docs/_search", {**query, "search_after": hit["sort"]})
    ids = [h["_id"] for h in page2["hits"]["hits"]]
    check(ids == ["3"], f"search_after {hit['sort']} -> {ids}")
    r = node.request(
        "POST", "/docs/_search", {"query": {"match": {"title_de": "haus"}}, "size": 10}
    )
    check(r["hits"]["total"]["value"] == 2, "german stemming Häuser/Haus")
    r = node.request("POST", "/docs/_search", {"query": {"match": {"name": "creme"}}})
    check(r["hits"]["total"]["value"] == 1, "asciifolding search 'creme'")

    # painless + mustache
    r = node.request(
        "POST",
        "/docs/_search",
        {
            "query": {"match_all": {}},
            "sort": [{"seq": "asc"}],
            "script_fields": {
                "twice": {"script": {"lang": "painless", "source": "doc['seq'].value * 2"}}
            },
        },
    )
    check([h["fields"]["twice"][0] for h in r["hits"]["hits"]] == [2, 4, 6], "painless")
    r = node.request(
        "POST",
        "/docs/_search/template",
        {
            "source": {"query": {"term": {"tag": "{{t}}"}}},
            "params": {"t": "b"},
        },
    )
    check(r["hits"]["total"]["value"] == 1, "mustache search template")

    # _reindex + _delete_by_query
    r = node.request(
        "POST",
        "/_reindex?refresh=true",
        {"source": {"index": "docs"}, "dest": {"index": "docs_copy"}},
    )
    check(r["created"] == 3, "_reindex 3 docs", r)
    r = node.request(
        "POST", "/docs/_delete_by_query?refresh=true", {"query": {"term": {"tag": "a"}}}
    )
    check(r["deleted"] == 2, "_delete_by_query tag=a deleted 2", r)
    r = node.request("GET", "/docs/_count")
    check(r["count"] == 1, "1 doc left after _delete_by_query")

    # fs snapshot + restore
    location = repo_dir / "selftest-repo"
    node.request(
        "PUT", "/_snapshot/fsrepo", {"type": "fs", "settings": {"location": str(location)}}
    )
    r = node.request(
        "PUT",
        "/_snapshot/fsrepo/snap1?wait_for_completion=true",
        {"indices": "docs,docs_copy", "include_global_state": False},
    )
    check(r["snapshot"]["state"] == "SUCCESS", "fs snapshot SUCCESS", r["snapshot"]["state"])
    check(any(location.iterdir()), f"snapshot files in {location}")
    node.request(
        "POST",
        "/_snapshot/fsrepo/snap1/_restore?wait_for_completion=true",
        {
            "indices": "docs_copy",
            "rename_pattern": "(.+)",
            "rename_replacement": "restored_$1",
        },
    )
    node.request("POST", "/restored_docs_copy/_refresh")
    r = node.request("GET", "/restored_docs_copy/_count")
    check(r["count"] == 3, "restore from fs snapshot -> 3 docs")


def cluster_checks(cluster: OpenSearchCluster) -> None:
    n_docs = 30
    cluster.request(
        "PUT",
        "/cdocs",
        {
            "settings": {
                "number_of_shards": 3,
                "number_of_replicas": 1,
                # re-replicate at once after a node loss (default: wait 1m for it to return)
                "index.unassigned.node_left.delayed_timeout": "0s",
            },
            "mappings": {
                "properties": {
                    "title": {"type": "text", "analyzer": "english"},
                    "n": {"type": "integer"},
                }
            },
        },
    )
    bulk: list[dict[str, Any]] = []
    for i in range(n_docs):
        bulk += [
            {"index": {"_index": "cdocs", "_id": str(i)}},
            {"title": f"document number {i}", "n": i},
        ]
    r = cluster.request("POST", "/_bulk?refresh=true", bulk)
    check(r["errors"] is False, f"bulk {n_docs} docs into 3 shards x 1 replica")
    health = cluster.wait_for_health("green", nodes=3, index="cdocs", timeout=60)
    check(health["active_shards"] == 6, "index green: 6 active shards", health)

    state = cluster.request("GET", "/_cluster/state/cluster_manager_node,nodes")
    manager_id = state["cluster_manager_node"]
    manager_name = state["nodes"][manager_id]["name"]
    victim = next(n for n in cluster if n.node_name == manager_name)
    say(f"SIGKILL elected cluster manager {victim.node_name} (pid {victim.pid})")
    t_kill = time.monotonic()
    victim.kill()

    # Every search must see all docs: each shard has a copy on a surviving node.
    for node in cluster.running():
        r = node.request("POST", "/cdocs/_search", {"size": 0, "query": {"match_all": {}}})
        check(
            r["hits"]["total"]["value"] == n_docs and r["_shards"]["failed"] == 0,
            f"search via {node.node_name} right after kill: {r['hits']['total']['value']} "
            f"docs, shards {r['_shards']}",
        )
    r = cluster.request(
        "POST", "/cdocs/_search", {"query": {"match": {"title": "documents"}}, "size": 0}
    )
    check(r["hits"]["total"]["value"] == n_docs, "english match 'documents' on 2 nodes")

    health = cluster.wait_for_health("yellow", nodes=2, timeout=90)
    state = cluster.request("GET", "/_cluster/state/cluster_manager_node,nodes")
    new_manager = state["nodes"][state["cluster_manager_node"]]["name"]
    say(
        f"new cluster manager {new_manager} after {time.monotonic() - t_kill:.1f}s, "
        f"health {health['status']}"
    )
    check(new_manager != victim.node_name, "a new cluster manager was elected")
    health = cluster.wait_for_health("green", nodes=2, index="cdocs", timeout=120)
    say(f"cdocs green again on 2 nodes {time.monotonic() - t_kill:.1f}s after the kill")
    r = cluster.request("GET", "/cdocs/_count")
    check(r["count"] == n_docs, f"count after recovery {r['count']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir with logs")
    parser.add_argument("--heap", default="512m")
    args = parser.parse_args()

    t = time.monotonic()
    build_node()
    say(f"build_node: {time.monotonic() - t:.1f}s")

    tmp = Path(tempfile.mkdtemp(prefix="opensearch-selftest-"))
    ok = False
    try:
        t = time.monotonic()
        with start_node(tmp / "single", node_name="single", heap=args.heap) as node:
            say(f"single node ready in {time.monotonic() - t:.1f}s; {node_line(node)}")
            single_node_checks(node, tmp / "single" / "snapshots")
            say(f"after checks: {node_line(node)}")
            t = time.monotonic()
            node.stop()
            say(
                f"SIGTERM stop took {time.monotonic() - t:.1f}s, exit code "
                f"{node.process.returncode}"
            )

        t = time.monotonic()
        with start_cluster(tmp / "cluster", n=3, heap=args.heap) as cluster:
            say(f"3-node cluster green in {time.monotonic() - t:.1f}s")
            for n in cluster:
                say("  " + node_line(n))
            total = sum(n.rss_bytes() or 0 for n in cluster)
            total_pss = sum(n.pss_bytes() or 0 for n in cluster)
            say(f"  total RSS {mib(total)}, PSS {mib(total_pss)}")
            cluster_checks(cluster)
            for n in cluster.running():
                say("  after checks: " + node_line(n))
        ok = True
    finally:
        if ok and not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            say(f"logs kept in {tmp}")
    say("selftest PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
