"""The audit log: a tenant admin reads its own tenant's events; the platform admin reads all."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from tenantsearch.api.deps import AuditReader, ServicesDep
from tenantsearch.api.schemas import AuditList, AuditOut
from tenantsearch.auth.rbac import require_tenant
from tenantsearch.errors import Forbidden

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("", response_model=AuditList)
async def list_audit(
    principal: AuditReader,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, description="Events older than this id.")] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    tenant: Annotated[
        str | None, Query(max_length=64, description="Platform admin only: one tenant's events.")
    ] = None,
) -> AuditList:
    """Newest first. Page with ``before`` = the last event's id. A key limited to some
    collections may not read it: the tenant's events name keys, tokens and collections beyond
    its reach."""
    if principal.collections is not None:
        raise Forbidden(
            "a key limited to some collections cannot read the tenant's audit log",
            code="collections_limited",
        )
    # Fail closed: anyone but the platform admin reads exactly its own tenant's events.
    tenant_id = tenant if principal.is_platform_admin else require_tenant(principal)
    events = await services.audit.list(
        tenant_id=tenant_id, limit=limit, before_id=before, action=action
    )
    return AuditList(events=[AuditOut.of(e) for e in events])
