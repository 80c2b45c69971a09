"""Request and response bodies of the public API (they are also the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from tenantsearch.store.records import ApiKey, AuditEvent, Collection, Task, Tenant, TenantToken


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(BaseModel):
    """``application/problem+json`` (RFC 9457) with a stable ``code``."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    request_id: str | None = None
    errors: list[dict[str, str]] | None = None


# -- tenants and keys ----------------------------------------------------------------------------


class TenantCreate(Strict):
    id: Annotated[str, Field(min_length=1, max_length=64, examples=["acme"])]
    name: Annotated[str, Field(min_length=1, max_length=200, examples=["Acme Inc."])]


class TenantPatch(Strict):
    name: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    plan: str | None = Field(default=None, description="free, standard, enterprise or unlimited.")
    limits: dict[str, StrictInt | None] | None = Field(
        default=None,
        description="Overrides of the plan (replacing earlier ones; {} clears them): "
        "search_rate, search_burst, search_period (seconds, default 1), and the same for "
        "write_ and admin_; daily_requests, max_documents, max_stored_bytes (null: unlimited).",
    )


class TenantOut(BaseModel):
    id: str
    name: str
    status: Literal["active", "deleting"]
    plan: str
    limits: dict[str, Any] | None = Field(description="Overrides of the plan, if any.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, tenant: Tenant) -> TenantOut:
        return cls.model_validate(tenant, from_attributes=True)


class TenantList(BaseModel):
    tenants: list[TenantOut]
    next_after: str | None = Field(
        description="Pass as ?after= to get the next page; null on the last page."
    )


Role = Literal["admin", "writer", "reader"]


class TenantKeyCreate(Strict):
    role: Role = "admin"
    description: Annotated[str | None, Field(max_length=200)] = None


class KeyCreate(Strict):
    role: Role
    collections: Annotated[list[str] | None, Field(max_length=100)] = Field(
        default=None, description="Limit the key to these collections; omit for all."
    )
    expires_at: datetime | None = None
    description: Annotated[str | None, Field(max_length=200)] = None


class KeyOut(BaseModel):
    id: str
    role: str
    description: str | None
    collections: list[str] | None
    expires_at: datetime | None
    created_at: datetime
    last_used_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(
            id=key.id,
            role=key.role.value,
            description=key.description,
            collections=list(key.collections) if key.collections is not None else None,
            expires_at=key.expires_at,
            created_at=key.created_at,
            last_used_at=key.last_used_at,
        )


class KeyCreated(KeyOut):
    key: str = Field(description="The secret. It is shown once and cannot be retrieved later.")


class KeyList(BaseModel):
    keys: list[KeyOut]


# -- collections ---------------------------------------------------------------------------------


class FieldSpecIn(Strict):
    type: Literal["text", "keyword", "integer", "float", "date", "boolean"]
    language: str | None = Field(
        default=None,
        description="Text fields only: ISO 639-1 code (en, de, fr, es, it, pt, nl, sv, da, fi, "
        "no, ru, ro, hu, tr, ar, el, ta) or 'none' for no stemming. Default 'none'.",
    )


class CollectionPut(Strict):
    fields: dict[str, Any] = Field(
        description="Field name to field spec.",
        json_schema_extra={"additionalProperties": FieldSpecIn.model_json_schema()},
    )


class CollectionOut(BaseModel):
    name: str
    fields: dict[str, dict[str, str]]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, collection: Collection) -> CollectionOut:
        return cls(
            name=collection.name,
            fields=collection.schema.as_dict(),
            created_at=collection.created_at,
            updated_at=collection.updated_at,
        )


class CollectionList(BaseModel):
    collections: list[CollectionOut]


# -- tasks ---------------------------------------------------------------------------------------


