"""The write path: validate documents, give each a version, enqueue durably, report tasks.

A write is acknowledged (202) only after its task is committed and the queue has durably accepted
its message; the task and its message are committed together first (``ingest.outbox``), so no
task is left without its message. Versions come from one database counter, so across every API
process a later accepted write of a document always carries a higher version than an earlier one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from tenantsearch.auth.rbac import Principal
from tenantsearch.errors import (
    Conflict,
    FieldError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
)
from tenantsearch.ingest.messages import Message, encode
from tenantsearch.ingest.outbox import TaskPublisher
from tenantsearch.queue.port import Backlog, Queue
from tenantsearch.search.collections import new_id, ref_of
from tenantsearch.search.matching import matches
from tenantsearch.search.port import SearchBackend
from tenantsearch.search.query import WriteOp
from tenantsearch.search.schema import normalize_document_id, validate_document
from tenantsearch.search.service import mandatory_filter
from tenantsearch.store.records import Collection, Task, TaskKind, TaskStatus
from tenantsearch.store.repository import MetadataStore

log = structlog.get_logger(__name__)

MAX_REPORTED_ERRORS = 100


@dataclass(frozen=True)
class WriteLimits:
    max_document_bytes: int
    max_batch_documents: int
    max_tenant_backlog_documents: int = 500_000
    max_tenant_backlog_bytes: int = 2 * 1024**3
    max_backlog_documents: int = 5_000_000
    backlog_check_seconds: float = 0.5
    retry_after_seconds: int = 5


class Backpressure:
    """Refuses writes while the queue holds too much: 429 (with Retry-After) when one tenant's
    backlog is over its limit, so one flooding tenant waits and the others do not; 503 when the
    whole backlog is. Backlog counts are re-read from the queue at most every
    ``backlog_check_seconds``; in between, this process adds what it published itself, so only
    other API processes' writes of that last moment can overshoot a limit."""

    def __init__(self, queue: Queue, limits: WriteLimits) -> None:
        self._queue = queue
        self._limits = limits
        self._seen: dict[str | None, tuple[float, Backlog]] = {}

    async def _backlog(self, tenant: str | None) -> Backlog:
        now = time.monotonic()
        cached = self._seen.get(tenant)
        if cached is not None and now - cached[0] < self._limits.backlog_check_seconds:
            return cached[1]
        backlog = await self._queue.backlog(tenant)
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen[tenant] = (now, backlog)
        return backlog

    def note(self, tenant: str, documents: int, size: int) -> None:
        """Count a write this process just published into the cached backlogs."""
        for key in (tenant, None):
            cached = self._seen.get(key)
            if cached is not None:
                at, b = cached
                self._seen[key] = (
                    at,
                    Backlog(b.messages + 1, b.documents + documents, b.bytes + size),
                )

    async def check(self, tenant: str, documents: int, size: int) -> None:
        limits = self._limits
        retry = {"Retry-After": str(limits.retry_after_seconds)}
        total = await self._backlog(None)
        if total.documents + documents > limits.max_backlog_documents:
            raise ServiceUnavailable(
                "the ingestion backlog is full; retry later", code="backlog_full", headers=retry
            )
        mine = await self._backlog(tenant)
        if (
            mine.documents + documents > limits.max_tenant_backlog_documents
            or mine.bytes + size > limits.max_tenant_backlog_bytes
        ):
            raise TooManyRequests(
                "this tenant's writes are waiting to be indexed; retry later",
                code="tenant_backlog_full",
                headers=retry,
            )


@dataclass
class _Checked:
    ops: list[tuple[str, dict[str, Any] | None]]
    errors: list[dict[str, Any]]
    failed: int


