"""The audit log: who did what to whom, and who was refused.

Recorded: authentication failures, key and tenant token creation and revocation, tenant creation
and erasure, role denials. Each event carries the actor (a key id or ``jwt:<sub>``, never a
secret), the tenant, the time and the request id. A failure to write an audit event is logged and
does not fail the request it describes.

Authentication failures need no credential, so anyone can cause them: each process writes at most
``FAILURE_RATE`` of them (a burst, then a steady rate). The ones beyond are counted, and the next
failure written carries that count as ``suppressed``: a flood of bad keys neither fills the audit
table nor puts a database write on every refused request, and the log still says how many came.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from tenantsearch.auth.rbac import Principal
from tenantsearch.errors import ServiceUnavailable
from tenantsearch.limits.memory import gcra
from tenantsearch.limits.port import Rate
from tenantsearch.store.records import AuditEvent
from tenantsearch.store.repository import MetadataStore

log = structlog.get_logger(__name__)


FAILURE_RATE = Rate(limit=20, period=1.0, burst=100)


class AuditLog:
    def __init__(self, store: MetadataStore, failure_rate: Rate = FAILURE_RATE) -> None:
        self._store = store
        self._failure_rate = failure_rate
        self._failure_tat = 0
        self._suppressed = 0

    async def record_authentication_failure(self, code: str) -> None:
        """An authentication failure, within this process's ``FAILURE_RATE`` (see above)."""
        self._failure_tat, decision = gcra(
            self._failure_tat, time.monotonic_ns() // 1000, self._failure_rate, 1
        )
        if not decision.allowed:
            self._suppressed += 1
            if self._suppressed == 1:
                log.warning("audit_authentication_failures_suppressed")
            return
        detail: dict[str, Any] = {"code": code}
        if self._suppressed:
            detail["suppressed"], self._suppressed = self._suppressed, 0
        await self.record("authenticate", outcome="failure", detail=detail)

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
