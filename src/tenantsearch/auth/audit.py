"""The audit log: who did what to whom, and who was refused.

Recorded: authentication failures, key and tenant token creation and revocation, tenant creation
and erasure, role denials. Each event carries the actor (a key id or ``jwt:<sub>``, never a
secret), the tenant, the time and the request id. A failure to write an audit event is logged and
does not fail the request it describes.
"""

from __future__ import annotations

from typing import Any

import structlog

from tenantsearch.auth.rbac import Principal
from tenantsearch.errors import ServiceUnavailable
from tenantsearch.store.records import AuditEvent
from tenantsearch.store.repository import MetadataStore

log = structlog.get_logger(__name__)


class AuditLog:
    def __init__(self, store: MetadataStore) -> None:
        self._store = store

    async def record(
        self,
        action: str,
        *,
        outcome: str = "success",
        principal: Principal | None = None,
        tenant_id: str | None = None,
        actor: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        context = structlog.contextvars.get_contextvars()
        if principal is not None:
            actor = actor or principal.key_id
            tenant_id = tenant_id or principal.tenant_id
        try:
            await self._store.record_audit(
                action=action,
                outcome=outcome,
                tenant_id=tenant_id,
                actor=actor,
                request_id=context.get("request_id"),
                detail=detail,
            )
        except ServiceUnavailable:
            log.warning("audit_write_failed", action=action, outcome=outcome)

    async def list(
        self, *, tenant_id: str | None, limit: int, before_id: int | None, action: str | None
    ) -> list[AuditEvent]:
        return await self._store.list_audit(
            tenant_id=tenant_id, limit=limit, before_id=before_id, action=action
        )
