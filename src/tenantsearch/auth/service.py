"""Authentication (bearer credential -> Principal) and the API key lifecycle."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import structlog

from tenantsearch.auth import keys, tenant_tokens
from tenantsearch.auth.audit import AuditLog
from tenantsearch.auth.oidc import OidcVerifier
from tenantsearch.auth.rbac import CredentialKind, Principal, within_reach
from tenantsearch.auth.tenant_tokens import TenantTokenService
from tenantsearch.cache.refresh_ahead import RefreshAheadCache, StaleServing
from tenantsearch.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    Unauthenticated,
)
from tenantsearch.store.records import ApiKey, Role
from tenantsearch.store.repository import MetadataStore

log = structlog.get_logger(__name__)

CONFIGURED_ADMIN_KEY_ID = "admin"
BOOTSTRAP_ADMIN_DESCRIPTION = "generated on first start"

CREDENTIAL_CACHE_SECONDS = 1.0
"""How long a process may keep using a key record (and its tenant's status) it looked up: this
bounds how late a revocation, expiry or tenant erasure made by another process takes effect."""


@dataclass(frozen=True)
class ClaimNames:
    """Where an OIDC token carries the tenant and the roles."""

    tenant: str = "tenant_id"
    roles: str = "roles"


ROLE_PRECEDENCE = (Role.PLATFORM_ADMIN, Role.ADMIN, Role.WRITER, Role.READER)


class AuthService:
    def __init__(
        self,
        store: MetadataStore,
        *,
        admin_key: str | None,
        audit: AuditLog,
        tokens: TenantTokenService,
        oidc: OidcVerifier | None = None,
        claims: ClaimNames = ClaimNames(),
        metrics_token: str | None = None,
        stale: StaleServing | None = None,
    ) -> None:
        self._store = store
        self._admin_key_hash = keys.hash_secret(admin_key) if admin_key else None
        self._metrics_hash = keys.hash_secret(metrics_token) if metrics_token else None
        self._audit = audit
        self._tokens = tokens
        self._oidc = oidc
        self._claims = claims
        self._tenants: RefreshAheadCache[str, bool] = RefreshAheadCache(
            CREDENTIAL_CACHE_SECONDS, stale=stale
        )
        self._stamps: set[asyncio.Task[None]] = set()
        # key id -> (record, its tenant is active); only keys that exist are cached.
        self._cache: RefreshAheadCache[str, tuple[ApiKey, bool]] = RefreshAheadCache(
            CREDENTIAL_CACHE_SECONDS, stale=stale
        )

    def _stamp(self, key_id: str, when: datetime) -> None:
        async def stamp() -> None:
            try:
                await self._store.touch_key(key_id, when)
            except ServiceUnavailable as exc:
                log.info("key_last_used_not_recorded", key_id=key_id, error=exc.detail)

        task = asyncio.get_running_loop().create_task(stamp())
        self._stamps.add(task)
        task.add_done_callback(self._stamps.discard)

    def forget(self, key_id: str | None = None) -> None:
        """Drop cached credentials (one key, or all) after a change made by this process."""
        if key_id is None:
            self._cache.clear()
            self._tenants.clear()
        else:
            self._cache.pop(key_id)

    def forget_tenant(self, tenant_id: str) -> None:
        """Drop the cached status of one tenant (created or erased by this process)."""
        self._tenants.pop(tenant_id)
        for key_id, (record, _) in self._cache.items():
            if record.tenant_id == tenant_id:
                self._cache.pop(key_id)

    async def _lookup(self, key_id: str) -> tuple[ApiKey, bool] | None:
        async def load() -> tuple[ApiKey, bool] | None:
            record = await self._store.get_key(key_id)
            if record is None:
                return None
            active = record.tenant_id is None or await self._tenant_active(record.tenant_id)
            return record, active

        return await self._cache.get(key_id, load)

    async def _require_live_minter(self, minted_by: str | None) -> None:
        """A tenant token lives no longer than the API key that minted it: revoking or expiring
        the key ends its tokens too (within the credential cache's second). Tokens minted with the
        configured admin key or an OIDC JWT have no stored key to follow."""
        if (
            minted_by is None
            or minted_by == CONFIGURED_ADMIN_KEY_ID
            or minted_by.startswith("jwt:")
        ):
            return
        found = await self._lookup(minted_by)
        if found is None:
            raise Unauthenticated(
                "the key that minted this token was revoked", code="revoked_token"
            )
        record, _ = found
        if record.expires_at is not None and record.expires_at <= datetime.now(UTC):
            raise Unauthenticated(
                "the key that minted this token has expired", code="expired_token"
            )

    async def _tenant_active(self, tenant_id: str) -> bool:
        async def load() -> bool:
            tenant = await self._store.get_tenant(tenant_id)
            return tenant is not None and tenant.status == "active"

        return bool(await self._tenants.get(tenant_id, load))

    async def bootstrap_admin_key(self) -> str | None:
        """With no admin key configured and none stored, create one; return its secret once."""
        if self._admin_key_hash is not None or await self._store.has_platform_admin_key():
            return None
        new = keys.generate_key()
        await self._store.create_key(
            ApiKey(
                id=new.id,
                tenant_id=None,
                role=Role.PLATFORM_ADMIN,
                secret_hash=new.secret_hash,
                description=BOOTSTRAP_ADMIN_DESCRIPTION,
                collections=None,
                expires_at=None,
                created_at=datetime.now(UTC),
                last_used_at=None,
            )
        )
        return new.token

    async def check_metrics_access(self, authorization: str | None) -> None:
        """``/metrics`` names tenants: it takes the metrics token or the platform admin."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if (
            self._metrics_hash is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(keys.hash_secret(token), self._metrics_hash)
        ):
            return
        principal = await self.authenticate(authorization)
        if not principal.is_platform_admin:
            raise Forbidden("metrics need the metrics token or the platform admin key")

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal behind an ``Authorization`` header; failures are audited (a verified
        token that carries no role included: it is refused too)."""
        try:
            return await self._authenticate(authorization)
        except (Unauthenticated, Forbidden) as exc:
            await self._audit.record_authentication_failure(exc.code)
            raise

    async def _authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated("send 'Authorization: Bearer <key>'", code="missing_credentials")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("use the Bearer scheme", code="invalid_credentials")
        if self._admin_key_hash is not None and hmac.compare_digest(
            keys.hash_secret(token), self._admin_key_hash
        ):
            return Principal(
                key_id=CONFIGURED_ADMIN_KEY_ID,
                role=Role.PLATFORM_ADMIN,
                tenant_id=None,
                kind=CredentialKind.ADMIN_KEY,
            )
        if token.startswith(tenant_tokens.PREFIX):
            principal = await self._tokens.verify(token)
            if principal.tenant_id is None or not await self._tenant_active(principal.tenant_id):
                raise Unauthenticated("the token is not valid", code="invalid_token")
            await self._require_live_minter(principal.minted_by)
            return principal
        if token.count(".") == 2 and not token.startswith(keys.PREFIX):
            return await self._from_jwt(token)
        parsed = keys.parse_token(token)
        if parsed is None:
            raise Unauthenticated("the key is not valid", code="invalid_credentials")
        key_id, secret = parsed
        found = await self._lookup(key_id)
        if found is None or not keys.secret_matches(secret, found[0].secret_hash):
            raise Unauthenticated("the key is not valid", code="invalid_credentials")
        record, tenant_active = found
        now = datetime.now(UTC)
        if record.expires_at is not None and record.expires_at <= now:
            raise Unauthenticated("the key has expired", code="expired_credentials")
        if not tenant_active:
            raise Unauthenticated("the key is not valid", code="invalid_credentials")
        if record.last_used_at is None or (now - record.last_used_at).total_seconds() > 60:
            # Stamped once a minute, and off the request: a database that cannot be reached
            # (or is slow) costs the stamp, never the request.
            self._cache.update(key_id, (replace(record, last_used_at=now), tenant_active))
            self._stamp(record.id, now)
        return Principal(
            key_id=record.id,
            role=record.role,
            tenant_id=record.tenant_id,
            collections=frozenset(record.collections) if record.collections is not None else None,
            kind=CredentialKind.ADMIN_KEY if record.tenant_id is None else CredentialKind.API_KEY,
        )

    async def _from_jwt(self, token: str) -> Principal:
        if self._oidc is None:
            raise Unauthenticated(
                "JWTs are not accepted: no OIDC issuer is configured", code="invalid_token"
            )
        claims = await self._oidc.verify(token)
        subject = str(claims.get("sub", "?"))[:180]
        raw_roles = claims.get(self._claims.roles, [])
        if isinstance(raw_roles, str):
            raw_roles = raw_roles.split()
        roles = (
            {r for r in raw_roles if isinstance(r, str)} if isinstance(raw_roles, list) else set()
        )
        role = next((r for r in ROLE_PRECEDENCE if r.value in roles), None)
        if role is None:
            raise Forbidden("the token carries no tenantsearch role", code="no_role")
        if role is Role.PLATFORM_ADMIN:
            return Principal(
                key_id=f"jwt:{subject}", role=role, tenant_id=None, kind=CredentialKind.JWT
            )
        tenant_id = claims.get(self._claims.tenant)
        if not isinstance(tenant_id, str) or not await self._tenant_active(tenant_id):
            raise Unauthenticated("the token names no active tenant", code="invalid_token")
        return Principal(
            key_id=f"jwt:{subject}", role=role, tenant_id=tenant_id, kind=CredentialKind.JWT
        )


class KeyService:
    def __init__(self, store: MetadataStore, auth: AuthService, audit: AuditLog) -> None:
        self._store = store
        self._auth = auth
        self._audit = audit

    async def create(
        self,
        tenant_id: str,
        role: Role,
        *,
        collections: Sequence[str] | None = None,
        expires_at: datetime | None = None,
        description: str | None = None,
        creator: Principal | None = None,
    ) -> tuple[ApiKey, str]:
        """Create a tenant key; returns the record and the secret token (shown once)."""
        if role is Role.PLATFORM_ADMIN:
            raise InvalidInput(
                "tenant keys are admin, writer or reader",
                code="invalid_role",
            )
        if expires_at is not None:
            if expires_at.tzinfo is None:
                expires_at = expires_at.replace(tzinfo=UTC)
            if expires_at <= datetime.now(UTC):
                raise InvalidInput("expires_at must be in the future", code="invalid_expiry")
        # A key limited to some collections cannot mint a key that reaches further.
        if creator is not None and creator.collections is not None:  # noqa: SIM102 - reads better
            if collections is None or not set(collections) <= creator.collections:
                raise Forbidden(
                    "a key limited to some collections can only create keys limited to those",
                    code="collections_exceed_creator",
                )
        new = keys.generate_key()
        record = ApiKey(
            id=new.id,
            tenant_id=tenant_id,
            role=role,
            secret_hash=new.secret_hash,
            description=description,
            collections=tuple(sorted(set(collections))) if collections is not None else None,
            expires_at=expires_at,
            created_at=datetime.now(UTC),
            last_used_at=None,
        )
        await self._store.create_key(record)
        log.info("api_key_created", key_id=record.id, role=role.value, key_tenant=tenant_id)
        await self._audit.record(
            "key.create",
            principal=creator,
            tenant_id=tenant_id,
            detail={"key_id": record.id, "role": role.value},
        )
        return record, new.token

    async def list(self, tenant_id: str, viewer: Principal | None = None) -> list[ApiKey]:
        """The tenant's keys; for a ``viewer`` limited to some collections, only the keys
        within its reach (others would name collections it must not learn of)."""
        return [
            k for k in await self._store.list_keys(tenant_id) if within_reach(viewer, k.collections)
        ]

    async def revoke(self, tenant_id: str, key_id: str, revoker: Principal | None = None) -> None:
        # A key limited to some collections revokes only keys it could have created: a wider
        # key (an unlimited admin's, say) answers 404 like a missing one.
        if revoker is not None and revoker.collections is not None:
            record = await self._store.get_key(key_id) if len(key_id) <= 64 else None
            if (
                record is None
                or record.tenant_id != tenant_id
                or not within_reach(revoker, record.collections)
            ):
                raise NotFound(f"key {key_id!r} not found", code="key_not_found")
        if not await self._store.delete_key(tenant_id, key_id):
            raise NotFound(f"key {key_id!r} not found", code="key_not_found")
        self._auth.forget(key_id)
        await self._audit.record(
            "key.revoke", principal=revoker, tenant_id=tenant_id, detail={"key_id": key_id}
        )
        log.info("api_key_revoked", key_id=key_id, key_tenant=tenant_id)
