"""Tenant tokens: minted by a tenant admin for end users, each revocable on its own."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Response, status

from tenantsearch.api.deps import ServicesDep, TokensAdmin
from tenantsearch.api.deps import visible_collection as collection_of
from tenantsearch.api.schemas import TokenCreate, TokenCreated, TokenList, TokenOut
from tenantsearch.auth.rbac import require_tenant

router = APIRouter(prefix="/v1/tokens", tags=["tenant tokens"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TokenCreated)
async def mint_token(
    body: TokenCreate, principal: TokensAdmin, services: ServicesDep, response: Response
) -> TokenCreated:
    """Mint a short-lived token for an end user's browser: it can search and read documents of
    ``collections`` only, and every read is restricted by ``filter``."""
    tenant_id = require_tenant(principal)
    collections = [await collection_of(services, principal, name) for name in body.collections]
    record, token = await services.tokens.mint(
        principal,
        tenant_id,
        collections,
        body.filter,
        timedelta(seconds=body.expires_in),
        body.description,
    )
    await services.audit.record("token.create", principal=principal, detail={"token_id": record.id})
    response.headers["Cache-Control"] = "no-store"
    return TokenCreated(**TokenOut.of(record).model_dump(), token=token)


@router.get("", response_model=TokenList)
async def list_tokens(principal: TokensAdmin, services: ServicesDep) -> TokenList:
    """Tokens not yet expired or revoked (never the token strings)."""
    tenant_id = require_tenant(principal)
    tokens = await services.tokens.list(tenant_id, viewer=principal)
    return TokenList(tokens=[TokenOut.of(t) for t in tokens])


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_token(token_id: str, principal: TokensAdmin, services: ServicesDep) -> Response:
    """Revoke one token; every API process refuses it within one second."""
    await services.tokens.revoke(require_tenant(principal), token_id, principal)
    await services.audit.record("token.revoke", principal=principal, detail={"token_id": token_id})
    return Response(status_code=status.HTTP_204_NO_CONTENT)
