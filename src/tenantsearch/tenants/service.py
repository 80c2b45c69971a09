"""Tenant administration, and erasure of all of a tenant's data on request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from tenantsearch.auth.audit import AuditLog
from tenantsearch.auth.rbac import Principal
from tenantsearch.auth.service import AuthService
from tenantsearch.errors import Conflict, FieldError, InvalidInput, NotFound
from tenantsearch.ingest.messages import Message, encode
from tenantsearch.ingest.outbox import TaskPublisher
from tenantsearch.limits.plans import PLANS, OverrideErrors, check_overrides
from tenantsearch.search.collections import check_name, new_id
from tenantsearch.store.records import Task, TaskKind, Tenant
from tenantsearch.store.repository import MetadataStore

log = structlog.get_logger(__name__)


class TenantService:
    def __init__(
        self,
        store: MetadataStore,
        publisher: TaskPublisher,
        auth: AuthService,
        audit: AuditLog,
        *,
        default_plan: str = "standard",
    ) -> None:
        self._default_plan = default_plan
        self._store = store
        self._publisher = publisher
        self._auth = auth
        self._audit = audit

    async def create(self, tenant_id: str, name: str, creator: Principal | None = None) -> Tenant:
        check_name(tenant_id, "tenant")
        tenant = await self._store.create_tenant(tenant_id, name, plan=self._default_plan)
        log.info("tenant_created", created_tenant=tenant_id)
        self._auth.forget_tenant(tenant_id)  # an erased tenant's id may be reused at once
        await self._audit.record("tenant.create", principal=creator, tenant_id=tenant_id)
        return tenant

    async def get(self, tenant_id: str) -> Tenant:
        tenant = await self._store.get_tenant(tenant_id) if len(tenant_id) <= 64 else None
        if tenant is None:
            raise NotFound(f"tenant {tenant_id!r} not found", code="tenant_not_found")
        return tenant

    async def get_active(self, tenant_id: str) -> Tenant:
        tenant = await self.get(tenant_id)
        if tenant.status != "active":
            raise Conflict("the tenant is being erased", code="tenant_deleting")
        return tenant

    async def list(self, *, limit: int, after: str | None) -> list[Tenant]:
        return await self._store.list_tenants(limit=limit, after=after)

    async def update(
        self,
        tenant_id: str,
        *,
        name: str | None = None,
        plan: str | None = None,
        limits: Mapping[str, Any] | None = None,
    ) -> Tenant:
        """Rename, change the plan, or replace the limit overrides (``{}`` clears them)."""
        await self.get_active(tenant_id)
        if plan is not None and plan not in PLANS:
            raise InvalidInput(
                f"plan must be one of {', '.join(PLANS)}",
                code="invalid_plan",
                errors=[FieldError("/plan", "unknown plan")],
            )
        overrides = None
        if limits is not None:
            try:
                overrides = check_overrides(limits)
            except OverrideErrors as exc:
                raise InvalidInput(
                    "the limits are not valid", errors=exc.errors, code="invalid_limits"
                ) from exc
        tenant = await self._store.update_tenant(tenant_id, name=name, plan=plan, limits=overrides)
        if tenant is None:
            raise NotFound(f"tenant {tenant_id!r} not found", code="tenant_not_found")
        return tenant

    async def erase(self, tenant_id: str, requester: Principal | None = None) -> Task:
        """Start erasing every document, collection, key and task of the tenant.

        The tenant's keys stop working at once; the indexer then drops the engine data and the
        metadata. The returned task reports progress (readable by the platform admin).
        """
        # Asking again while an erasure is under way starts another: dropping is idempotent, and
        # it is how an erasure whose message could not be queued is resumed.
        await self.get(tenant_id)
        await self._store.update_tenant(tenant_id, status="deleting")
        self._auth.forget_tenant(tenant_id)
        task = Task.queued(new_id(), tenant_id, TaskKind.TENANT_ERASURE, None)
        body = encode(Message(kind="tenant_erasure", task_id=task.id, tenant=tenant_id))
        # A 503 here leaves the message pending: the sweeper publishes it once the queue is back.
        await self._publisher.submit(task, lambda _first: body)
        log.info("tenant_erasure_requested", erased_tenant=tenant_id, task_id=task.id)
        await self._audit.record(
            "tenant.erase", principal=requester, tenant_id=tenant_id, detail={"task_id": task.id}
        )
        return task
