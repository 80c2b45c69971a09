"""A small client for functional tests: the public API over any httpx client (in-process or TCP)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

ADMIN_KEY = "test-platform-admin-key-0123456789"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Api:
    def __init__(self, client: httpx.AsyncClient, admin_key: str = ADMIN_KEY) -> None:
        self.client = client
        self.admin = bearer(admin_key)

    async def tenant(self, tenant_id: str | None = None) -> tuple[str, dict[str, str]]:
        """Create a tenant and an admin key for it; returns (tenant id, auth headers)."""
        tenant_id = tenant_id or unique("t")
        r = await self.client.post(
            "/v1/tenants", json={"id": tenant_id, "name": tenant_id}, headers=self.admin
        )
        assert r.status_code == 201, r.text
        r = await self.client.post(
            f"/v1/tenants/{tenant_id}/keys", json={"role": "admin"}, headers=self.admin
        )
        assert r.status_code == 201, r.text
        return tenant_id, bearer(r.json()["key"])

    async def key(self, auth: dict[str, str], **body: Any) -> dict[str, str]:
        r = await self.client.post("/v1/keys", json=body, headers=auth)
        assert r.status_code == 201, r.text
        return bearer(r.json()["key"])

    async def collection(
        self, auth: dict[str, str], name: str, fields: dict[str, Any] | None = None
    ) -> None:
        fields = fields or {
            "title": {"type": "text", "language": "en"},
            "tag": {"type": "keyword"},
            "price": {"type": "float"},
            "published": {"type": "date"},
        }
        r = await self.client.put(f"/v1/collections/{name}", json={"fields": fields}, headers=auth)
        assert r.status_code in (200, 201), r.text

    async def index(
        self, auth: dict[str, str], name: str, docs: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Send a batch and wait until it is searchable; returns the finished task."""
        r = await self.client.post(
            f"/v1/collections/{name}/documents?wait=true", json=docs, headers=auth
        )
        assert r.status_code == 200, r.text
        task: dict[str, Any] = r.json()
        assert task["status"] == "succeeded", task
        return task

    async def search(self, auth: dict[str, str], name: str, **body: Any) -> httpx.Response:
        return await self.client.post(f"/v1/collections/{name}/search", json=body, headers=auth)
