"""Dependencies routes declare: the service container and the authorized principal.

The container is built once in the app's lifespan (``app.create_app``) and read from
``app.state``; tests swap adapters by building the app with other settings, not by patching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Request

from tenantsearch.auth.audit import AuditLog
from tenantsearch.auth.rbac import Action, Principal, authorize, require_collection, require_tenant
from tenantsearch.auth.service import AuthService, KeyService
from tenantsearch.auth.tenant_tokens import TenantTokenService
from tenantsearch.cache.refresh_ahead import StaleServing
from tenantsearch.errors import Forbidden
from tenantsearch.ingest.dead_letters import DeadLetterService
from tenantsearch.ingest.service import DocumentReader, TaskService, WriteService
from tenantsearch.limits.service import LimitService
from tenantsearch.limits.usage import UsageService
from tenantsearch.observability.metrics import Metrics
from tenantsearch.queue.port import Queue
from tenantsearch.search.collections import CollectionService
from tenantsearch.search.port import SearchBackend
from tenantsearch.search.service import SearchService
from tenantsearch.settings import Settings
from tenantsearch.store.records import Collection
from tenantsearch.store.repository import MetadataStore
from tenantsearch.tenants.service import TenantService


@dataclass
class Services:
    settings: Settings
    store: MetadataStore
    backend: SearchBackend
    queue: Queue
    metrics: Metrics
    auth: AuthService
    audit: AuditLog
    tokens: TenantTokenService
    keys: KeyService
    tenants: TenantService
    collections: CollectionService
    writes: WriteService
    tasks: TaskService
    documents: DocumentReader
    search: SearchService
    dead_letters: DeadLetterService
    limits: LimitService
    usage: UsageService
    stale: StaleServing


async def get_services(request: Request) -> Services:
    # async: a plain def would send every request through FastAPI's thread pool.
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


class Requires:
    """``Depends(Requires(Action.SEARCH))``: authenticate, authorize one action, and spend the
    tenant's budget for it (429 when spent)."""

    def __init__(self, action: Action) -> None:
        self.action = action

    async def __call__(self, request: Request, services: ServicesDep) -> Principal:
        principal = await services.auth.authenticate(request.headers.get("authorization"))
        structlog.contextvars.bind_contextvars(
            tenant=principal.tenant_id or "-", key_id=principal.key_id
        )
        request.state.tenant = principal.tenant_id or "-"
        try:
            authorize(principal, self.action)
        except Forbidden:
            await services.audit.record(
                "authorize",
                outcome="denied",
                principal=principal,
                detail={"action": self.action.value, "route": request.url.path[:200]},
            )
            raise
        admission = await services.limits.admit(principal, self.action)
        if admission is not None:
            request.state.ratelimit = admission.rate
            request.state.quota = admission.quota
        return principal


TenantsAdmin = Annotated[Principal, Depends(Requires(Action.TENANTS_MANAGE))]
KeysAdmin = Annotated[Principal, Depends(Requires(Action.KEYS_MANAGE))]
CollectionsReader = Annotated[Principal, Depends(Requires(Action.COLLECTIONS_READ))]
CollectionsWriter = Annotated[Principal, Depends(Requires(Action.COLLECTIONS_WRITE))]
DocumentsReader = Annotated[Principal, Depends(Requires(Action.DOCUMENTS_READ))]
DocumentsWriter = Annotated[Principal, Depends(Requires(Action.DOCUMENTS_WRITE))]
Searcher = Annotated[Principal, Depends(Requires(Action.SEARCH))]
TasksReader = Annotated[Principal, Depends(Requires(Action.TASKS_READ))]
TokensAdmin = Annotated[Principal, Depends(Requires(Action.TOKENS_MANAGE))]
AuditReader = Annotated[Principal, Depends(Requires(Action.AUDIT_READ))]
DeadLettersAdmin = Annotated[Principal, Depends(Requires(Action.DEAD_LETTERS_MANAGE))]
UsageReader = Annotated[Principal, Depends(Requires(Action.USAGE_READ))]


async def visible_collection(services: Services, principal: Principal, name: str) -> Collection:
    """The principal's tenant's collection ``name``, or 404 exactly as if it did not exist."""
    tenant_id = require_tenant(principal)
    require_collection(principal, name)
    return await services.collections.get(principal, tenant_id, name)
