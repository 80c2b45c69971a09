"""Plain records the metadata store hands to services (never ORM rows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from tenantsearch.search.schema import CollectionSchema


class Role(StrEnum):
    PLATFORM_ADMIN = "platform-admin"
    ADMIN = "admin"
    WRITER = "writer"
    READER = "reader"
    TENANT_TOKEN = "tenant-token"  # noqa: S105 - a role name, not a secret
    """Not a key role: the principal of a tenant token (search and reads, under its filter)."""


class TaskStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class TaskKind(StrEnum):
    DOCUMENTS = "documents"
    COLLECTION_DELETE = "collection_delete"
    TENANT_ERASURE = "tenant_erasure"


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    status: str
    created_at: datetime
    updated_at: datetime
    plan: str = "standard"
    limits: dict[str, Any] | None = None


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant_id: str | None
    role: Role
    secret_hash: str
    description: str | None
    collections: tuple[str, ...] | None
    expires_at: datetime | None
    created_at: datetime
    last_used_at: datetime | None


@dataclass(frozen=True)
class Collection:
    tenant_id: str
    name: str
    uid: str
    schema: CollectionSchema
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TaskOutcome:
    """What applying a task's documents came to: counts and per-document errors."""

    task_id: str
    indexed: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Task:
    id: str
    tenant_id: str
    collection: str | None
    kind: TaskKind
    status: TaskStatus
    received: int
    indexed: int
    failed: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    idempotency_key: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED)

    @classmethod
    def queued(cls, task_id: str, tenant_id: str, kind: TaskKind, collection: str | None) -> Task:
        """A new task for work that carries no documents (a deletion or an erasure)."""
        return cls(
            task_id,
            tenant_id,
            collection,
            kind,
            TaskStatus.QUEUED,
            0,
            0,
            0,
            created_at=datetime.now(UTC),
        )


@dataclass(frozen=True)
class PendingPublish:
    """A task's queue message that the queue has not confirmed yet (the outbox row)."""

    task_id: str
    tenant_id: str
    documents: int
    body: bytes
    lease_until: datetime


@dataclass(frozen=True)
class TenantToken:
    id: str
    tenant_id: str
    created_by: str
    collections: tuple[str, ...]
    filter: dict[str, Any] | None
    description: str | None
    expires_at: datetime
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class AuditEvent:
    id: int
    at: datetime
    tenant_id: str | None
    actor: str | None
    action: str
    outcome: str
    request_id: str | None
    detail: dict[str, Any] | None
