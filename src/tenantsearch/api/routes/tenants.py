"""Tenants and their first keys: platform admin only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from tenantsearch.api.deps import ServicesDep, TenantsAdmin
from tenantsearch.api.schemas import (
    KeyCreated,
    KeyOut,
    TaskOut,
    TenantCreate,
    TenantKeyCreate,
    TenantList,
    TenantOut,
    TenantPatch,
)
from tenantsearch.store.records import Role

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TenantOut)
async def create_tenant(
    body: TenantCreate, principal: TenantsAdmin, services: ServicesDep
) -> TenantOut:
    return TenantOut.of(await services.tenants.create(body.id, body.name, principal))


@router.get("", response_model=TenantList)
async def list_tenants(
    _: TenantsAdmin,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> TenantList:
    tenants = await services.tenants.list(limit=limit + 1, after=after)
    page = tenants[:limit]
    return TenantList(
        tenants=[TenantOut.of(t) for t in page],
        next_after=page[-1].id if len(tenants) > limit else None,
    )


@router.get("/{tenant_id}", response_model=TenantOut)
async def get_tenant(tenant_id: str, _: TenantsAdmin, services: ServicesDep) -> TenantOut:
    return TenantOut.of(await services.tenants.get(tenant_id))


@router.patch("/{tenant_id}", response_model=TenantOut)
async def patch_tenant(
    tenant_id: str, body: TenantPatch, _: TenantsAdmin, services: ServicesDep
) -> TenantOut:
    """Rename the tenant, move it to another plan, or override the plan's limits."""
    tenant = await services.tenants.update(
        tenant_id, name=body.name, plan=body.plan, limits=body.limits
    )
    services.limits.forget(tenant_id)
    return TenantOut.of(tenant)


@router.delete("/{tenant_id}", status_code=status.HTTP_202_ACCEPTED, response_model=TaskOut)
async def erase_tenant(tenant_id: str, principal: TenantsAdmin, services: ServicesDep) -> TaskOut:
    """Erase the tenant: every document, collection, key and task. Its keys stop working at once."""
    return TaskOut.of(await services.tenants.erase(tenant_id, principal))


@router.post("/{tenant_id}/keys", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
async def create_tenant_key(
    tenant_id: str,
    body: TenantKeyCreate,
    principal: TenantsAdmin,
    services: ServicesDep,
    response: Response,
) -> KeyCreated:
    await services.tenants.get_active(tenant_id)
    record, token = await services.keys.create(
        tenant_id, Role(body.role), description=body.description, creator=principal
    )
    response.headers["Cache-Control"] = "no-store"
    return KeyCreated(**KeyOut.of(record).model_dump(), key=token)
