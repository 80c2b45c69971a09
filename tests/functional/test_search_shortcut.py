"""The search shortcut (``api.search_fast``) answers exactly as the declared route would.

Plain searches take the shortcut; everything else falls through to FastAPI. These are the places
where the two could differ: which check wins (credentials before the body), bodies the shortcut
does not take, and what the outer middleware records (route label, request id, limit headers).
"""

from __future__ import annotations

import re

import httpx

from tests.support.api import Api

JSON = {"Content-Type": "application/json"}


async def test_credentials_are_checked_before_the_body_either_way(
    client: httpx.AsyncClient,
) -> None:
    # A valid body (the shortcut) and an invalid one (the route) alike: 401 first.
    for body in (b'{"q": "x"}', b'{"q": "x", "bogus": 1}'):
        r = await client.post("/v1/collections/c/search", content=body, headers=JSON)
        assert r.status_code == 401, (body, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "missing_credentials"
    # FastAPI refuses a body that is not JSON before any dependency runs; so does the shortcut.
    r = await client.post("/v1/collections/c/search", content=b"{nope", headers=JSON)
    assert (r.status_code, r.json()["code"]) == (400, "malformed_json")


async def test_bodies_the_shortcut_does_not_take_get_the_route_s_answer(
    client: httpx.AsyncClient, api: Api
) -> None:
    _, auth = await api.tenant()
    await api.collection(auth, "c")
    await api.index(auth, "c", [{"id": "1", "title": "red shoes"}])
    # Not declared as JSON: FastAPI does not parse it, so the body is not a search request.
    r = await client.post(
        "/v1/collections/c/search",
        content=b'{"q": "red"}',
        headers={**auth, "Content-Type": "text/plain"},
    )
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_input"
    # A charset parameter is still JSON; the answer is the same as without it.
    plain = await client.post("/v1/collections/c/search", json={"q": "red"}, headers=auth)
    with_charset = await client.post(
        "/v1/collections/c/search",
        content=b'{"q": "red"}',
        headers={**auth, "Content-Type": "application/json; charset=utf-8"},
    )
    assert plain.status_code == with_charset.status_code == 200
    assert plain.json() == with_charset.json()
    assert [h["id"] for h in plain.json()["hits"]] == ["1"]
    # Errors raised after validation (an unknown collection, a bad filter) are problem+json.
    r = await client.post("/v1/collections/nope/search", json={"q": "red"}, headers=auth)
    assert (r.status_code, r.json()["code"]) == (404, "collection_not_found")
    r = await client.post(
        "/v1/collections/c/search", json={"filter": {"nope": {"eq": 1}}}, headers=auth
    )
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"


async def test_the_outer_middleware_sees_shortcut_requests_like_any_other(
    client: httpx.AsyncClient, api: Api
) -> None:
    tenant, auth = await api.tenant()
    await api.collection(auth, "c")
    r = await client.post(
        "/v1/collections/c/search", json={"q": "x"}, headers={**auth, "X-Request-Id": "abc-123"}
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "abc-123"
    assert int(r.headers["RateLimit-Limit"]) > 0
    assert r.headers["Cache-Control"] == "private, no-cache"
    metrics = (await client.get("/metrics", headers=api.admin)).text
    line = re.search(
        r'tenantsearch_http_requests_total\{method="POST",route="/v1/collections/\{name\}/search",'
        r'status="2xx",tenant="' + re.escape(tenant) + r'"\} (\S+)',
        metrics,
    )
    assert line is not None, metrics[:2000]
    assert float(line.group(1)) == 1.0
