"""A tenant's plan, effective limits and current usage."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from tenantsearch.api.deps import ServicesDep, UsageReader
from tenantsearch.auth.rbac import require_tenant

router = APIRouter(prefix="/v1/usage", tags=["usage"])


class UsageOut(BaseModel):
    plan: str
    limits: dict[str, Any]
    usage: dict[str, Any]


@router.get("", response_model=UsageOut)
async def usage(request: Request, principal: UsageReader, services: ServicesDep) -> UsageOut:
    """Limits per second (rate and burst per budget), daily request quota, document quota and
    stored-bytes quota, with today's request count (including this one), the documents stored and
    their bytes (``stored_bytes``: the documents' original JSON, see the search port)."""
    tenant_id = require_tenant(principal)
    tenant = await services.tenants.get(tenant_id)
    limits = await services.limits.limits_of(tenant_id)
    quota = getattr(request.state, "quota", None)
    requests_today = quota.limit - quota.remaining if quota is not None else None
    stored = await services.usage.usage(tenant_id, fresh=True)
    return UsageOut(
        plan=tenant.plan,
        limits=limits.as_dict(),
        usage={
            "requests_today": requests_today,
            "documents": stored.documents,
            "stored_bytes": stored.stored_bytes,
        },
    )
