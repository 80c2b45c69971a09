"""Collections of the caller's tenant."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from tenantsearch.api.deps import CollectionsReader, CollectionsWriter, ServicesDep
from tenantsearch.api.schemas import CollectionList, CollectionOut, CollectionPut, TaskOut
from tenantsearch.auth.rbac import require_tenant

router = APIRouter(prefix="/v1/collections", tags=["collections"])


@router.put(
    "/{name}",
    response_model=CollectionOut,
    responses={201: {"model": CollectionOut, "description": "Created"}},
)
async def put_collection(
    name: str,
    body: CollectionPut,
    principal: CollectionsWriter,
    services: ServicesDep,
    response: Response,
) -> CollectionOut:
    """Create a collection (201), or confirm one with the same fields (200)."""
    tenant_id = require_tenant(principal)
    collection, created = await services.collections.put(principal, tenant_id, name, body.fields)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return CollectionOut.of(collection)


@router.get("", response_model=CollectionList)
async def list_collections(principal: CollectionsReader, services: ServicesDep) -> CollectionList:
    tenant_id = require_tenant(principal)
    collections = await services.collections.list(principal, tenant_id)
    return CollectionList(collections=[CollectionOut.of(c) for c in collections])


@router.get("/{name}", response_model=CollectionOut)
async def get_collection(
    name: str, principal: CollectionsReader, services: ServicesDep
) -> CollectionOut:
    tenant_id = require_tenant(principal)
    return CollectionOut.of(await services.collections.get(principal, tenant_id, name))


@router.delete("/{name}", status_code=status.HTTP_202_ACCEPTED, response_model=TaskOut)
async def delete_collection(
    name: str, principal: CollectionsWriter, services: ServicesDep
) -> TaskOut:
    """Delete the collection and all its documents (the engine data is dropped asynchronously)."""
    tenant_id = require_tenant(principal)
    return TaskOut.of(await services.collections.delete(principal, tenant_id, name))
