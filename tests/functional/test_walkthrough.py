"""The README's walk-through and the core search features, through HTTP."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.api import Api

DOCS: list[dict[str, Any]] = [
    {
        "id": "1",
        "title": "The quick brown fox",
        "tag": "animal",
        "price": 3.5,
        "published": "2024-01-05",
    },
    {
        "id": "2",
        "title": "Foxes running in the snow",
        "tag": "animal",
        "price": 12.0,
        "published": "2024-03-01T10:00:00Z",
    },
    {
        "id": "3",
        "title": "A lazy dog sleeps",
        "tag": "pet",
        "price": 7.25,
        "published": "2023-12-24",
    },
    {
        "id": "4",
        "title": "Cooking <script>alert(1)</script> fox stew",
        "tag": "food",
        "price": 20.0,
        "published": "2022-06-30",
    },
]


async def test_walkthrough(api: Api, client: httpx.AsyncClient) -> None:
    tenant, auth = await api.tenant("acme")
    assert tenant == "acme"
    await api.collection(auth, "books")
    task = await api.index(auth, "books", DOCS)
    assert (task["received"], task["indexed"], task["failed"]) == (4, 4, 0)

    r = await api.search(auth, "books", q="fox")
    assert r.status_code == 200
    body = r.json()
    assert {h["id"] for h in body["hits"]} == {"1", "2", "4"}  # "foxes" stems to "fox"
    assert body["total"] == 3
    assert body["next_cursor"] is None

    r = await client.get("/v1/collections/books/documents/3", headers=auth)
    assert r.status_code == 200
    assert r.json() == DOCS[2]

    r = await client.get(f"/v1/tasks/{task['id']}", headers=auth)
    assert r.json()["status"] == "succeeded"


async def test_filters_sort_facets_highlight(api: Api) -> None:
    _, auth = await api.tenant()
    await api.collection(auth, "books")
    await api.index(auth, "books", DOCS)

    r = await api.search(auth, "books", filter={"tag": {"eq": "animal"}}, sort=[{"price": "desc"}])
    assert [h["id"] for h in r.json()["hits"]] == ["2", "1"]

    r = await api.search(
        auth,
        "books",
        filter={"or": [{"tag": {"in": ["pet", "food"]}}, {"price": {"lt": 4}}]},
        sort=[{"price": "asc"}],
    )
    assert [h["id"] for h in r.json()["hits"]] == ["1", "3", "4"]

    r = await api.search(
        auth,
        "books",
        filter={"and": [{"published": {"gte": "2024-01-01"}}, {"not": {"tag": {"eq": "pet"}}}]},
    )
    assert {h["id"] for h in r.json()["hits"]} == {"1", "2"}

    r = await api.search(auth, "books", q="fox", facets=["tag"])
    assert r.json()["facets"] == {"tag": {"animal": 2, "food": 1}}

    r = await api.search(auth, "books", q="fox stew", matching="all")
    assert [h["id"] for h in r.json()["hits"]] == ["4"]
    r = await api.search(auth, "books", q="fox stew", highlight=True)
    hits = r.json()["hits"]
    # Ranked by default: the one with both words first, then those with one of them.
    assert [h["id"] for h in hits][:1] == ["4"]
    assert r.json()["total"] == 3
    fragment = " ".join(hits[0]["highlights"]["title"])
    assert "<em>" in fragment
    assert "<script>" not in fragment
    assert "&lt;script&gt;" in fragment


async def test_cursor_pages_through_every_hit_once(api: Api) -> None:
    _, auth = await api.tenant()
    await api.collection(
        auth,
        "many",
        {
            "body": {"type": "text", "language": "en"},
            "n": {"type": "integer"},
            "g": {"type": "keyword"},
        },
    )
    docs: list[dict[str, Any]] = [
        {"id": f"d{i:03}", "body": "same words everywhere", "n": i % 5, "g": "x"}
        for i in range(157)
    ]
    queries: list[dict[str, Any]] = [
        {"q": "words"},
        {"q": ""},
        {"sort": [{"n": "asc"}]},
        {"sort": [{"n": "desc"}]},
    ]
    await api.index(auth, "many", docs)
    for query in queries:
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            r = await api.search(auth, "many", limit=10, cursor=cursor, **query)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["total"] == 157
            seen.extend(h["id"] for h in body["hits"])
            cursor = body["next_cursor"]
            pages += 1
            if cursor is None:
                break
        assert pages == 16
        assert len(seen) == 157
        assert sorted(seen) == sorted(d["id"] for d in docs), query
        if "sort" in query:
            values = [int(s[1:]) % 5 for s in seen]
            assert values == sorted(values, reverse=query["sort"][0]["n"] == "desc")


async def test_cursor_from_another_query_is_refused(api: Api) -> None:
    _, auth = await api.tenant()
    await api.collection(auth, "c")
    await api.index(auth, "c", DOCS)
    r = await api.search(auth, "c", q="", limit=1)
    cursor = r.json()["next_cursor"]
    assert cursor
    r = await api.search(auth, "c", q="fox", limit=1, cursor=cursor)
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_cursor"
    r = await api.search(auth, "c", q="", limit=1, cursor="not-a-cursor!")
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_cursor"
    # A page of the ranked search is no page of the all-words one.
    r = await api.search(auth, "c", q="fox", limit=1)
    cursor = r.json()["next_cursor"]
    assert cursor
    r = await api.search(auth, "c", q="fox", limit=1, cursor=cursor, matching="all")
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_cursor"


async def test_a_question_of_too_many_words_is_refused_with_the_cap(api: Api) -> None:
    _, auth = await api.tenant()
    await api.collection(auth, "c")
    await api.index(auth, "c", DOCS)
    many = " ".join(f"w{i}" for i in range(64))
    r = await api.search(auth, "c", q=f"{many} fox {many}")  # repeated words count once
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "too_many_words"
    assert r.json()["errors"][0]["path"] == "/q"
    r = await api.search(auth, "c", q=f"{' '.join(many.split()[:63])} fox")
    assert r.status_code == 200, r.text
    assert {h["id"] for h in r.json()["hits"]} == {"1", "2", "4"}


async def pages_dropping(api: Api, auth: dict[str, str], matching: str) -> list[str]:
    """The ids of every page of "fox zebra" (zebra is in no document), one hit a page; each
    page must say zebra was dropped."""
    seen: list[str] = []
    cursor = None
    while True:
        r = await api.search(auth, "c", q="fox zebra", matching=matching, limit=1, cursor=cursor)
        assert r.status_code == 200, r.text
        assert r.json()["dropped_words"] == ["zebra"]
        seen += [h["id"] for h in r.json()["hits"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return sorted(seen)


async def test_last_drops_words_from_the_end_until_something_matches(api: Api) -> None:
    _, auth = await api.tenant()
    await api.collection(auth, "c")
    await api.index(auth, "c", DOCS)
    r = await api.search(auth, "c", q="fox stew", matching="last")
    assert [h["id"] for h in r.json()["hits"]] == ["4"]
    assert "dropped_words" not in r.json()
    r = await api.search(auth, "c", q="fox stew zebra unicorn", matching="last")
    assert [h["id"] for h in r.json()["hits"]] == ["4"]
    assert r.json()["dropped_words"] == ["zebra", "unicorn"]
    r = await api.search(auth, "c", q="zebra fox", matching="last")
    assert (r.json()["hits"], r.json()["total"]) == ([], 0)
    assert "dropped_words" not in r.json()
    # Pages of the same search keep to the same words.
    assert await pages_dropping(api, auth, "last") == ["1", "2", "4"]


async def test_frequency_drops_words_no_document_holds_then_the_most_common(api: Api) -> None:
    _, auth = await api.tenant()
    await api.collection(auth, "c")
    await api.index(auth, "c", DOCS)
    # fox is in three documents, dog in one, zebra in none: zebra goes first, then fox.
    r = await api.search(auth, "c", q="zebra fox dog", matching="frequency")
    assert [h["id"] for h in r.json()["hits"]] == ["3"]
    assert r.json()["dropped_words"] == ["zebra", "fox"]
    r = await api.search(auth, "c", q="fox stew", matching="frequency")
    assert [h["id"] for h in r.json()["hits"]] == ["4"]
    assert "dropped_words" not in r.json()
    assert await pages_dropping(api, auth, "frequency") == ["1", "2", "4"]


async def test_a_matching_rule_that_does_not_exist_is_refused(api: Api) -> None:
    _, auth = await api.tenant()
    await api.collection(auth, "c")
    r = await api.search(auth, "c", q="fox", matching="most")
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["path"] == "/matching"


async def test_updates_deletes_and_ndjson(api: Api, client: httpx.AsyncClient) -> None:
    _, auth = await api.tenant()
    await api.collection(auth, "c")
    r = await client.put(
        "/v1/collections/c/documents/x1?wait=true",
        json={"title": "first version", "tag": "a"},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    r = await client.put(
        "/v1/collections/c/documents/x1?wait=true",
        json={"id": "x1", "title": "second version", "tag": "b"},
        headers=auth,
    )
    assert r.status_code == 200
    r = await client.get("/v1/collections/c/documents/x1", headers=auth)
    assert r.json() == {"id": "x1", "title": "second version", "tag": "b"}

    ndjson = b'{"id": "n1", "title": "alpha"}\n{"id": "n2", "title": "beta"}\n'
    r = await client.post(
        "/v1/collections/c/documents?wait=true",
        content=ndjson,
        headers={**auth, "Content-Type": "application/x-ndjson"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["indexed"] == 2

    r = await client.delete("/v1/collections/c/documents/n1?wait=true", headers=auth)
    assert r.status_code == 200
    assert (await client.get("/v1/collections/c/documents/n1", headers=auth)).status_code == 404
    r = await api.search(auth, "c")
    assert {h["id"] for h in r.json()["hits"]} == {"x1", "n2"}


async def test_bad_documents_in_a_batch_are_reported_and_good_ones_land(
    api: Api, client: httpx.AsyncClient
) -> None:
    _, auth = await api.tenant()
    await api.collection(auth, "c")
    docs: list[Any] = [
        {"id": "ok1", "title": "fine"},
        {"id": "bad1", "price": "not a number"},
        {"title": "no id"},
        "not an object",
        {"id": "bad2", "unknown_field": 1},
        {"id": "ok2", "title": "also fine", "tag": ["a", "b"]},
    ]
    r = await client.post("/v1/collections/c/documents?wait=true", json=docs, headers=auth)
    assert r.status_code == 200, r.text
    task = r.json()
    assert (task["received"], task["indexed"], task["failed"]) == (6, 2, 4)
    assert {e["path"] for e in task["errors"]} >= {"/1/price", "/2/id", "/3", "/4/unknown_field"}
    r = await api.search(auth, "c")
    assert {h["id"] for h in r.json()["hits"]} == {"ok1", "ok2"}


async def test_collections_lifecycle(api: Api, client: httpx.AsyncClient) -> None:
    _, auth = await api.tenant()
    fields = {"title": {"type": "text", "language": "de"}}
    r = await client.put("/v1/collections/c", json={"fields": fields}, headers=auth)
    assert r.status_code == 201
    r = await client.put("/v1/collections/c", json={"fields": fields}, headers=auth)
    assert r.status_code == 200
    r = await client.put(
        "/v1/collections/c", json={"fields": {"x": {"type": "keyword"}}}, headers=auth
    )
    assert r.status_code == 409
    assert r.json()["code"] == "schema_conflict"
    r = await client.get("/v1/collections", headers=auth)
    assert [c["name"] for c in r.json()["collections"]] == ["c"]
    await api.index(auth, "c", [{"id": "1", "title": "Häuser"}])
    r = await api.search(auth, "c", q="haus")
    assert [h["id"] for h in r.json()["hits"]] == ["1"]

    r = await client.post("/v1/collections/c/documents", json=[{"id": "9"}], headers=auth)
    assert r.status_code == 202
    assert r.json()["created_at"] is not None
    r = await client.delete("/v1/collections/c", headers=auth)
    assert r.status_code == 202
    # The task answered is the one recorded, creation time included.
    queued = r.json()
    assert queued["created_at"] is not None
    recorded = (await client.get(f"/v1/tasks/{queued['id']}", headers=auth)).json()
    assert recorded["created_at"] == queued["created_at"]
    assert (await client.get("/v1/collections/c", headers=auth)).status_code == 404
    # Created again under the same name, it starts empty.
    r = await client.put("/v1/collections/c", json={"fields": fields}, headers=auth)
    assert r.status_code == 201
    r = await api.search(auth, "c")
    assert r.json()["total"] == 0


async def test_operations_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/metrics")).status_code == 401
    r = await client.get("/metrics", headers=Api(client).admin)
    assert "tenantsearch_http_requests_total" in r.text
    schema = (await client.get("/openapi.json")).json()
    assert "/v1/collections/{name}/search" in schema["paths"]
