"""The SearchBackend port's contract (``tenantsearch.search.port``), run against every adapter.

Every test talks to the adapter through the port only and asserts on outcomes (which documents come
back, in which order, with which counts), never on engine details. A new adapter is added by adding
a param to the ``backend`` fixture and a branch to :func:`_make_backend`. Where engines may
legitimately differ (exact scores, which of several superseded ops in one batch is reported as
applied, where documents without a sort value go), the tests do not assert it and say so.

Every test uses its own tenant and collection uid, so the suite can share one engine and run in
parallel.
"""

from __future__ import annotations

import asyncio
import html
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from tenantsearch.search.port import CollectionRef, CollectionStats, InvalidCursor, SearchBackend
from tenantsearch.search.query import (
    Filter,
    SearchQuery,
    SearchResult,
    SortKey,
    WriteOp,
    WriteResult,
    parse_filter,
)
from tenantsearch.search.schema import CollectionSchema, parse_schema
from tenantsearch.search.tantivy_backend import TantivyBackend
from tests.support.opensearch import drop_prefix, make_backend, new_prefix

pytestmark = pytest.mark.timeout(120)

# -- test data builders ------------------------------------------------------------------------

CATALOG = parse_schema(
    {
        "title": {"type": "text", "language": "en"},
        "body": {"type": "text", "language": "en"},
        "tag": {"type": "keyword"},
        "color": {"type": "keyword"},
        "stock": {"type": "integer"},
        "price": {"type": "float"},
        "published": {"type": "date"},
        "active": {"type": "boolean"},
    }
)
"""The schema most tests use: one field of every type, two text fields."""

LANGUAGES = parse_schema(
    {
        "en": {"type": "text", "language": "en"},
        "de": {"type": "text", "language": "de"},
        "fr": {"type": "text", "language": "fr"},
        "es": {"type": "text", "language": "es"},
        "plain": {"type": "text"},
    }
)
"""One text field per language (``plain`` has no stemming)."""


def new_ref(
    schema: CollectionSchema = CATALOG, *, tenant: str | None = None, name: str = "products"
) -> CollectionRef:
    """A collection nobody else uses: a fresh tenant (unless given) and always a fresh uid."""
    return CollectionRef(
        tenant=tenant or f"t-{uuid.uuid4().hex[:12]}",
        name=name,
        uid=uuid.uuid4().hex,
        schema=schema,
    )


def put(doc_id: str, version: int = 1, **fields: Any) -> WriteOp:
    return WriteOp(id=doc_id, version=version, document=dict(fields))


def delete(doc_id: str, version: int) -> WriteOp:
    return WriteOp(id=doc_id, version=version, document=None)


async def new_collection(
    backend: SearchBackend, schema: CollectionSchema = CATALOG
) -> CollectionRef:
    ref = new_ref(schema)
    await backend.ensure_collection(ref)
    return ref


async def apply_ok(
    backend: SearchBackend, ref: CollectionRef, ops: Sequence[WriteOp]
) -> list[WriteResult]:
    """Apply ops that must all be applied."""
    results = await backend.apply(ref, ops)
    assert [(r.id, r.outcome) for r in results] == [(op.id, "applied") for op in ops]
    return results


async def index_docs(
    backend: SearchBackend, ref: CollectionRef, docs: Mapping[str, Mapping[str, Any]]
) -> None:
    """Put ``docs`` (id -> fields) at version 1 in one batch."""
    await apply_ok(backend, ref, [put(doc_id, 1, **fields) for doc_id, fields in docs.items()])


async def hit_ids(backend: SearchBackend, ref: CollectionRef, query: SearchQuery) -> list[str]:
    """Ids of one page, in order."""
    return [hit.id for hit in (await backend.search(ref, query)).hits]


async def page_through(
    backend: SearchBackend, ref: CollectionRef, query: SearchQuery
) -> tuple[list[str], list[SearchResult]]:
    """Follow ``next_after`` from the first page to the last; the ids in order and every page."""
    ids: list[str] = []
    pages: list[SearchResult] = []
    after: str | None = None
    while True:
        page = await backend.search(ref, replace(query, after=after))
        pages.append(page)
        ids.extend(hit.id for hit in page.hits)
        assert len(pages) <= 1000, "paging does not end"
        if page.next_after is None:
            return ids, pages
        assert page.hits, "a page with a next cursor must hold hits"
        after = page.next_after


def flt(raw: Mapping[str, Any], schema: CollectionSchema = CATALOG) -> Filter:
    """A filter from its public JSON form (the way the service builds one)."""
    return parse_filter(schema, dict(raw))


# -- the adapters ------------------------------------------------------------------------------


def _make_backend(kind: str, tmp_path: Path) -> SearchBackend:
    if kind == "tantivy":
        return TantivyBackend(tmp_path / "indexes", writer_heap_bytes=40_000_000)
    raise AssertionError(f"unknown search backend {kind!r}")


