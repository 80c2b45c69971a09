"""Every bad input answers application/problem+json with a stable code and the field path."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.api import Api


@pytest.fixture
async def auth(api: Api) -> dict[str, str]:
    _, auth = await api.tenant()
    await api.collection(auth, "c")
    return auth


def problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    assert body["status"] == status
    assert "Traceback" not in r.text
    return body


async def test_malformed_json(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    for method, path in (
        ("PUT", "/v1/collections/c/documents/1"),
        ("POST", "/v1/collections/c/documents"),
        ("POST", "/v1/collections/c/search"),
        ("PUT", "/v1/collections/d"),
    ):
        r = await client.request(
            method, path, content=b"{nope", headers={**auth, "Content-Type": "application/json"}
        )
        problem(r, 400, "malformed_json")


async def test_wrong_types_and_unknown_fields(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    r = await client.put("/v1/collections/c/documents/1", json={"price": "x"}, headers=auth)
    body = problem(r, 400, "invalid_document")
    assert body["errors"] == [{"path": "/price", "message": "must be a finite number"}]
    r = await client.put("/v1/collections/c/documents/1", json={"nope": 1}, headers=auth)
    assert problem(r, 400, "invalid_document")["errors"][0]["path"] == "/nope"
    r = await client.put(
        "/v1/collections/c/documents/1", json={"published": "yesterday"}, headers=auth
    )
    assert problem(r, 400, "invalid_document")["errors"][0]["path"] == "/published"
    r = await client.post("/v1/collections/c/search", json={"q": "x", "bogus": 1}, headers=auth)
    assert problem(r, 400, "invalid_input")["errors"][0]["path"] == "/bogus"
    r = await client.post("/v1/collections/c/search", json={"limit": "many"}, headers=auth)
    assert problem(r, 400, "invalid_input")["errors"][0]["path"] == "/limit"
    r = await client.post(
        "/v1/tenants",
        json={"id": "x", "name": "x", "plan": "gold"},
        headers={"Authorization": "Bearer test-platform-admin-key-0123456789"},
    )
    problem(r, 400, "invalid_input")


async def test_bad_filters_and_sorts(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"filter": {"tag": {"like": "x"}}}, "/filter/tag/like"),
        ({"filter": {"nope": {"eq": 1}}}, "/filter/nope"),
        ({"filter": {"title": {"eq": "x"}}}, "/filter/title"),
        ({"filter": {"price": {"eq": "cheap"}}}, "/filter/price/eq"),
        ({"filter": {"tag": {"gt": "a"}}}, "/filter/tag"),
        ({"filter": {"and": []}}, "/filter/and"),
        ({"filter": {"or": [{"tag": {"eq": "a"}}, {"tag": {"in": "a"}}]}}, "/filter/or/1/tag/in"),
        ({"sort": [{"title": "asc"}]}, "/sort/0/title"),
        ({"sort": [{"price": "up"}]}, "/sort/0/price"),
        ({"facets": ["price"]}, "/facets/0"),
    ]
    for body, path in cases:
        r = await client.post("/v1/collections/c/search", json=body, headers=auth)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["code"] in ("invalid_query", "invalid_input"), body
        assert path in {e["path"] for e in r.json()["errors"]}, (body, r.json())


async def test_limits(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    r = await client.post("/v1/collections/c/search", json={"limit": 100_000}, headers=auth)
    problem(r, 400, "invalid_query")
    r = await client.post("/v1/collections/c/search", json={"limit": 0}, headers=auth)
    problem(r, 400, "invalid_input")
    big = {"title": "x" * (1024 * 1024 + 10)}
    r = await client.put("/v1/collections/c/documents/1", json=big, headers=auth)
    problem(r, 413, "document_too_large")
    r = await client.post(
        "/v1/collections/c/documents", json=[{"id": str(i)} for i in range(10_001)], headers=auth
    )
    problem(r, 413, "batch_too_large")
    r = await client.post(
        "/v1/collections/c/documents", content=b"[" + b" " * (21 * 1024 * 1024) + b"]", headers=auth
    )
    problem(r, 413, "payload_too_large")


async def test_bad_names_and_ids(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    r = await client.put("/v1/collections/Bad%20Name", json={"fields": {}}, headers=auth)
    problem(r, 400, "invalid_collection_name")
    r = await client.put("/v1/collections/c/documents/" + "x" * 300, json={}, headers=auth)
    problem(r, 400, "invalid_document_id")
    r = await client.put("/v1/collections/c/documents/a", json={"id": "b"}, headers=auth)
    problem(r, 400, "id_mismatch")
    r = await client.put(
        "/v1/collections/d", json={"fields": {"id": {"type": "keyword"}}}, headers=auth
    )
    assert problem(r, 400, "invalid_schema")["errors"][0]["path"] == "/fields/id"
    r = await client.put(
        "/v1/collections/d",
        json={"fields": {"t": {"type": "text", "language": "xx"}}},
        headers=auth,
    )
    assert problem(r, 400, "invalid_schema")["errors"][0]["path"] == "/fields/t/language"
    r = await client.post("/v1/collections/c/documents", json={"id": "1"}, headers=auth)
    problem(r, 400, "invalid_batch")
    r = await client.post("/v1/collections/c/documents", json=[], headers=auth)
    problem(r, 400, "empty_batch")
    r = await client.post("/v1/collections/c/documents", json=[{"id": "1", "x": 1}], headers=auth)
    problem(r, 400, "invalid_documents")


async def test_unknown_routes_and_methods(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    problem(await client.get("/v2/nothing", headers=auth), 404, "not_found")
    problem(await client.patch("/v1/collections/c", headers=auth), 405, "method_not_allowed")
    r = await client.post(
        "/v1/collections/c/documents",
        content=b"<xml/>",
        headers={**auth, "Content-Type": "application/xml"},
    )
    problem(r, 415, "unsupported_media_type")
