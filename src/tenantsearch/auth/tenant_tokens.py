"""Tenant tokens: short-lived, individually revocable credentials for end users' browsers.

A tenant admin mints one for some collections with a mandatory filter (for example
``{"owner": {"eq": "u123"}}``). The token is ``tt_`` followed by a JWT signed HS256 with a server
secret shared by every process through the metadata database; it names only its id, tenant and
expiry. The collections and filter live in the token's stored record, which is also what makes a
token revocable on its own: every process re-reads a record at least once a second.
"""

from __future__ import annotations

import math
import secrets
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from tenantsearch.auth.rbac import CredentialKind, Principal, within_reach
from tenantsearch.cache.refresh_ahead import RefreshAheadCache, StaleServing
from tenantsearch.errors import InvalidInput, NotFound, Unauthenticated
from tenantsearch.search.query import FilterErrors, parse_filter
from tenantsearch.store.records import Collection, Role, TenantToken
from tenantsearch.store.repository import MetadataStore

PREFIX = "tt_"
ISSUER = "tenantsearch"
AUDIENCE = "tenantsearch:tenant-token"
SECRET_NAME = "tenant-token-signing"  # noqa: S105 - the name the secret is stored under
MAX_LIFETIME = timedelta(hours=24)
CACHE_SECONDS = 1.0
MAX_TOKEN_LENGTH = 4096


class TenantTokenService:
    def __init__(self, store: MetadataStore, *, stale: StaleServing | None = None) -> None:
        self._store = store
        self._secret: str | None = None
        self._cache: RefreshAheadCache[str, TenantToken] = RefreshAheadCache(
            CACHE_SECONDS, stale=stale
        )

    async def start(self) -> None:
        self._secret = await self._store.signing_secret(SECRET_NAME, secrets.token_urlsafe(48))

    def _key(self) -> str:
        if self._secret is None:
            raise RuntimeError("TenantTokenService.start() was not called")
        return self._secret

    async def mint(
        self,
        creator: Principal,
        tenant_id: str,
        collections: Sequence[Collection],
        token_filter: Mapping[str, Any] | None,
        lifetime: timedelta,
        description: str | None = None,
    ) -> tuple[TenantToken, str]:
        if not timedelta(seconds=1) <= lifetime <= MAX_LIFETIME:
            raise InvalidInput(
                f"a tenant token lives between 1 second and {int(MAX_LIFETIME.total_seconds())} "
                "seconds",
                code="invalid_expiry",
            )
        for collection in collections:
            if token_filter is not None:
                try:
                    parse_filter(collection.schema, token_filter)
                except FilterErrors as exc:
                    raise InvalidInput(
                        f"the filter does not apply to collection {collection.name!r}",
                        errors=exc.errors,
                        code="invalid_filter",
                    ) from exc
        now = datetime.now(UTC)
        record = TenantToken(
            id=uuid.uuid4().hex,
            tenant_id=tenant_id,
            created_by=creator.key_id,
            collections=tuple(sorted({c.name for c in collections})),
            filter=dict(token_filter) if token_filter is not None else None,
            description=description,
            expires_at=now + lifetime,
            created_at=now,
            revoked_at=None,
        )
        await self._store.create_tenant_token(record)
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "jti": record.id,
            "ten": tenant_id,
            "iat": int(now.timestamp()),
            # Rounded up: the stored record's expires_at is exact and checked too, while a
            # truncated exp made a 1 s token expire up to a second early (even at once).
            "exp": math.ceil(record.expires_at.timestamp()),
        }
        token = PREFIX + jwt.encode(claims, self._key(), algorithm="HS256")
        return record, token

    async def verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("the token is not valid", code="invalid_token")
        try:
            claims = jwt.decode(
                token.removeprefix(PREFIX),
                self._key(),
                algorithms=["HS256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "jti", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("the token has expired", code="expired_token") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("the token is not valid", code="invalid_token") from exc
        token_id = str(claims["jti"])
        record = await self._cache.get(token_id, lambda: self._store.get_tenant_token(token_id))
        if record is None or record.tenant_id != claims.get("ten"):
            raise Unauthenticated("the token is not valid", code="invalid_token")
        if record.revoked_at is not None:
            raise Unauthenticated("the token was revoked", code="revoked_token")
        if record.expires_at <= datetime.now(UTC):
            raise Unauthenticated("the token has expired", code="expired_token")
        return Principal(
            key_id=f"token:{record.id}",
            role=Role.TENANT_TOKEN,
            tenant_id=record.tenant_id,
            collections=frozenset(record.collections),
            kind=CredentialKind.TENANT_TOKEN,
            filter=record.filter,
            minted_by=record.created_by,
        )

    async def list(
        self, tenant_id: str, limit: int = 1000, viewer: Principal | None = None
    ) -> list[TenantToken]:
        """Live tokens; for a ``viewer`` limited to some collections, only those within reach."""
        tokens = await self._store.list_tenant_tokens(tenant_id, limit=limit)
        return [t for t in tokens if within_reach(viewer, t.collections)]

    async def revoke(self, tenant_id: str, token_id: str, revoker: Principal | None = None) -> None:
        """Revoke one token; a token outside a limited ``revoker``'s reach answers 404."""
        if len(token_id) > 64:
            raise NotFound(f"token {token_id!r} not found", code="token_not_found")
        if revoker is not None and revoker.collections is not None:
            record = await self._store.get_tenant_token(token_id)
            if (
                record is None
                or record.tenant_id != tenant_id
                or not within_reach(revoker, record.collections)
            ):
                raise NotFound(f"token {token_id!r} not found", code="token_not_found")
        if not await self._store.revoke_tenant_token(tenant_id, token_id):
            raise NotFound(f"token {token_id!r} not found", code="token_not_found")
        self._cache.pop(token_id)