@pytest.fixture(params=["tantivy", "opensearch"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SearchBackend]:
    kind: str = request.param
    if kind == "opensearch":
        # The session's node (started on first use); a fresh index prefix for each test.
        url: str = request.getfixturevalue("opensearch_url")
        prefix = new_prefix()
        adapter: SearchBackend = make_backend(url, prefix)
    else:
        adapter = _make_backend(kind, tmp_path)
    await adapter.start()
    try:
        yield adapter
    finally:
        await adapter.close()
        if kind == "opensearch":
            await asyncio.to_thread(drop_prefix, url, prefix)


# -- lifecycle and collections -----------------------------------------------------------------


async def test_ping_after_start(backend: SearchBackend) -> None:
    await backend.ping()


async def test_ensure_collection_is_idempotent(backend: SearchBackend) -> None:
    ref = new_ref()
    await backend.ensure_collection(ref)
    await backend.ensure_collection(ref)
    assert await backend.count(ref) == 0

    await index_docs(backend, ref, {"a": {"title": "kept"}})
    await backend.ensure_collection(ref)

    assert await backend.count(ref) == 1
    assert await backend.get(ref, "a") == {"title": "kept"}


async def test_apply_of_no_ops_returns_no_results(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    assert await backend.apply(ref, []) == []


# -- put, get, delete --------------------------------------------------------------------------


async def test_put_then_get_and_count(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    doc = {"title": "Red shoes", "tag": ["shoes", "red"], "stock": 3, "price": 9.5}

    results = await backend.apply(ref, [put("p1", 1, **doc)])

    assert results == [WriteResult("p1", "applied")]
    assert await backend.get(ref, "p1") == doc
    assert await backend.get(ref, "missing") is None
    assert await backend.count(ref) == 1


async def test_delete_makes_the_document_unreadable(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    await index_docs(backend, ref, {"p1": {"title": "gone soon"}, "p2": {"title": "stays"}})

    results = await backend.apply(ref, [delete("p1", 2)])

    assert results == [WriteResult("p1", "applied")]
    assert await backend.get(ref, "p1") is None
    assert await backend.count(ref) == 1
    assert await hit_ids(backend, ref, SearchQuery(text="gone")) == []
    assert await hit_ids(backend, ref, SearchQuery()) == ["p2"]


async def test_put_replaces_the_whole_document(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    await index_docs(backend, ref, {"p1": {"title": "old words", "tag": "old", "stock": 1}})

    await apply_ok(backend, ref, [put("p1", 2, title="new words")])

    assert await backend.get(ref, "p1") == {"title": "new words"}
    assert await backend.count(ref) == 1
    assert await hit_ids(backend, ref, SearchQuery(text="old")) == []
    assert await hit_ids(backend, ref, SearchQuery(filter=flt({"tag": {"eq": "old"}}))) == []
    assert await hit_ids(backend, ref, SearchQuery(text="new")) == ["p1"]


async def test_documents_come_back_exactly_as_sent(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    doc: dict[str, Any] = {
        "id": "p1",
        "title": ["Ünïcödé ☃ title", None, "second <value> & more"],
        "body": "",
        "tag": [],
        "color": None,
        "stock": 3,
        "price": 2,
        "published": "2024-03-01T10:00:00.123+02:00",
        "active": False,
    }
    await apply_ok(backend, ref, [put("p1", 1, **doc)])

    assert await backend.get(ref, "p1") == doc
    [hit] = (await backend.search(ref, SearchQuery(text="second value"))).hits
    assert hit.id == "p1"
    assert hit.document == doc
    # The integer in a float field stays an integer, the date string keeps its offset.
    stored = await backend.get(ref, "p1")
    assert stored is not None
    assert type(stored["price"]) is int
    assert stored["published"] == "2024-03-01T10:00:00.123+02:00"


# -- isolation ---------------------------------------------------------------------------------


async def test_collections_with_same_name_and_ids_are_isolated(backend: SearchBackend) -> None:
    ours = new_ref(name="shared")
    theirs = new_ref(name="shared")
    recreated = new_ref(tenant=ours.tenant, name="shared")
    for ref in (ours, theirs, recreated):
        await backend.ensure_collection(ref)
    await index_docs(backend, ours, {"d1": {"title": "alpha ours", "tag": "x"}})
    await index_docs(
        backend,
        theirs,
        {"d1": {"title": "alpha theirs", "tag": "x"}, "d2": {"title": "alpha", "tag": "x"}},
    )

    assert await backend.get(ours, "d1") == {"title": "alpha ours", "tag": "x"}
    assert await backend.get(theirs, "d1") == {"title": "alpha theirs", "tag": "x"}
    assert await backend.get(ours, "d2") is None
    assert await backend.count(ours) == 1
    assert await backend.count(theirs) == 2
    assert await hit_ids(backend, ours, SearchQuery(text="alpha")) == ["d1"]
    result = await backend.search(ours, SearchQuery(facets=("tag",)))
    assert result.total == 1
    assert result.facets == {"tag": {"x": 1}}
    # A collection created again under the same tenant and name (new uid) starts empty.
    assert await backend.count(recreated) == 0
    assert await backend.get(recreated, "d1") is None

    # A newer version in one collection does not make the other's op stale, and vice versa.
    await apply_ok(backend, theirs, [put("d1", 5, title="theirs v5")])
    assert await backend.apply(ours, [put("d1", 2, title="ours v2")]) == [
        WriteResult("d1", "applied")
    ]
    assert await backend.get(ours, "d1") == {"title": "ours v2"}
    assert await backend.get(theirs, "d1") == {"title": "theirs v5"}


# -- versions ----------------------------------------------------------------------------------


async def test_older_version_after_newer_is_stale(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    await apply_ok(backend, ref, [put("p1", 5, title="five")])

    results = await backend.apply(ref, [put("p1", 4, title="four"), put("p1", 5, title="again")])

    assert [r.outcome for r in results] == ["stale", "stale"]
    assert await backend.get(ref, "p1") == {"title": "five"}
    assert await hit_ids(backend, ref, SearchQuery(text="four")) == []


async def test_redelivered_op_is_stale_and_changes_nothing(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    op = put("p1", 7, title="once", stock=1)
    assert await backend.apply(ref, [op]) == [WriteResult("p1", "applied")]

    assert await backend.apply(ref, [op]) == [WriteResult("p1", "stale")]
    assert await backend.apply(ref, [op, op]) == [
        WriteResult("p1", "stale"),
        WriteResult("p1", "stale"),
    ]
    assert await backend.get(ref, "p1") == {"title": "once", "stock": 1}
    assert await backend.count(ref) == 1
    assert (await backend.search(ref, SearchQuery(text="once"))).total == 1


async def test_delete_tombstone_blocks_older_put(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    await apply_ok(backend, ref, [put("p1", 1, title="first")])
    await apply_ok(backend, ref, [delete("p1", 3)])

    late = await backend.apply(ref, [put("p1", 2, title="late"), delete("p1", 3)])

    assert [r.outcome for r in late] == ["stale", "stale"]
    assert await backend.get(ref, "p1") is None
    assert await backend.count(ref) == 0
    assert (await backend.search(ref, SearchQuery())).total == 0

    await apply_ok(backend, ref, [put("p1", 4, title="back")])
    assert await backend.get(ref, "p1") == {"title": "back"}


async def test_delete_of_unknown_document_still_blocks_older_put(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    assert await backend.apply(ref, [delete("ghost", 10)]) == [WriteResult("ghost", "applied")]

    assert await backend.apply(ref, [put("ghost", 9, title="too late")]) == [
        WriteResult("ghost", "stale")
    ]
    assert await backend.get(ref, "ghost") is None
    assert await backend.count(ref) == 0


async def test_purge_removes_only_the_old_tombstones_of_the_given_collections(
    backend: SearchBackend,
) -> None:
    ref = await new_collection(backend)
    other = new_ref()  # another tenant's collection, the same document ids
    await backend.ensure_collection(other)
    await apply_ok(backend, ref, [put("old", 1, title="old"), put("kept", 2, title="kept")])
    await apply_ok(backend, ref, [delete("old", 5), delete("new", 9), put("live", 3, title="a")])
    await apply_ok(backend, other, [delete("old", 5)])

    assert await backend.purge_tombstones([ref], through_version=5) == 1
    assert await backend.purge_tombstones([ref], through_version=5) == 0  # nothing left to do

    # Not purged: the tombstone above the horizon, and the other collection's, still make older
    # puts stale. (Whether a put of "old" at version 4 is applied right after the purge depends
    # on the engine: OpenSearch remembers a delete for index.gc_deletes, 60 s. The indexer's
    # horizon keeps such puts away.)
    assert (await backend.apply(ref, [put("new", 8, title="late")]))[0].outcome == "stale"
    assert (await backend.apply(other, [put("old", 4, title="late")]))[0].outcome == "stale"
    # Documents are untouched, whatever their version.
    assert await backend.get(ref, "kept") == {"title": "kept"}
    assert await backend.get(ref, "live") == {"title": "a"}
    assert await backend.count(ref) == 2
    assert await backend.purge_tombstones([ref, other], through_version=9) == 2
    assert await backend.count(ref) == 2
    assert await backend.purge_tombstones([], through_version=100) == 0


async def test_results_are_one_per_op_in_order(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    await apply_ok(backend, ref, [put("b", 5, title="b5")])
    ops = [put("a", 1, title="a"), put("b", 4, title="b4"), put("c", 1, title="c"), delete("d", 1)]

    results = await backend.apply(ref, ops)

    assert [(r.id, r.outcome) for r in results] == [
        ("a", "applied"),
        ("b", "stale"),
        ("c", "applied"),
        ("d", "applied"),
    ]


async def test_highest_version_in_a_batch_wins(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    ops = [put("p1", 1, title="one"), put("p1", 3, title="three"), put("p1", 2, title="two")]

    results = await backend.apply(ref, ops)

    # Whether "one" counts as applied (then replaced) or stale may differ between engines; the
    # newest version must win and an op older than one before it in the batch is stale.
    assert results[0].outcome in ("applied", "stale")
    assert [r.outcome for r in results[1:]] == ["applied", "stale"]
    assert await backend.get(ref, "p1") == {"title": "three"}
    assert await backend.count(ref) == 1


async def test_refused_document_is_permanent_and_others_still_apply(
    backend: SearchBackend,
) -> None:
    ref = await new_collection(backend)

    results = await backend.apply(
        ref, [put("bad", 1, stock="not a number"), put("good", 1, title="fine")]
    )

    assert results[0].id == "bad"
    assert results[0].outcome == "permanent"
    assert results[0].message
    assert results[1] == WriteResult("good", "applied")
    assert await backend.get(ref, "bad") is None
    assert await backend.get(ref, "good") == {"title": "fine"}


async def test_refused_newer_op_does_not_block_an_older_one_in_the_batch(
    backend: SearchBackend,
) -> None:
    ref = await new_collection(backend)

    results = await backend.apply(
        ref, [put("p1", 3, stock="not a number"), put("p1", 2, title="valid"), put("p1", 1)]
    )

    assert [r.outcome for r in results[:2]] == ["permanent", "applied"]
    assert await backend.get(ref, "p1") == {"title": "valid"}
    assert (await backend.apply(ref, [put("p1", 2, title="again")]))[0].outcome == "stale"


# -- text search -------------------------------------------------------------------------------


async def test_english_stemming(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    await index_docs(
        backend, ref, {"runs": {"title": "She runs daily"}, "walk": {"title": "They walked"}}
    )

    assert await hit_ids(backend, ref, SearchQuery(text="running")) == ["runs"]
    assert await hit_ids(backend, ref, SearchQuery(text="RUN")) == ["runs"]
    assert await hit_ids(backend, ref, SearchQuery(text="walking")) == ["walk"]


@pytest.mark.parametrize(
    ("field", "stored", "query"),
    [
        ("de", "Die Häuser sind alt", "Haus"),
        ("de", "Viele Bücher", "buch"),
        ("fr", "Les chevaux galopent", "cheval"),
        ("fr", "Nous avons mangé", "manger"),
        ("es", "Las canciones nuevas", "canción"),
        ("es", "Los niños juegan", "niño"),
        ("en", "A cosy café", "cafe"),
        ("en", "A cosy cafe", "CAFÉ"),
        ("fr", "Un café crème", "cafe creme"),
        ("plain", "Crème brûlée", "creme brulee"),
    ],
)
async def test_stemming_and_accent_folding_per_language(
    backend: SearchBackend, field: str, stored: str, query: str
) -> None:
    ref = await new_collection(backend, LANGUAGES)
    await index_docs(backend, ref, {"hit": {field: stored}, "other": {field: "rien du tout"}})

    assert await hit_ids(backend, ref, SearchQuery(text=query)) == ["hit"]


async def test_a_field_without_language_is_not_stemmed(backend: SearchBackend) -> None:
    ref = await new_collection(backend, LANGUAGES)
    await index_docs(backend, ref, {"p": {"plain": "running"}, "e": {"en": "running"}})

    assert await hit_ids(backend, ref, SearchQuery(text="runs")) == ["e"]
    assert sorted(await hit_ids(backend, ref, SearchQuery(text="running"))) == ["e", "p"]


async def test_ranked_matching_finds_documents_with_some_of_the_words(
    backend: SearchBackend,
) -> None:
    ref = await new_collection(backend)
    await index_docs(
        backend,
        ref,
        {
            "three": {"title": "quick brown fox"},
            "two": {"title": "quick brown dog"},
            "one": {"title": "quick cat"},
            "none": {"title": "lazy dog"},
        },
    )

    result = await backend.search(ref, SearchQuery(text="quick brown fox"))
    # More of the words (and rarer ones: fox is in one document) rank higher.
    assert [hit.id for hit in result.hits] == ["three", "two", "one"]
    assert result.total == 3
    # A word no document holds does not empty the results; with "all" it does.
    assert sorted(await hit_ids(backend, ref, SearchQuery(text="brown fox zebra"))) == [
        "three",
        "two",
    ]
    assert await hit_ids(backend, ref, SearchQuery(text="zebra")) == []
    assert await hit_ids(backend, ref, SearchQuery(text="quick zebra", matching="all")) == []
    # A filter narrows the candidates; their order stays the words' order.
    only = SearchQuery(text="quick brown fox", filter=flt({"tag": {"eq": "x"}}))
    assert await hit_ids(backend, ref, only) == []


async def test_every_word_must_match_some_text_field_with_all(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    await index_docs(
        backend,
        ref,
        {
            "both": {"title": "quick brown fox"},
            "split": {"title": "quick", "body": "a brown dog"},
            "quick": {"title": "quick dog"},
            "brown": {"body": "brown dog"},
        },
    )

    def every(text: str) -> SearchQuery:
        return SearchQuery(text=text, matching="all")

    assert sorted(await hit_ids(backend, ref, every("quick brown"))) == ["both", "split"]
    assert await hit_ids(backend, ref, every("quick brown fox")) == ["both"]
    assert await hit_ids(backend, ref, every("quick cat")) == []
    assert sorted(await hit_ids(backend, ref, every("  "))) == sorted(
        ["both", "split", "quick", "brown"]
    )


async def test_query_syntax_is_plain_text(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    await index_docs(
        backend,
        ref,
        {"a": {"title": "alpha", "tag": "secret"}, "b": {"title": "beta OR gamma", "tag": "x"}},
    )

    def every(text: str) -> SearchQuery:
        return SearchQuery(text=text, matching="all")

    # Field names, operators and wildcards in the text are words, not query syntax.
    assert await hit_ids(backend, ref, every("tag:secret")) == []
    assert await hit_ids(backend, ref, every("alpha OR beta")) == []
    assert await hit_ids(backend, ref, every("beta OR")) == ["b"]
    assert await hit_ids(backend, ref, every("*")) == []
    assert await hit_ids(backend, ref, SearchQuery(text="tag:secret")) == []
    assert await hit_ids(backend, ref, SearchQuery(text="*")) == []


async def test_relevance_ranks_the_closer_match_first(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    filler = " ".join(f"word{i}" for i in range(60))
    await index_docs(
        backend,
        ref,
        {
            "weak": {"body": f"{filler} fox {filler}"},
            "strong": {"title": "fox", "body": "fox fox"},
            "none": {"body": "dog"},
        },
    )

    result = await backend.search(ref, SearchQuery(text="fox"))

    assert [hit.id for hit in result.hits] == ["strong", "weak"]
    assert all(isinstance(hit.score, float) for hit in result.hits)
    first, second = (hit.score for hit in result.hits)
    assert first is not None
    assert second is not None
    assert first > second


# -- filters -----------------------------------------------------------------------------------

FILTER_DOCS: dict[str, dict[str, Any]] = {
    "a": {
        "title": "alpha",
        "tag": ["red", "sale"],
        "color": "red",
        "stock": 0,
        "price": 1.5,
        "published": "2024-01-01T12:00:00.250Z",
        "active": True,
    },
    "b": {
        "title": "beta",
        "tag": "blue",
        "color": "blue",
        "stock": 5,
        "price": 10.0,
        "published": "2024-01-01T12:00:00.750Z",
        "active": False,
    },
    "c": {
        "title": "gamma",
        "tag": ["blue", "sale"],
        "color": "Blue Sky",
        "stock": [7, 100],
        "price": 99.99,
        "published": "2024-06-30",
        "active": True,
    },
    "d": {"title": "delta", "stock": -3, "price": -2.0, "published": "2023-12-31T23:59:59Z"},
    "e": {"title": "epsilon"},
}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"color": {"eq": "red"}}, "a"),
        ({"color": {"eq": "Red"}}, ""),
        ({"color": {"eq": "Blue Sky"}}, "c"),
        ({"tag": {"eq": "sale"}}, "ac"),
        ({"tag": {"eq": "blue"}}, "bc"),
        ({"tag": {"in": ["red", "blue"]}}, "abc"),
        ({"tag": {"in": ["nothing"]}}, ""),
        ({"active": {"eq": True}}, "ac"),
        ({"active": {"eq": False}}, "b"),
        ({"stock": {"eq": 5}}, "b"),
        ({"stock": {"eq": 100}}, "c"),
        ({"stock": {"in": [0, 7]}}, "ac"),
        ({"stock": {"gt": 0}}, "bc"),
        ({"stock": {"gte": 0}}, "abc"),
        ({"stock": {"lt": 0}}, "d"),
        ({"stock": {"gt": 5, "lte": 7}}, "c"),
        ({"stock": {"gte": 50}}, "c"),
        ({"price": {"eq": 10}}, "b"),
        ({"price": {"gt": 1.5}}, "bc"),
        ({"price": {"gte": 1.5, "lt": 10}}, "a"),
        ({"price": {"lte": 0}}, "d"),
        ({"published": {"gt": "2024-01-01T12:00:00.500Z"}}, "bc"),
        ({"published": {"gte": "2024-01-01T12:00:00.250Z", "lt": "2024-01-01T12:00:00.750Z"}}, "a"),
        ({"published": {"lt": "2024-01-01"}}, "d"),
        ({"published": {"gte": "2024-01-01T13:00:00+01:00", "lte": "2024-01-01T12:00:01Z"}}, "ab"),
        ({"published": {"eq": "2024-06-30T00:00:00Z"}}, "c"),
        ({"not": {"tag": {"eq": "sale"}}}, "bde"),
        ({"not": {"stock": {"gte": 0}}}, "de"),
        ({"or": [{"color": {"eq": "red"}}, {"stock": {"lt": 0}}]}, "ad"),
        ({"and": [{"tag": {"eq": "sale"}}, {"active": {"eq": True}}]}, "ac"),
        ({"tag": {"eq": "sale"}, "price": {"gt": 2}}, "c"),
        (
            {
                "or": [
                    {"and": [{"tag": {"eq": "blue"}}, {"not": {"active": {"eq": True}}}]},
                    {"not": {"stock": {"gte": -100}}},
                ]
            },
            "be",
        ),
        (
            {"and": [{"not": {"color": {"in": ["red", "blue"]}}}, {"price": {"lt": 100}}]},
            "cd",
        ),
        ({"not": {"not": {"color": {"eq": "blue"}}}}, "b"),
    ],
)
async def test_filter(backend: SearchBackend, raw: dict[str, Any], expected: str) -> None:
    ref = await new_collection(backend)
    await index_docs(backend, ref, FILTER_DOCS)

    result = await backend.search(ref, SearchQuery(filter=flt(raw), limit=100))

    assert sorted(hit.id for hit in result.hits) == sorted(expected)
    assert result.total == len(expected)


async def test_filter_combines_with_text_and_keeps_relevance(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    await index_docs(
        backend,
        ref,
        {
            "x1": {"title": "lamp lamp lamp", "color": "red"},
            "x2": {"title": "lamp", "body": "a long text about a lamp and more", "color": "red"},
            "x3": {"title": "lamp", "color": "blue"},
        },
    )
    plain = await hit_ids(backend, ref, SearchQuery(text="lamp"))
    filtered = await hit_ids(
        backend, ref, SearchQuery(text="lamp", filter=flt({"color": {"eq": "red"}}))
    )

    assert sorted(filtered) == ["x1", "x2"]
    # The filter narrows the matches without reordering them.
    assert filtered == [doc_id for doc_id in plain if doc_id in filtered]


# -- sorting -----------------------------------------------------------------------------------

SORT_DOCS: dict[str, dict[str, Any]] = {
    "s1": {"title": "item", "stock": 5, "price": 2.5, "published": "2024-05-01", "color": "m"},
    "s2": {"title": "item", "stock": -1, "price": 10.0, "published": "2023-01-01", "color": "b"},
    "s3": {"title": "item", "stock": 42, "price": 0.5, "published": "2024-12-31", "color": "z"},
    "s4": {"title": "item", "stock": 7, "price": 3.0, "published": "2024-05-02", "color": "a"},
}


@pytest.mark.parametrize(
    ("field", "ascending"),
    [
        ("stock", ["s2", "s1", "s4", "s3"]),
        ("price", ["s3", "s1", "s4", "s2"]),
        ("published", ["s2", "s1", "s4", "s3"]),
        ("color", ["s4", "s2", "s1", "s3"]),
    ],
)
async def test_sort_ascending_and_descending(
    backend: SearchBackend, field: str, ascending: list[str]
) -> None:
    ref = await new_collection(backend)
    await index_docs(backend, ref, SORT_DOCS)

    up = await backend.search(ref, SearchQuery(text="item", sort=(SortKey(field),)))
    down = await backend.search(ref, SearchQuery(text="item", sort=(SortKey(field, True),)))

    assert [hit.id for hit in up.hits] == ascending
    assert [hit.id for hit in down.hits] == ascending[::-1]
    assert all(hit.score is None for hit in up.hits + down.hits)


async def test_sort_with_filter_and_missing_values(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    await index_docs(backend, ref, {**SORT_DOCS, "s5": {"title": "item without stock"}})

    result = await backend.search(
        ref,
        SearchQuery(sort=(SortKey("stock", True),), filter=flt({"price": {"lt": 5}}), limit=10),
    )
    everything = await backend.search(ref, SearchQuery(sort=(SortKey("stock"),), limit=10))

    assert [hit.id for hit in result.hits] == ["s3", "s4", "s1"]
    # Where a document without the sort value goes is the engine's choice; it is still a hit.
    assert sorted(hit.id for hit in everything.hits) == ["s1", "s2", "s3", "s4", "s5"]
    ordered = [hit.id for hit in everything.hits if hit.id != "s5"]
    assert ordered == ["s2", "s1", "s4", "s3"]


# -- facets ------------------------------------------------------------------------------------


async def test_facets_count_keyword_values_among_the_matches(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    await index_docs(backend, ref, FILTER_DOCS)

    everything = await backend.search(ref, SearchQuery(facets=("tag", "color"), limit=1))
    on_sale = await backend.search(
        ref, SearchQuery(filter=flt({"tag": {"eq": "sale"}}), facets=("tag", "color"))
    )
    by_text = await backend.search(ref, SearchQuery(text="beta", facets=("tag",)))
    nothing = await backend.search(ref, SearchQuery(text="zzz", facets=("tag",)))

    assert everything.facets == {
        "tag": {"sale": 2, "blue": 2, "red": 1},
        "color": {"red": 1, "blue": 1, "Blue Sky": 1},
    }
    assert on_sale.facets == {
        "tag": {"sale": 2, "red": 1, "blue": 1},
        "color": {"red": 1, "Blue Sky": 1},
    }
    assert by_text.facets == {"tag": {"blue": 1}}
    assert nothing.facets == {"tag": {}}
    assert nothing.total == 0


async def test_facet_size_keeps_the_most_frequent_values(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    docs = {f"d{i}": {"tag": ["common", f"rare{i}"] + (["mid"] if i < 3 else [])} for i in range(6)}
    await index_docs(backend, ref, docs)

    result = await backend.search(ref, SearchQuery(facets=("tag",), facet_size=2))

    assert result.facets == {"tag": {"common": 6, "mid": 3}}
    assert list(result.facets["tag"]) == ["common", "mid"]


# -- highlights --------------------------------------------------------------------------------

_EM = re.compile(r"</?em>")


def _marked(fragment: str) -> list[str]:
    """The (unescaped) text of every ``<em>`` in a highlight fragment."""
    return [html.unescape(m) for m in re.findall(r"<em>(.*?)</em>", fragment)]


async def test_highlights_wrap_matches_and_escape_the_rest(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    title = "<script>alert('x')</script> Running & jumping at the café"
    await index_docs(
        backend, ref, {"h": {"title": title, "body": ["nothing here", "more running"]}}
    )

    result = await backend.search(ref, SearchQuery(text="run cafe", highlight=True))
    plain = await backend.search(ref, SearchQuery(text="run cafe"))

    [hit] = result.hits
    assert hit.highlights is not None
    [fragment] = hit.highlights["title"]
    assert "<script>" not in fragment
    assert "&lt;script&gt;" in fragment
    assert _marked(fragment) == ["Running", "café"]
    # Without the <em> tags the fragment is an escaped piece of the original text (engines may
    # escape more than the minimum, e.g. "/" or non-ASCII letters as character references).
    assert html.unescape(_EM.sub("", fragment)) in title
    body = hit.highlights.get("body", [])
    assert len(body) == 1
    assert _marked(body[0]) == ["running"]
    assert plain.hits[0].highlights is None


async def test_highlight_only_marks_query_terms(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    await index_docs(backend, ref, {"h": {"title": "red apples and green pears"}})

    [hit] = (await backend.search(ref, SearchQuery(text="apple", highlight=True))).hits

    assert hit.highlights is not None
    [fragment] = hit.highlights["title"]
    assert _marked(fragment) == ["apples"]


# -- paging ------------------------------------------------------------------------------------


async def _tied_collection(backend: SearchBackend, count: int = 137) -> CollectionRef:
    """``count`` documents that tie on score and on ``stock``, written over several applies (so an
    engine holds them in several segments/shards), with updates and deletes in between."""
    ref = await new_collection(backend)

    def same(i: int, version: int) -> WriteOp:
        return put(f"doc-{i:04d}", version, title="same words", stock=7, color="c", price=1.0)

    for start in range(0, count, 20):
        await apply_ok(backend, ref, [same(i, 1) for i in range(start, min(start + 20, count))])
    await apply_ok(backend, ref, [same(i, 2) for i in range(0, count, 9)])
    # Deleted and re-added documents, and extra ones that never match the filtered query.
    await apply_ok(backend, ref, [delete(f"doc-{i:04d}", 3) for i in range(3, count, 11)])
    await apply_ok(backend, ref, [same(i, 4) for i in range(3, count, 11)])
    await apply_ok(backend, ref, [put(f"other-{i}", 1, title="other", stock=1) for i in range(15)])
    return ref


@pytest.mark.parametrize(
    "query",
    [
        SearchQuery(text="same words", limit=7),
        SearchQuery(limit=7),
        SearchQuery(text="words", sort=(SortKey("stock"),), limit=7),
        SearchQuery(sort=(SortKey("stock", True),), limit=10),
        SearchQuery(sort=(SortKey("color"),), filter=None, limit=13),
        SearchQuery(filter=parse_filter(CATALOG, {"stock": {"eq": 7}}), limit=7),
        SearchQuery(text="same", sort=(SortKey("price", True),), facets=("color",), limit=25),
    ],
    ids=["score-ties", "match-all", "sort-asc-ties", "sort-desc-ties", "keyword", "filter", "f"],
)
async def test_paging_visits_every_hit_once_in_a_stable_order(
    backend: SearchBackend, query: SearchQuery
) -> None:
    ref = await _tied_collection(backend)
    expected = (await backend.search(ref, replace(query, limit=1000))).total
    all_at_once = await hit_ids(backend, ref, replace(query, limit=1000))

    ids, pages = await page_through(backend, ref, query)
    again, _ = await page_through(backend, ref, query)

    assert expected in (137, 137 + 15)
    assert len(all_at_once) == expected
    assert len(ids) == len(set(ids)) == expected
    assert ids == all_at_once
    assert again == ids
    assert all(page.total == expected for page in pages)
    assert all(len(page.hits) == query.limit for page in pages[:-1])
    assert pages[-1].next_after is None


async def test_last_page_has_no_cursor(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    await index_docs(backend, ref, {f"d{i}": {"title": "x"} for i in range(6)})

    exact = await backend.search(ref, SearchQuery(limit=6))
    more = await backend.search(ref, SearchQuery(limit=4))
    rest = await backend.search(ref, SearchQuery(limit=4, after=more.next_after))
    empty = await backend.search(ref, SearchQuery(text="nothing", limit=4))

    assert len(exact.hits) == 6
    assert exact.next_after is None
    assert len(more.hits) == 4
    assert more.next_after is not None
    assert len(rest.hits) == 2
    assert rest.next_after is None
    assert empty.hits == []
    assert empty.total == 0
    assert empty.next_after is None


@pytest.mark.parametrize(
    "token", ["", "garbage", "!!!not-base64!!!", "eyJvIjogLTF9", "bnVsbA", "W10", "e30"]
)
async def test_invalid_cursor_is_refused(backend: SearchBackend, token: str) -> None:
    ref = await new_collection(backend)
    await index_docs(backend, ref, {f"d{i}": {"title": "x"} for i in range(3)})

    with pytest.raises(InvalidCursor):
        await backend.search(ref, SearchQuery(limit=1, after=token))


async def test_total_counts_every_match(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    docs = {f"d{i}": {"title": "apple" if i % 3 else "pear", "stock": i} for i in range(50)}
    await index_docs(backend, ref, docs)

    result = await backend.search(ref, SearchQuery(text="apple", limit=5))
    filtered = await backend.search(
        ref, SearchQuery(text="apple", filter=flt({"stock": {"lt": 10}}), limit=5)
    )

    assert result.total == 33
    assert len(result.hits) == 5
    assert filtered.total == 6
    assert await backend.count(ref) == 50


# -- dropping ----------------------------------------------------------------------------------


async def test_drop_collection_makes_data_unreadable_and_is_idempotent(
    backend: SearchBackend,
) -> None:
    ref = await new_collection(backend)
    neighbour = new_ref(tenant=ref.tenant, name="other")
    await backend.ensure_collection(neighbour)
    await index_docs(backend, ref, {"d1": {"title": "doomed", "tag": "x"}})
    await index_docs(backend, neighbour, {"d1": {"title": "kept"}})

    await backend.drop_collection(ref)
    await backend.drop_collection(ref)
    await backend.drop_collection(new_ref())

    assert await backend.get(ref, "d1") is None
    assert await backend.count(ref) == 0
    gone = await backend.search(ref, SearchQuery(text="doomed", facets=("tag",)))
    assert gone.hits == []
    assert gone.total == 0
    assert await backend.get(neighbour, "d1") == {"title": "kept"}


async def test_drop_tenant_removes_all_its_collections_only(backend: SearchBackend) -> None:
    first = await new_collection(backend)
    second = new_ref(tenant=first.tenant, name="second")
    other = await new_collection(backend)
    await backend.ensure_collection(second)
    for ref in (first, second, other):
        await index_docs(backend, ref, {"d1": {"title": "data"}})

    await backend.drop_tenant(first.tenant)
    await backend.drop_tenant(first.tenant)
    await backend.drop_tenant(f"t-{uuid.uuid4().hex[:12]}")

    for ref in (first, second):
        assert await backend.get(ref, "d1") is None
        assert await backend.count(ref) == 0
        assert (await backend.search(ref, SearchQuery(text="data"))).total == 0
    assert await backend.get(other, "d1") == {"title": "data"}
    assert await backend.count(other) == 1


# -- stats -------------------------------------------------------------------------------------


def sizes(*docs: Mapping[str, Any]) -> int:
    """``stored_bytes`` of ``docs`` by the port's definition, computed independently."""
    return sum(len(orjson.dumps(dict(doc))) for doc in docs)


async def test_stats_of_empty_and_missing_collections(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    assert await backend.stats(ref) == CollectionStats(documents=0, stored_bytes=0)
    assert await backend.stats(new_ref()) == CollectionStats(documents=0, stored_bytes=0)


async def test_stats_sum_the_stored_size_of_live_documents(backend: SearchBackend) -> None:
    docs: dict[str, dict[str, Any]] = {
        "a": {"title": "Red shoes", "tag": ["shoes", "red"], "stock": 3, "price": 9.5},
        "b": {"id": "b", "title": ["Ünïcödé ☃", None], "published": "2024-03-01T10:00:00+02:00"},
        "c": {},
    }
    ref = await new_collection(backend)
    await index_docs(backend, ref, docs)

    stats = await backend.stats(ref)
    assert stats == CollectionStats(documents=3, stored_bytes=sizes(*docs.values()))
    assert stats.documents == await backend.count(ref)


async def test_stats_follow_updates_deletes_and_ignore_stale_ops(backend: SearchBackend) -> None:
    ref = await new_collection(backend)
    small = {"title": "small"}
    other = {"title": "other", "stock": 7}
    big = {"title": "big " * 200, "tag": "x"}
    await apply_ok(backend, ref, [put("a", 1, **small), put("b", 1, **other)])
    assert await backend.stats(ref) == CollectionStats(2, sizes(small, other))

    await apply_ok(backend, ref, [put("a", 2, **big)])
    assert await backend.stats(ref) == CollectionStats(2, sizes(big, other))

    await apply_ok(backend, ref, [delete("b", 3)])
    assert await backend.stats(ref) == CollectionStats(1, sizes(big))

    stale = await backend.apply(ref, [put("b", 2, **big), put("a", 1, **small)])
    assert [r.outcome for r in stale] == ["stale", "stale"]
    assert await backend.stats(ref) == CollectionStats(1, sizes(big))

    await apply_ok(backend, ref, [delete("a", 4)])
    assert await backend.stats(ref) == CollectionStats(0, 0)


async def test_stats_are_isolated_between_collections(backend: SearchBackend) -> None:
    ours = new_ref(name="shared")
    theirs = new_ref(name="shared")
    sibling = new_ref(tenant=ours.tenant, name="sibling")
    for ref in (ours, theirs, sibling):
        await backend.ensure_collection(ref)
    mine = {"title": "mine"}
    yours = {"title": "yours, and longer"}
    await index_docs(backend, ours, {"d1": mine})
    await index_docs(backend, theirs, {"d1": yours, "d2": yours})

    assert await backend.stats(ours) == CollectionStats(1, sizes(mine))
    assert await backend.stats(theirs) == CollectionStats(2, sizes(yours, yours))
    assert await backend.stats(sibling) == CollectionStats(0, 0)

    await backend.drop_collection(theirs)
    assert await backend.stats(theirs) == CollectionStats(0, 0)
    assert await backend.stats(ours) == CollectionStats(1, sizes(mine))
