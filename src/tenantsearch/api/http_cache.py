"""HTTP caching of read responses: a strong ETag from the body, ``If-None-Match`` -> 304.

Responses are ``Cache-Control: private``: they depend on the credential, so a shared cache (CDN,
proxy) must not store them; the client's own cache may, and revalidates with the ETag.
"""

from __future__ import annotations

import hashlib

from fastapi import Request, Response

CACHE_CONTROL = "private, no-cache"


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    candidates = {c.strip().removeprefix("W/") for c in header.split(",")}
    return etag in candidates


def cached_json(request: Request, body: bytes) -> Response:
    """A JSON response with ETag and Cache-Control, or 304 when the client has this body."""
    etag = etag_of(body)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Vary": "Authorization"}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