class WriteService:
    def __init__(
        self,
        store: MetadataStore,
        queue: Queue,
        publisher: TaskPublisher,
        limits: WriteLimits,
        *,
        quota: Callable[[str, int, int], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._queue = queue
        self._publisher = publisher
        self._limits = limits
        self._quota = quota
        self._backpressure = Backpressure(queue, limits)

    async def put_document(
        self, principal: Principal, collection: Collection, doc_id: str, body: bytes
    ) -> Task:
        if normalize_document_id(doc_id) != doc_id:
            raise InvalidInput(
                "document ids are 1 to 256 characters: letters, digits and _ . : @ = + -",
                code="invalid_document_id",
                errors=[FieldError("/id", "invalid document id")],
            )
        if len(body) > self._limits.max_document_bytes:
            raise PayloadTooLarge(
                f"a document is at most {self._limits.max_document_bytes} bytes",
                code="document_too_large",
            )
        doc = _parse_json(body)
        if not isinstance(doc, dict):
            raise InvalidInput("the body must be a JSON object", code="invalid_document")
        if "id" in doc and normalize_document_id(doc["id"]) != doc_id:
            raise InvalidInput(
                "the document's id differs from the id in the path",
                code="id_mismatch",
                errors=[FieldError("/id", "must equal the id in the path")],
            )
        errors = validate_document(collection.schema, doc)
        if errors:
            raise InvalidInput("the document is not valid", errors=errors, code="invalid_document")
        doc["id"] = doc_id
        return await self._accept(principal, collection, [(doc_id, doc)], [], 0, size=len(body))

    async def put_documents(
        self,
        principal: Principal,
        collection: Collection,
        docs: Sequence[Any] | None,
        raw_lines: Sequence[bytes] | None = None,
        idempotency_key: str | None = None,
        size: int = 0,
    ) -> Task:
        """A batch, given either as parsed JSON values or as NDJSON lines (parsed here)."""
        if idempotency_key is not None:
            tenant = principal.tenant_id or ""
            earlier = await self._store.find_task_by_idempotency_key(tenant, idempotency_key)
            if earlier is not None:
                if earlier.collection != collection.name:
                    # Never answer with (or about) a task of another collection.
                    raise Conflict(
                        "this Idempotency-Key was already used for another request",
                        code="idempotency_key_reused",
                    )
                # 202 only once the earlier write is queued: its process may have died between
                # recording the task and publishing it (then this request publishes it).
                await self._publisher.settle(earlier.id)
                return await self._store.get_task(earlier.id) or earlier
        items: list[Any] = list(docs) if docs is not None else list(raw_lines or [])
        if not items:
            raise InvalidInput("the batch holds no documents", code="empty_batch")
        if len(items) > self._limits.max_batch_documents:
            raise PayloadTooLarge(
                f"a batch holds at most {self._limits.max_batch_documents} documents",
                code="batch_too_large",
            )
        checked = self._check_batch(collection, items, ndjson=docs is None)
        if not checked.ops:
            raise InvalidInput(
                "no document in the batch is valid",
                code="invalid_documents",
                errors=[FieldError(e["path"], e["message"]) for e in checked.errors],
            )
        return await self._accept(
            principal,
            collection,
            checked.ops,
            checked.errors,
            checked.failed,
            idempotency_key,
            size=size,
        )

    def _check_batch(
        self, collection: Collection, items: Sequence[Any], *, ndjson: bool
    ) -> _Checked:
        out = _Checked(ops=[], errors=[], failed=0)
        max_bytes = self._limits.max_document_bytes

        def fail(index: int, doc_id: str | None, path: str, message: str) -> None:
            out.failed += 1
            if len(out.errors) < MAX_REPORTED_ERRORS:
                entry: dict[str, Any] = {
                    "index": index,
                    "path": f"/{index}{path}",
                    "message": message,
                }
                if doc_id is not None:
                    entry["id"] = doc_id
                out.errors.append(entry)

        for index, item in enumerate(items):
            doc: Any = item
            if ndjson:
                if len(item) > max_bytes:
                    fail(index, None, "", f"a document is at most {max_bytes} bytes")
                    continue
                try:
                    doc = orjson.loads(item)
                except orjson.JSONDecodeError:
                    fail(index, None, "", "not valid JSON")
                    continue
            if not isinstance(doc, dict):
                fail(index, None, "", "a document must be a JSON object")
                continue
            doc_id = normalize_document_id(doc.get("id"))
            if doc_id is None:
                fail(
                    index,
                    None,
                    "/id",
                    'each document needs an "id": letters, digits, _ . : @ = + -',
                )
                continue
            if not ndjson and len(orjson.dumps(doc)) > max_bytes:
                fail(index, doc_id, "", f"a document is at most {max_bytes} bytes")
                continue
            errors = validate_document(collection.schema, doc, f"/{index}")
            if errors:
                out.failed += 1
                for err in errors[:3]:
                    if len(out.errors) < MAX_REPORTED_ERRORS:
                        out.errors.append(
                            {"index": index, "id": doc_id, "path": err.path, "message": err.message}
                        )
                continue
            doc["id"] = doc_id
            out.ops.append((doc_id, doc))
        return out

    async def delete_document(
        self, principal: Principal, collection: Collection, doc_id: str
    ) -> Task:
        if normalize_document_id(doc_id) != doc_id:
            raise NotFound(f"document {doc_id!r} not found", code="document_not_found")
        return await self._accept(principal, collection, [(doc_id, None)], [], 0, size=0)

    async def _accept(
        self,
        principal: Principal,
        collection: Collection,
        ops: list[tuple[str, dict[str, Any] | None]],
        errors: list[dict[str, Any]],
        failed: int,
        idempotency_key: str | None = None,
        *,
        size: int,
    ) -> Task:
        """Record the task, reserve versions, publish; ``size`` (the request's bytes) stands for
        the message's size in the backlog check, which runs before anything is recorded."""
        task = Task(
            id=new_id(),
            tenant_id=collection.tenant_id,
            collection=collection.name,
            kind=TaskKind.DOCUMENTS,
            status=TaskStatus.QUEUED,
            received=len(ops) + failed,
            indexed=0,
            failed=failed,
            errors=errors,
            idempotency_key=idempotency_key,
            created_at=datetime.now(UTC),
        )
        await self._backpressure.check(collection.tenant_id, len(ops), size)
        puts = sum(1 for _, doc in ops if doc is not None)
        if self._quota is not None and puts:
            await self._quota(collection.tenant_id, puts, size)

        def body_of(first: int) -> bytes:
            return encode(
                Message(
                    kind="documents",
                    task_id=task.id,
                    tenant=collection.tenant_id,
                    collection=collection.name,
                    uid=collection.uid,
                    ops=[WriteOp(doc_id, first + i, doc) for i, (doc_id, doc) in enumerate(ops)],
                )
            )

        # A QueueUnavailable (503) leaves the message pending: published by the sweeper or by a
        # same-key retry, so the task is never failed for a write that may yet be applied.
        await self._publisher.submit(task, body_of, documents=len(ops), reserve_versions=len(ops))
        self._backpressure.note(collection.tenant_id, len(ops), size)
        log.info(
            "write_accepted",
            task_id=task.id,
            collection=collection.name,
            documents=len(ops),
            rejected=failed,
            key_id=principal.key_id,
        )
        return task


class TaskService:
    def __init__(self, store: MetadataStore) -> None:
        self._store = store

    async def get(self, principal: Principal, task_id: str) -> Task:
        task = await self._store.get_task(task_id) if len(task_id) <= 64 else None
        visible = task is not None and (
            principal.is_platform_admin
            or (
                task.tenant_id == principal.tenant_id
                and task.kind is not TaskKind.TENANT_ERASURE
                and (task.collection is None or principal.sees_collection(task.collection))
            )
        )
        if task is None or not visible:
            raise NotFound(f"task {task_id!r} not found", code="task_not_found")
        return task

    async def list(
        self, principal: Principal, tenant_id: str, *, limit: int, status: TaskStatus | None
    ) -> list[Task]:
        collections = sorted(principal.collections) if principal.collections is not None else None
        return await self._store.list_tasks(
            tenant_id, limit=limit, collections=collections, status=status
        )

    async def wait(self, principal: Principal, task: Task, timeout: float) -> Task:
        """Poll until the task finished or ``timeout`` passed; the latest state either way."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while not task.finished and time.monotonic() < deadline:
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.1)
            task = await self.get(principal, task.id)
        return task


class DocumentReader:
    def __init__(self, backend: SearchBackend) -> None:
        self._backend = backend

    async def get(
        self, collection: Collection, doc_id: str, mandatory: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The document, or 404 when it is missing or outside the credential's filter."""
        doc = None
        if normalize_document_id(doc_id) == doc_id:
            doc = await self._backend.get(ref_of(collection), doc_id)
        restriction = mandatory_filter(collection, mandatory)
        if (
            doc is not None
            and restriction is not None
            and not matches(restriction, collection.schema, doc)
        ):
            doc = None
        if doc is None:
            raise NotFound(f"document {doc_id!r} not found", code="document_not_found")
        return doc


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}", code="malformed_json") from exc
