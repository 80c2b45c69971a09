"""Helpers of the attack suite: running the app, populated tenants, and the route table."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, routing
from fastapi.dependencies.models import Dependant

from tenantsearch.api.deps import Requires
from tenantsearch.app import create_app
from tenantsearch.auth.rbac import Action
from tenantsearch.settings import Settings, load_settings
from tests.support.api import ADMIN_KEY, Api, bearer, unique
from tests.support.oidc_issuer import OidcIssuer

Headers = dict[str, str]

PROBLEM_JSON = "application/problem+json"

FIELDS: dict[str, Any] = {
    "title": {"type": "text", "language": "en"},
    "tag": {"type": "keyword"},
    "owner": {"type": "keyword"},
    "origin": {"type": "keyword"},
    "price": {"type": "float"},
}


def security_settings(data_dir: Path, issuer: OidcIssuer | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "admin_key": ADMIN_KEY,
        "log_level": "warning",
        "indexer_linger_ms": 0,
        # These tests are about who may do what, not about rate limits (tests/*/test_*limits*):
        # the route matrix makes hundreds of admin calls in a few seconds, and on a fast run the
        # standard plan's admin budget (10/s, burst 20) answered one of them 429.
        "default_plan": "unlimited",
    }
    if issuer is not None:
        values.update(oidc_issuer=issuer.issuer, oidc_audience=issuer.audience)
    values.update(overrides)
    return load_settings(environ={}, **values)


@asynccontextmanager
async def running(
    settings: Settings, *, run_indexer: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """The whole app in-process (lifespan included) behind an httpx client over ASGI."""
    app = create_app(settings, run_indexer=run_indexer)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", timeout=30
        ) as client:
            yield client


def expect(response: httpx.Response, status: int, code: str | None = None) -> Any:
    """Assert the exact status (and problem ``code``); return the JSON body, if any."""
    context = f"{response.request.method} {response.request.url.path}: {response.text[:500]}"
    assert response.status_code == status, context
    if status >= 400:
        assert response.headers["content-type"] == PROBLEM_JSON, context
        body = response.json()
        assert body["status"] == status, context
        if code is not None:
            assert body["code"] == code, context
        return body
    return response.json() if response.content else None


async def poll(
    check: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.05
) -> float:
    """Wait until ``check()`` is true; return the seconds it took. Fails after ``timeout``."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


# -- a populated tenant --------------------------------------------------------------------------


@dataclass
class TenantWorld:
    """A tenant with a collection of documents, a second collection, keys of every role, a
    collection-limited admin key, a tenant token and a finished write task."""

    id: str
    admin: Headers
    writer: Headers
    reader: Headers
    limited: Headers  # an admin key limited to ``other``
    key_ids: dict[str, str]
    collection: str
    other: str
    docs: list[dict[str, Any]]
    task_id: str
    token: Headers  # a tenant token for ``collection`` with the filter owner == u1
    token_id: str
    secrets: list[str] = field(default_factory=list)

    def doc(self, doc_id: str) -> dict[str, Any]:
        return next(d for d in self.docs if d["id"] == doc_id)


def sample_docs(origin: str) -> list[dict[str, Any]]:
    """Four documents: owners u1 (d1, d4) and u2 (d2, d3); ``origin`` names the tenant."""
    docs = [
        {"id": "d1", "title": "alpha quick fox", "tag": "red", "owner": "u1", "price": 1.0},
        {"id": "d2", "title": "beta lazy dog", "tag": "blue", "owner": "u2", "price": 2.0},
        {"id": "d3", "title": "gamma quick cat", "tag": "red", "owner": "u2", "price": 3.0},
        {"id": "d4", "title": "delta quick owl", "tag": "green", "owner": "u1", "price": 4.0},
    ]
    return [{**d, "origin": origin} for d in docs]


async def create_key(api: Api, auth: Headers, **body: Any) -> tuple[str, str]:
    """A new key: (id, secret token)."""
    r = await api.client.post("/v1/keys", json=body, headers=auth)
    created = expect(r, 201)
    assert r.headers["cache-control"] == "no-store"
    return str(created["id"]), str(created["key"])


async def mint_token(
    api: Api,
    auth: Headers,
    collections: list[str],
    token_filter: dict[str, Any] | None = None,
    expires_in: int = 600,
) -> tuple[str, str]:
    """A new tenant token: (id, token)."""
    body: dict[str, Any] = {"collections": collections, "expires_in": expires_in}
    if token_filter is not None:
        body["filter"] = token_filter
    r = await api.client.post("/v1/tokens", json=body, headers=auth)
    created = expect(r, 201)
    assert r.headers["cache-control"] == "no-store"
    return str(created["id"]), str(created["token"])


