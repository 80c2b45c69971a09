"""A tenant admin's own API keys."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from tenantsearch.api.deps import KeysAdmin, ServicesDep
from tenantsearch.api.schemas import KeyCreate, KeyCreated, KeyList, KeyOut
from tenantsearch.auth.rbac import require_tenant
from tenantsearch.search.collections import check_name
from tenantsearch.store.records import Role

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
async def create_key(
    body: KeyCreate, principal: KeysAdmin, services: ServicesDep, response: Response
) -> KeyCreated:
    tenant_id = require_tenant(principal)
    for name in body.collections or []:
        check_name(name)
    record, token = await services.keys.create(
        tenant_id,
        Role(body.role),
        collections=body.collections,
        expires_at=body.expires_at,
        description=body.description,
        creator=principal,
    )
    response.headers["Cache-Control"] = "no-store"
    return KeyCreated(**KeyOut.of(record).model_dump(), key=token)


@router.get("", response_model=KeyList)
async def list_keys(principal: KeysAdmin, services: ServicesDep) -> KeyList:
    tenant_id = require_tenant(principal)
    return KeyList(keys=[KeyOut.of(k) for k in await services.keys.list(tenant_id, principal)])


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_key(key_id: str, principal: KeysAdmin, services: ServicesDep) -> Response:
    await services.keys.revoke(require_tenant(principal), key_id, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
