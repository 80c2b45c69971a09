"""What the OpenSearch adapter promises beyond the SearchBackend contract, on a real node.

The port's contract itself is ``test_search_backend.py`` (run against this adapter too); these
tests check the index design: shared indices with bounded mappings, dedicated placement, the
collection registry that keeps late writes out of dropped collections, start-up from several
processes, analyzers equal to the embedded engine's, and errors that never leak the engine.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tenantsearch.errors import TenantSearchError
from tenantsearch.search import analyzers
from tenantsearch.search.opensearch_backend import OpenSearchBackend, RetryPolicy
from tenantsearch.search.port import BackendUnavailable, CollectionRef
from tenantsearch.search.query import SearchQuery, SortKey, WriteOp, WriteResult
from tenantsearch.search.schema import parse_schema
from tests.support.opensearch import drop_prefix, make_backend, new_prefix
from tests.support.opensearch_node import free_port, http_request

pytestmark = pytest.mark.timeout(120)

SCHEMA = parse_schema(
    {
        "title": {"type": "text", "language": "en"},
        "tag": {"type": "keyword"},
        "n": {"type": "integer"},
    }
)


def new_ref(tenant: str | None = None, schema: Any = SCHEMA) -> CollectionRef:
    return CollectionRef(
        tenant=tenant or f"t-{uuid.uuid4().hex[:12]}", name="c", uid=uuid.uuid4().hex, schema=schema
    )


def put(doc_id: str, version: int = 1, **fields: Any) -> WriteOp:
    return WriteOp(doc_id, version, dict(fields))


def raw(url: str, method: str, path: str, body: Any = None) -> Any:
    return http_request(method, url + path, body, expect=(200, 201))[1]


@pytest.fixture
def prefix(opensearch_url: str) -> Iterator[str]:
    value = new_prefix()
    yield value
    drop_prefix(opensearch_url, value)


@pytest.fixture
async def backend(opensearch_url: str, prefix: str) -> AsyncIterator[OpenSearchBackend]:
    adapter = make_backend(opensearch_url, prefix, dedicated_tenants=["big"])
    await adapter.start()
    try:
        yield adapter
    finally:
        await adapter.close()


async def test_collections_share_one_index_and_the_mapping_stays_bounded(
    backend: OpenSearchBackend, opensearch_url: str, prefix: str
) -> None:
    # 30 collections, each naming its fields differently and one reusing "title" as a keyword.
    refs = []
    for i in range(30):
        schema = parse_schema({f"name{i}": {"type": "keyword"}, f"text{i}": {"type": "text"}})
        refs.append(new_ref(schema=schema))
    clash = new_ref(schema=parse_schema({"title": {"type": "keyword"}}))
    plain = new_ref()
    for i, ref in enumerate(refs):
        await backend.ensure_collection(ref)
        assert await backend.apply(ref, [put("d", 1, **{f"name{i}": "x", f"text{i}": "y"})]) == [
            WriteResult("d", "applied")
        ]
    for ref in (clash, plain):
        await backend.ensure_collection(ref)
    await backend.apply(clash, [put("d", 1, title="Exact Title")])
    await backend.apply(plain, [put("d", 1, title="Running text")])

    indices = raw(opensearch_url, "GET", f"/_cat/indices/{prefix}-*?format=json")
    assert sorted(i["index"] for i in indices) == [
        f"{prefix}-registry-v1",
        f"{prefix}-shared-v1-000001",
        f"{prefix}-tenant-big-v1-000001",  # the fixture's dedicated tenant
    ]
    mapping = raw(opensearch_url, "GET", f"/{prefix}-shared-read/_mapping")
    [(_, index_mapping)] = mapping.items()
    slots = index_mapping["mappings"]["properties"]["f"]["properties"]
    assert slots == {
        "kw_0": {"type": "keyword"},
        "text_en_0": {"type": "text", "store": True, "analyzer": "ts_en"},
        "text_none_0": {"type": "text", "store": True, "analyzer": "ts_none"},
    }
    # The same field name with two types in two collections: each behaves as its own type.
    hits = await backend.search(clash, SearchQuery(sort=(SortKey("title"),)))
    assert [h.document for h in hits.hits] == [{"title": "Exact Title"}]
    assert [h.id for h in (await backend.search(plain, SearchQuery(text="run"))).hits] == ["d"]


async def test_source_holds_exactly_the_document_and_unknown_fields_are_refused(
    backend: OpenSearchBackend, opensearch_url: str, prefix: str
) -> None:
    ref = new_ref()
    await backend.ensure_collection(ref)
    await backend.apply(ref, [put("d1", 1, title="hello", n=3)])

    stored = raw(
        opensearch_url,
        "GET",
        f"/{prefix}-shared-read/_doc/{ref.uid}:d1?routing={ref.tenant}",
    )
    assert stored["_source"] == {
        "_tenant": ref.tenant,
        "_collection": ref.uid,
        "_doc_id": "d1",
        "doc": {"title": "hello", "n": 3},
    }
    assert stored["_version"] == 1
    # dynamic: strict at the root, only the templates' slot names under f.
    for body in ({"_tenant": "x", "other": 1}, {"_tenant": "x", "f": {"free_name": 1}}):
        status, _ = http_request(
            "PUT", f"{opensearch_url}/{prefix}-shared-write/_doc/probe", body, expect=None
        )
        assert status == 400


async def test_dedicated_tenant_uses_its_own_index_with_the_same_behaviour(
    backend: OpenSearchBackend, opensearch_url: str, prefix: str
) -> None:
    big = new_ref(tenant="big")
    small = new_ref()
    for ref in (big, small):
        await backend.ensure_collection(ref)
        docs = [put(f"d{i}", 1, title="same words", tag=f"t{i % 3}", n=i) for i in range(25)]
        assert {r.outcome for r in await backend.apply(ref, docs)} == {"applied"}
    assert (await backend.apply(big, [WriteOp("d0", 2, None)]))[0].outcome == "applied"
    assert (await backend.apply(big, [put("d0", 1, title="late")]))[0].outcome == "stale"

    count = raw(opensearch_url, "GET", f"/{prefix}-tenant-big-read/_count")["count"]
    assert count == 25  # 24 documents and one tombstone, none in the shared index
    shared = raw(opensearch_url, "POST", f"/{prefix}-shared-read/_count")["count"]
    assert shared == 25
    assert await backend.count(big) == 24
    assert await backend.get(big, "d1") == {"title": "same words", "tag": "t1", "n": 1}
    assert await backend.get(big, "d0") is None

    ids: list[str] = []
    after = None
    while True:
        page = await backend.search(
            big, SearchQuery(sort=(SortKey("n", True),), limit=7, after=after, facets=("tag",))
        )
        ids += [h.id for h in page.hits]
        assert list(page.facets["tag"].items()) == [("t0", 8), ("t1", 8), ("t2", 8)]
        if page.next_after is None:
            break
        after = page.next_after
    assert ids == [f"d{i}" for i in range(24, 0, -1)]

    await backend.drop_tenant("big")
    assert await backend.count(big) == 0
    assert raw(opensearch_url, "GET", f"/{prefix}-tenant-big-read/_count")["count"] == 0
    assert await backend.count(small) == 25


async def test_writes_to_unknown_or_dropped_collections_are_refused_and_leave_nothing(
    backend: OpenSearchBackend, opensearch_url: str, prefix: str
) -> None:
    never = new_ref()
    assert await backend.apply(never, [put("d1", 1, title="x")]) == [
        WriteResult("d1", "permanent", "the collection does not exist")
    ]
    dropped = new_ref()
    await backend.ensure_collection(dropped)
    await backend.apply(dropped, [put("d1", 1, title="x")])
    await backend.drop_collection(dropped)
    late = await backend.apply(dropped, [put("d2", 5, title="late")])
    assert late[0].outcome == "permanent"

    erased = new_ref()
    await backend.ensure_collection(erased)
    await backend.drop_tenant(erased.tenant)
    assert (await backend.apply(erased, [put("d1", 1)]))[0].outcome == "permanent"

    for ref in (never, dropped, erased):
        query = {"query": {"term": {"_collection": ref.uid}}}
        assert raw(opensearch_url, "POST", f"/{prefix}-shared-read/_count", query)["count"] == 0


async def test_a_write_that_races_a_drop_is_removed_again(
    backend: OpenSearchBackend, opensearch_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = new_ref()
    await backend.ensure_collection(ref)
    # The drop lands between apply's check before writing and its check after writing.
    checks = iter([True, False])

    async def is_active(_: CollectionRef) -> bool:
        return next(checks)

    monkeypatch.setattr(backend, "_is_active", is_active)

    results = await backend.apply(ref, [put("d1", 1, title="x"), put("d2", 1, title="y")])

    assert [r.outcome for r in results] == ["permanent", "permanent"]
    query = {"query": {"term": {"_collection": ref.uid}}}
    assert raw(opensearch_url, "POST", f"/{prefix}-shared-read/_count", query)["count"] == 0


async def test_start_is_idempotent_and_safe_when_processes_start_together(
    opensearch_url: str, prefix: str
) -> None:
    adapters = [make_backend(opensearch_url, prefix) for _ in range(3)]
    try:
        await asyncio.gather(*(a.start() for a in adapters))
        await adapters[0].start()
        ref = new_ref()
        await adapters[1].ensure_collection(ref)
        await adapters[2].apply(ref, [put("d1", 1, title="one")])
        assert await adapters[0].get(ref, "d1") == {"title": "one"}
        for adapter in adapters:
            await adapter.ping()
    finally:
        for adapter in adapters:
            await adapter.close()


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_an_unreachable_engine_is_backend_unavailable(scheme: str) -> None:
    adapter = OpenSearchBackend(
        [f"{scheme}://127.0.0.1:{free_port()}"],
        index_prefix="unreachable",
        verify_certs=scheme == "http",
        timeout_seconds=2,
        retry=RetryPolicy(attempts=2, base_seconds=0.01, max_seconds=0.02),
    )
    ref = new_ref()
    try:
        with pytest.raises(BackendUnavailable, match="cannot be reached"):
            await adapter.start()
        calls = [
            adapter.ping(),
            adapter.get(ref, "d1"),
            adapter.count(ref),
            adapter.search(ref, SearchQuery(text="x")),
            adapter.apply(ref, [put("d1")]),
            adapter.drop_collection(ref),
        ]
        for call in calls:
            with pytest.raises(BackendUnavailable):
                await call
    finally:
        await adapter.close()


async def test_engine_errors_are_translated_and_never_quoted(
    backend: OpenSearchBackend, opensearch_url: str, prefix: str
) -> None:
    ref = new_ref()
    await backend.ensure_collection(ref)
    raw(opensearch_url, "DELETE", f"/{prefix}-shared-v1-000001,{prefix}-registry-v1")

    for call in (
        backend.search(ref, SearchQuery(text="x")),
        backend.get(ref, "d1"),
        backend.count(ref),
        backend.apply(ref, [put("d1")]),
        backend.ping(),
    ):
        with pytest.raises(TenantSearchError) as caught:
            await call
        assert isinstance(caught.value, BackendUnavailable)
        assert "exception" not in caught.value.detail
        assert prefix not in caught.value.detail


# Text per language, avoiding the one stem known to differ (English "-ization": Snowball's newer
# English stemmer in tantivy gives "organiz", Lucene 9.12's "organ").
PARITY_TEXT = {
    "en": "Running runs quickly the houses CAFÉ café naïve jumped generously",
    "de": "Die Häuser Bücher laufen gelaufen Straße Mädchen schönen Größe übermäßig",
    "fr": "Les chevaux galopent mangé manger crème brûlée élèves forêts",
    "es": "Las canciones nuevas niños juegan corazón árboles",
    "it": "Le città bellissime mangiando ragazzi",
    "pt": "As canções corações ações nações",
    "nl": "De huizen lopen gelopen kinderen gefietst gekocht nationale ontwikkelingen",
    "sv": "Husen barnen springer sprang",
    "da": "Husene børnene løber",
    "no": "Husene barna løper",
    "fi": "Talossa taloissa juoksemme",
    "hu": "Házakban gyerekeknek futottak",
    "ro": "Casele copiii alergând",
    "ru": "Дома бегущие детей красивыми",
    "tr": "Evlerde çocuklar koşuyorlar",
    "el": "Τα σπίτια παιδιά τρέχουν όμορφα",  # noqa: RUF001 - Greek text, on purpose
    "ar": "المكتبة الكتب يكتبون",
    "ta": "வீடுகள் குழந்தைகள் ஓடுகிறார்கள்",
    "none": "Crème brûlée RUNNING x-ray 42nd",
}


async def test_analyzers_produce_the_embedded_engines_terms(
    backend: OpenSearchBackend, opensearch_url: str, prefix: str
) -> None:
    assert set(PARITY_TEXT) == set(analyzers.languages())
    for language, text in PARITY_TEXT.items():
        text = f"{text} {'a' * 45} snake_case dotted.name"
        answer = raw(
            opensearch_url,
            "POST",
            f"/{prefix}-shared-read/_analyze",
            {"analyzer": f"ts_{language}", "text": text},
        )
        assert [t["token"] for t in answer["tokens"]] == analyzers.analyze(language, text), language