async def build_tenant(
    api: Api, tenant_id: str | None = None, *, collection: str = "docs", other: str = "other"
) -> TenantWorld:
    tenant_id, admin = await api.tenant(tenant_id or unique("t"))
    await api.collection(admin, collection, FIELDS)
    await api.collection(admin, other, FIELDS)
    docs = sample_docs(tenant_id)
    task = await api.index(admin, collection, docs)
    await api.index(admin, other, [{"id": "o1", "title": "other doc", "origin": tenant_id}])
    key_ids: dict[str, str] = {}
    secrets: list[str] = [admin["Authorization"].removeprefix("Bearer ")]
    headers: dict[str, Headers] = {}
    for role in ("writer", "reader"):
        key_ids[role], secret = await create_key(api, admin, role=role)
        headers[role] = bearer(secret)
        secrets.append(secret)
    key_ids["limited"], secret = await create_key(api, admin, role="admin", collections=[other])
    secrets.append(secret)
    token_id, token = await mint_token(api, admin, [collection], {"owner": {"eq": "u1"}})
    secrets.append(token)
    return TenantWorld(
        id=tenant_id,
        admin=admin,
        writer=headers["writer"],
        reader=headers["reader"],
        limited=bearer(secret),
        key_ids=key_ids,
        collection=collection,
        other=other,
        docs=docs,
        task_id=str(task["id"]),
        token=bearer(token),
        token_id=token_id,
        secrets=secrets,
    )


async def search_ids(client: httpx.AsyncClient, auth: Headers, name: str, **body: Any) -> Any:
    r = await client.post(f"/v1/collections/{name}/search", json=body, headers=auth)
    return expect(r, 200)


# -- the route table -----------------------------------------------------------------------------


PATH_PARAM = re.compile(r"{(\w+)(?::\w+)?}")


@dataclass(frozen=True)
class RouteInfo:
    method: str
    path: str
    is_api_route: bool
    dependant: Dependant | None

    @property
    def params(self) -> list[str]:
        return PATH_PARAM.findall(self.path)

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.path)

    def url(self, values: dict[str, str]) -> str:
        return PATH_PARAM.sub(lambda m: values[m.group(1)], self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def route_table(app: FastAPI | None = None) -> list[RouteInfo]:
    """Every (method, path) the app serves, generated from ``app.routes`` (routers included)."""
    app = app or create_app(load_settings(environ={}))
    iterate = getattr(routing, "iter_route_contexts", None)
    entries: list[tuple[Any, Any]] = []
    if iterate is not None:  # FastAPI >= 0.13x: included routers are resolved lazily
        entries = [(context, context.original_route) for context in iterate(app.routes)]
    else:  # pragma: no cover - older FastAPI: app.routes holds the routes themselves
        entries = [(route, route) for route in app.routes]
    table: list[RouteInfo] = []
    for effective, original in entries:
        is_api = isinstance(original, routing.APIRoute)
        dependant = getattr(effective, "dependant", None) if is_api else None
        for method in sorted(effective.methods or ()):
            if method == "HEAD":
                continue
            table.append(RouteInfo(method, str(effective.path), is_api, dependant))
    return table


def required_actions(dependant: Dependant | None) -> list[Action]:
    """Every ``Requires(action)`` anywhere in a route's dependency tree."""
    if dependant is None:
        return []
    found: list[Action] = []
    if isinstance(dependant.call, Requires):
        found.append(dependant.call.action)
    for sub in dependant.dependencies:
        found.extend(required_actions(sub))
    return found


def sample_body(route: RouteInfo, values: dict[str, str]) -> Any:
    """A valid body for each route that takes one (a new route gets none and will say so)."""
    bodies: dict[tuple[str, str], Any] = {
        ("POST", "/v1/tenants"): {"id": unique("t"), "name": "created in a test"},
        ("PATCH", "/v1/tenants/{tenant_id}"): {"name": "renamed by an attacker"},
        ("POST", "/v1/tenants/{tenant_id}/keys"): {"role": "admin"},
        ("POST", "/v1/keys"): {"role": "reader"},
        ("POST", "/v1/tokens"): {"collections": [values.get("name", "docs")], "expires_in": 60},
        ("PUT", "/v1/collections/{name}"): {"fields": FIELDS},
        ("PUT", "/v1/collections/{name}/documents/{doc_id}"): {"title": "overwritten"},
        ("POST", "/v1/collections/{name}/documents"): [{"id": "injected", "title": "injected"}],
        ("POST", "/v1/collections/{name}/search"): {"q": ""},
    }
    return bodies.get(route.key)


def made_up(param: str) -> str:
    """A well-formed id of the right kind that names nothing (a generic one for new params)."""
    values = {
        "task_id": uuid.uuid4().hex,
        "token_id": uuid.uuid4().hex,
        "key_id": "abcdefghijklmnop",
    }
    return values.get(param, f"nothere-{uuid.uuid4().hex[:8]}")


async def call(
    client: httpx.AsyncClient,
    route: RouteInfo,
    values: dict[str, str],
    headers: Headers | None,
) -> httpx.Response:
    body = sample_body(route, values)
    return await client.request(
        route.method,
        route.url(values),
        json=body,
        headers=headers or {},
    )