class TaskOut(BaseModel):
    id: str
    task_id: str = Field(description="The same as id.")
    kind: str
    status: Literal["queued", "processing", "succeeded", "failed"] = Field(
        description="queued: accepted, waiting for an indexer; processing: an indexer took it "
        "(again after a crash or an outage, until it finishes); succeeded: its documents are "
        "searchable (those refused for good are counted in failed, with errors); failed: "
        "every document was refused, or the write was given up on (see errors)."
    )
    collection: str | None
    received: int
    indexed: int
    failed: int
    errors: list[dict[str, Any]]
    created_at: datetime | None = Field(description="When the write was accepted.")
    started_at: datetime | None = Field(description="When an indexer first took it.")
    finished_at: datetime | None

    @classmethod
    def of(cls, task: Task) -> TaskOut:
        return cls(
            id=task.id,
            task_id=task.id,
            kind=task.kind.value,
            status=task.status.value,
            collection=task.collection,
            received=task.received,
            indexed=task.indexed,
            failed=task.failed,
            errors=task.errors,
            created_at=task.created_at,
            started_at=task.started_at,
            finished_at=task.finished_at,
        )


class TaskList(BaseModel):
    tasks: list[TaskOut]


# -- search --------------------------------------------------------------------------------------


class SearchBody(Strict):
    q: Annotated[str, Field(max_length=1000)] = ""
    matching: Literal["ranked", "all", "last", "frequency"] = Field(
        default="ranked",
        description="Which documents the words of q select: ranked (default), every document "
        "matching at least one word, those matching more of the words (and rarer ones) first; "
        "all, only documents matching every word; last, every word, and while nothing matches, "
        "the words without the last one; frequency, every word, and while nothing matches, "
        "without the most common one (the answer's dropped_words lists those left out; "
        "docs/relevance.md).",
    )
    filter: dict[str, Any] | None = Field(
        default=None,
        description='{"tag": {"eq": "x"}}, {"tag": {"in": ["x", "y"]}}, '
        '{"price": {"gte": 1, "lt": 5}}, {"and": [...]}, {"or": [...]}, {"not": {...}}',
    )
    sort: list[dict[str, Literal["asc", "desc"]]] | None = Field(
        default=None, max_length=1, description='At most one key, e.g. [{"price": "asc"}].'
    )
    facets: Annotated[list[str], Field(max_length=20)] = []
    facet_size: Annotated[int, Field(ge=1, le=1000)] = 100
    limit: Annotated[int, Field(ge=1)] = 20
    cursor: str | None = None
    highlight: bool = False


class HitOut(BaseModel):
    id: str
    score: float | None
    document: dict[str, Any]
    highlights: dict[str, list[str]] | None = None


class SearchOut(BaseModel):
    hits: list[HitOut]
    total: int
    facets: dict[str, dict[str, int]]
    next_cursor: str | None
    dropped_words: list[str] | None = Field(
        default=None,
        description='With "matching": "last" or "frequency": the words of q left out to find '
        "any document, in the order of q; absent when none was.",
    )


# -- tenant tokens and audit ---------------------------------------------------------------------


class TokenCreate(Strict):
    collections: Annotated[list[str], Field(min_length=1, max_length=100)]
    filter: dict[str, Any] | None = Field(
        default=None, description='Applied to every read, e.g. {"owner": {"eq": "u123"}}.'
    )
    expires_in: Annotated[int, Field(ge=1, le=86_400)] = Field(
        default=3600, description="Lifetime in seconds (at most one day)."
    )
    description: Annotated[str | None, Field(max_length=200)] = None


class TokenOut(BaseModel):
    id: str
    collections: list[str]
    filter: dict[str, Any] | None
    description: str | None
    expires_at: datetime
    created_at: datetime

    @classmethod
    def of(cls, token: TenantToken) -> TokenOut:
        return cls(
            id=token.id,
            collections=list(token.collections),
            filter=token.filter,
            description=token.description,
            expires_at=token.expires_at,
            created_at=token.created_at,
        )


class TokenCreated(TokenOut):
    token: str = Field(description="Send as 'Authorization: Bearer <token>'. Shown once.")


class TokenList(BaseModel):
    tokens: list[TokenOut]


class AuditOut(BaseModel):
    id: int
    at: datetime
    tenant_id: str | None
    actor: str | None
    action: str
    outcome: str
    request_id: str | None
    detail: dict[str, Any] | None

    @classmethod
    def of(cls, event: AuditEvent) -> AuditOut:
        return cls.model_validate(event, from_attributes=True)


class AuditList(BaseModel):
    events: list[AuditOut]
