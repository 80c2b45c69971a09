"""ETag / If-None-Match on documents and search; responses are private to the credential."""

from __future__ import annotations

import httpx

from tests.support.api import Api


async def test_etags_revalidate_and_change_with_the_data(
    api: Api, client: httpx.AsyncClient
) -> None:
    _, auth = await api.tenant()
    await api.collection(auth, "c")
    await api.index(auth, "c", [{"id": "1", "title": "first"}])

    r = await client.get("/v1/collections/c/documents/1", headers=auth)
    etag = r.headers["ETag"]
    assert r.headers["Cache-Control"].startswith("private")
    r = await client.get("/v1/collections/c/documents/1", headers={**auth, "If-None-Match": etag})
    assert r.status_code == 304
    assert r.content == b""

    r = await api.search(auth, "c", q="first")
    search_etag = r.headers["ETag"]
    r = await client.post(
        "/v1/collections/c/search",
        json={"q": "first"},
        headers={**auth, "If-None-Match": search_etag},
    )
    assert r.status_code == 304

    await api.index(auth, "c", [{"id": "1", "title": "first, changed"}])
    r = await client.get("/v1/collections/c/documents/1", headers={**auth, "If-None-Match": etag})
    assert r.status_code == 200
    assert r.headers["ETag"] != etag
    r = await client.post(
        "/v1/collections/c/search",
        json={"q": "first"},
        headers={**auth, "If-None-Match": search_etag},
    )
    assert r.status_code == 200
