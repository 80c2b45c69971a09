"""The metadata store: every read and write of tenants, keys, collections, tasks and counters.

One class over SQLAlchemy's async engine, so the same code runs on SQLite (embedded) and
PostgreSQL (production); ``tests/contract/test_metadata_store.py`` runs on each. Each method is one
transaction. Database errors become :class:`MetadataUnavailable`; uniqueness races become
:class:`tenantsearch.errors.Conflict`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tenantsearch.errors import Conflict, ServiceUnavailable
from tenantsearch.search.schema import CollectionSchema
from tenantsearch.store.models import (
    ApiKeyRow,
    AuditEventRow,
    CollectionRow,
    CounterRow,
    PendingPublishRow,
    SigningSecretRow,
    TaskRow,
    TenantRow,
    TenantTokenRow,
    VersionCheckpointRow,
)
from tenantsearch.store.records import (
    ApiKey,
    AuditEvent,
    Collection,
    PendingPublish,
    Role,
    Task,
    TaskKind,
    TaskOutcome,
    TaskStatus,
    Tenant,
    TenantToken,
)

MAX_TASK_ERRORS = 100
"""Per-document errors kept on one task; the counts stay exact beyond that."""

LAST_USED_RESOLUTION = timedelta(minutes=1)


class MetadataUnavailable(ServiceUnavailable):
    code = "metadata_unavailable"
    title = "The metadata database is unavailable"


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes even for timezone-aware columns; they were stored as UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _tenant(row: TenantRow) -> Tenant:
    return Tenant(
        id=row.id,
        name=row.name,
        status=row.status,
        created_at=_aware(row.created_at) or _now(),
        updated_at=_aware(row.updated_at) or _now(),
        plan=row.plan,
        limits=row.limits,
    )


def _key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        tenant_id=row.tenant_id,
        role=Role(row.role),
        secret_hash=row.secret_hash,
        description=row.description,
        collections=tuple(row.collections) if row.collections is not None else None,
        expires_at=_aware(row.expires_at),
        created_at=_aware(row.created_at) or _now(),
        last_used_at=_aware(row.last_used_at),
    )


def _collection(row: CollectionRow) -> Collection:
    return Collection(
        tenant_id=row.tenant_id,
        name=row.name,
        uid=row.uid,
        schema=CollectionSchema.from_dict(row.fields),
        created_at=_aware(row.created_at) or _now(),
        updated_at=_aware(row.updated_at) or _now(),
    )


def _task(row: TaskRow) -> Task:
    return Task(
        id=row.id,
        tenant_id=row.tenant_id,
        collection=row.collection,
        kind=TaskKind(row.kind),
        status=TaskStatus(row.status),
        received=row.received,
        indexed=row.indexed,
        failed=row.failed,
        errors=list(row.errors or []),
        idempotency_key=row.idempotency_key,
        created_at=_aware(row.created_at),
        started_at=_aware(row.started_at),
        finished_at=_aware(row.finished_at),
    )


def _pending(row: PendingPublishRow) -> PendingPublish:
    return PendingPublish(
        task_id=row.task_id,
        tenant_id=row.tenant_id,
        documents=row.documents,
        body=bytes(row.body),
        lease_until=_aware(row.lease_until) or _now(),
    )


def _token(row: TenantTokenRow) -> TenantToken:
    return TenantToken(
        id=row.id,
        tenant_id=row.tenant_id,
        created_by=row.created_by,
        collections=tuple(row.collections),
        filter=row.filter,
        description=row.description,
        expires_at=_aware(row.expires_at) or _now(),
        created_at=_aware(row.created_at) or _now(),
        revoked_at=_aware(row.revoked_at),
    )


def _audit(row: AuditEventRow) -> AuditEvent:
    return AuditEvent(
        id=row.id,
        at=_aware(row.at) or _now(),
        tenant_id=row.tenant_id,
        actor=row.actor,
        action=row.action,
        outcome=row.outcome,
        request_id=row.request_id,
        detail=row.detail,
    )


def _finish(row: TaskRow, outcome: TaskOutcome, now: datetime) -> None:
    """Finish a locked task row with ``outcome``: succeeded unless every received document
    failed. A task finished already keeps its first outcome (delivered again after the ack was
    lost: counts are not added twice)."""
    if row.finished_at is not None:
        return
    row.indexed += outcome.indexed
    row.failed += outcome.failed
    if outcome.errors and len(row.errors or []) < MAX_TASK_ERRORS:
        room = MAX_TASK_ERRORS - len(row.errors or [])
        row.errors = [*(row.errors or []), *outcome.errors[:room]]
    if row.started_at is None:
        row.started_at = now
    all_failed = row.received > 0 and row.failed >= row.received
    row.status = (TaskStatus.FAILED if all_failed else TaskStatus.SUCCEEDED).value
    row.finished_at = now


class MetadataStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncSession]:
        try:
            async with self._sessions.begin() as session:
                yield session
        except IntegrityError as exc:
            raise Conflict("the resource already exists or changed meanwhile") from exc
        except SQLAlchemyError as exc:
            raise MetadataUnavailable() from exc
        except OSError as exc:
            # asyncpg's refused or timed-out connection is not wrapped by SQLAlchemy.
            raise MetadataUnavailable() from exc

    async def close(self) -> None:
        await self._engine.dispose()

    async def ping(self) -> None:
        async with self._tx() as s:
            await s.execute(text("SELECT 1"))

    # -- tenants -------------------------------------------------------------------------------

    async def create_tenant(self, tenant_id: str, name: str, plan: str = "standard") -> Tenant:
        now = _now()
        row = TenantRow(
            id=tenant_id,
            name=name,
            status="active",
            plan=plan,
            limits=None,
            created_at=now,
            updated_at=now,
        )
        async with self._tx() as s:
            if await s.get(TenantRow, tenant_id) is not None:
                raise Conflict(f"tenant {tenant_id!r} already exists", code="tenant_exists")
            s.add(row)
        return _tenant(row)

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        async with self._tx() as s:
            row = await s.get(TenantRow, tenant_id)
            return _tenant(row) if row else None

    async def list_tenants(self, *, limit: int, after: str | None = None) -> list[Tenant]:
        query = select(TenantRow).order_by(TenantRow.id).limit(limit)
        if after is not None:
            query = query.where(TenantRow.id > after)
        async with self._tx() as s:
            return [_tenant(r) for r in (await s.scalars(query)).all()]

    async def update_tenant(
        self,
        tenant_id: str,
        *,
        name: str | None = None,
        status: str | None = None,
        plan: str | None = None,
        limits: dict[str, Any] | None = None,
    ) -> Tenant | None:
        """Change the given fields; ``limits`` replaces the overrides (``{}`` clears them)."""
        async with self._tx() as s:
            row = await s.get(TenantRow, tenant_id)
            if row is None:
                return None
            if name is not None:
                row.name = name
            if status is not None:
                row.status = status
            if plan is not None:
                row.plan = plan
            if limits is not None:
                row.limits = limits or None
            row.updated_at = _now()
            return _tenant(row)

    async def delete_tenant_metadata(self, tenant_id: str, *, keep_task: str | None = None) -> None:
        """Remove the tenant with its keys, collections and tasks, except the task ``keep_task``
        (the erasure's own, which reports the erasure until it is pruned)."""
        async with self._tx() as s:
            tasks = delete(TaskRow).where(TaskRow.tenant_id == tenant_id)
            if keep_task is not None:
                tasks = tasks.where(TaskRow.id != keep_task)
            await s.execute(tasks)
            pending = delete(PendingPublishRow).where(PendingPublishRow.tenant_id == tenant_id)
            if keep_task is not None:
                pending = pending.where(PendingPublishRow.task_id != keep_task)
            await s.execute(pending)
            await s.execute(delete(ApiKeyRow).where(ApiKeyRow.tenant_id == tenant_id))
            await s.execute(delete(TenantTokenRow).where(TenantTokenRow.tenant_id == tenant_id))
            await s.execute(delete(CollectionRow).where(CollectionRow.tenant_id == tenant_id))
            await s.execute(delete(TenantRow).where(TenantRow.id == tenant_id))

    # -- API keys ------------------------------------------------------------------------------

    async def create_key(self, key: ApiKey) -> ApiKey:
        row = ApiKeyRow(
            id=key.id,
            tenant_id=key.tenant_id,
            role=key.role.value,
            secret_hash=key.secret_hash,
            description=key.description,
            collections=list(key.collections) if key.collections is not None else None,
            expires_at=key.expires_at,
            created_at=key.created_at,
            last_used_at=None,
        )
        async with self._tx() as s:
            s.add(row)
        return key

    async def get_key(self, key_id: str) -> ApiKey | None:
        async with self._tx() as s:
            row = await s.get(ApiKeyRow, key_id)
            return _key(row) if row else None

    async def has_platform_admin_key(self) -> bool:
        query = (
            select(func.count())
            .select_from(ApiKeyRow)
            .where(ApiKeyRow.role == Role.PLATFORM_ADMIN.value)
        )
        async with self._tx() as s:
            return bool(await s.scalar(query))

    async def list_keys(self, tenant_id: str) -> list[ApiKey]:
        query = (
            select(ApiKeyRow)
            .where(ApiKeyRow.tenant_id == tenant_id)
            .order_by(ApiKeyRow.created_at, ApiKeyRow.id)
        )
        async with self._tx() as s:
            return [_key(r) for r in (await s.scalars(query)).all()]

    async def delete_key(self, tenant_id: str, key_id: str) -> bool:
        query = delete(ApiKeyRow).where(ApiKeyRow.id == key_id, ApiKeyRow.tenant_id == tenant_id)
        async with self._tx() as s:
            result = await s.execute(query)
            return bool(getattr(result, "rowcount", 0))

    async def touch_key(self, key_id: str, when: datetime) -> None:
        """Record a use, at most once per minute per key (it is a hint, not an audit trail)."""
        query = (
            update(ApiKeyRow)
            .where(ApiKeyRow.id == key_id)
            .where(
                (ApiKeyRow.last_used_at.is_(None))
                | (ApiKeyRow.last_used_at < when - LAST_USED_RESOLUTION)
            )
            .values(last_used_at=when)
        )
        async with self._tx() as s:
            await s.execute(query)

    # -- collections ---------------------------------------------------------------------------

    async def get_collection(self, tenant_id: str, name: str) -> Collection | None:
        async with self._tx() as s:
            row = await s.get(CollectionRow, (tenant_id, name))
            return _collection(row) if row else None

    async def get_collection_by_uid(self, uid: str) -> Collection | None:
        async with self._tx() as s:
            row = await s.scalar(select(CollectionRow).where(CollectionRow.uid == uid))
            return _collection(row) if row else None

    async def all_collections(self) -> list[Collection]:
        """Every tenant's collections (for maintenance across all of them)."""
        query = select(CollectionRow).order_by(CollectionRow.tenant_id, CollectionRow.name)
        async with self._tx() as s:
            return [_collection(r) for r in (await s.scalars(query)).all()]

    async def list_collections(self, tenant_id: str) -> list[Collection]:
        query = (
            select(CollectionRow)
            .where(CollectionRow.tenant_id == tenant_id)
            .order_by(CollectionRow.name)
        )
        async with self._tx() as s:
            return [_collection(r) for r in (await s.scalars(query)).all()]

    async def create_collection(
        self, tenant_id: str, name: str, uid: str, schema: CollectionSchema
    ) -> Collection:
        now = _now()
        row = CollectionRow(
            tenant_id=tenant_id,
            name=name,
            uid=uid,
            fields=schema.as_dict(),
            created_at=now,
            updated_at=now,
        )
        async with self._tx() as s:
            s.add(row)
        return _collection(row)

    async def delete_collection(self, tenant_id: str, name: str) -> Collection | None:
        async with self._tx() as s:
            row = await s.get(CollectionRow, (tenant_id, name))
            if row is None:
                return None
            found = _collection(row)
            await s.delete(row)
            return found

    # -- tasks and versions --------------------------------------------------------------------

    async def create_task(self, task: Task, *, reserve_versions: int = 0) -> int:
        """Insert ``task`` and reserve ``reserve_versions`` consecutive document versions in the
        same transaction; returns the first reserved version (0 when none were asked for)."""
        async with self._tx() as s:
            return await self._insert_task(s, task, reserve_versions)

    async def create_task_to_publish(
        self,
        task: Task,
        body_of: Callable[[int], bytes],
        *,
        documents: int,
        lease_until: datetime,
        reserve_versions: int = 0,
    ) -> bytes:
        """Insert ``task`` (reserving versions as :meth:`create_task` does) together with its
        queue message, ``body_of(first reserved version)``, as a pending publish leased until
        ``lease_until``, in one transaction; returns the body. The row stays until
        :meth:`published` (or an indexer starting the task) removes it."""
        async with self._tx() as s:
            first = await self._insert_task(s, task, reserve_versions)
            body = body_of(first)
            s.add(
                PendingPublishRow(
                    task_id=task.id,
                    tenant_id=task.tenant_id,
                    documents=documents,
                    body=body,
                    lease_until=lease_until,
                    created_at=task.created_at or _now(),
                )
            )
        return body

    async def _insert_task(self, s: AsyncSession, task: Task, reserve_versions: int) -> int:
        first = 0
        if reserve_versions:
            result = await s.execute(
                update(CounterRow)
                .where(CounterRow.name == "document_version")
                .values(value=CounterRow.value + reserve_versions)
                .returning(CounterRow.value)
            )
            last = int(result.scalar_one())
            first = last - reserve_versions + 1
        s.add(
            TaskRow(
                id=task.id,
                tenant_id=task.tenant_id,
                collection=task.collection,
                kind=task.kind.value,
                status=task.status.value,
                received=task.received,
                indexed=0,
                failed=task.failed,
                errors=task.errors[:MAX_TASK_ERRORS],
                idempotency_key=task.idempotency_key,
                created_at=task.created_at or _now(),
                started_at=None,
                finished_at=task.finished_at,
            )
        )
        return first

    # -- pending publishes (the outbox) ---------------------------------------------------------

    async def published(self, task_id: str) -> None:
        """The queue confirmed the task's message: forget the pending publish (a no-op when it is
        gone already)."""
        async with self._tx() as s:
            await s.execute(delete(PendingPublishRow).where(PendingPublishRow.task_id == task_id))

    async def release_publish(self, task_id: str) -> None:
        """The publish of ``task_id`` failed: end its lease now, so that a same-key retry or the
        sweeper may take it over at once instead of waiting out the lease."""
        async with self._tx() as s:
            await s.execute(
                update(PendingPublishRow)
                .where(PendingPublishRow.task_id == task_id)
                .values(lease_until=_now())
            )

    async def pending_publish(self, task_id: str) -> PendingPublish | None:
        async with self._tx() as s:
            row = await s.get(PendingPublishRow, task_id)
            return _pending(row) if row else None

    async def claim_publish(
        self, task_id: str, *, now: datetime, lease_until: datetime
    ) -> PendingPublish | None:
        """Take over the pending publish of ``task_id`` if its lease ended by ``now``: leased to
        the caller until ``lease_until`` and returned. ``None`` when there is none, or another
        process holds it (one compare-and-set: of processes claiming at once, one wins)."""
        claim = (
            update(PendingPublishRow)
            .where(PendingPublishRow.task_id == task_id, PendingPublishRow.lease_until <= now)
            .values(lease_until=lease_until)
        )
        async with self._tx() as s:
            if (await s.execute(claim)).rowcount != 1:  # type: ignore[attr-defined]
                return None
            row = await s.get(PendingPublishRow, task_id)
            return _pending(row) if row else None

    async def expired_publishes(self, now: datetime, *, limit: int) -> list[str]:
        """Tasks whose pending publish's lease ended by ``now``, oldest lease first."""
        query = (
            select(PendingPublishRow.task_id)
            .where(PendingPublishRow.lease_until <= now)
            .order_by(PendingPublishRow.lease_until)
            .limit(limit)
        )
        async with self._tx() as s:
            return list((await s.scalars(query)).all())

    async def get_task(self, task_id: str) -> Task | None:
        async with self._tx() as s:
            row = await s.get(TaskRow, task_id)
            return _task(row) if row else None

    async def find_task_by_idempotency_key(self, tenant_id: str, key: str) -> Task | None:
        query = select(TaskRow).where(
            TaskRow.tenant_id == tenant_id, TaskRow.idempotency_key == key
        )
        async with self._tx() as s:
            row = await s.scalar(query.limit(1))
            return _task(row) if row else None

    async def list_tasks(
        self,
        tenant_id: str,
        *,
        limit: int,
        collections: Sequence[str] | None = None,
        status: TaskStatus | None = None,
        before: datetime | None = None,
    ) -> list[Task]:
        query = select(TaskRow).where(TaskRow.tenant_id == tenant_id)
        if collections is not None:
            query = query.where(TaskRow.collection.in_(list(collections)))
        if status is not None:
            query = query.where(TaskRow.status == status.value)
        if before is not None:
            query = query.where(TaskRow.created_at < before)
        query = query.order_by(TaskRow.created_at.desc(), TaskRow.id.desc()).limit(limit)
        async with self._tx() as s:
            return [_task(r) for r in (await s.scalars(query)).all()]

    async def start_tasks(self, task_ids: Sequence[str]) -> None:
        """Mark queued tasks ``processing`` (an indexer took their messages) with their
        ``started_at``, in one transaction, and forget their pending publishes (their messages are
        evidently queued). Tasks in any other state, unknown ids, and task rows another
        transaction holds locked (an indexer finishing them) are left as they are: this never
        waits for a task's lock."""
        ids = sorted(set(task_ids))
        if not ids:
            return
        now = _now()
        query = (
            select(TaskRow)
            .where(TaskRow.id.in_(ids), TaskRow.status == TaskStatus.QUEUED.value)
            .order_by(TaskRow.id)
            .with_for_update(skip_locked=True)
        )
        async with self._tx() as s:
            # An indexer holds their messages: they are queued, whatever the API process that
            # published them recorded (it may have died between the confirm and its own delete).
            await s.execute(delete(PendingPublishRow).where(PendingPublishRow.task_id.in_(ids)))
            for row in await s.scalars(query):
                row.status = TaskStatus.PROCESSING.value
                if row.started_at is None:
                    row.started_at = now

    async def finish_tasks(self, outcomes: Sequence[TaskOutcome]) -> None:
        """Finish tasks with their outcomes, in one transaction (the indexer settles a batch's
        messages at once). Rows are locked in id order, so two indexers finishing overlapping sets
        cannot deadlock; unknown ids are skipped, and a task finished already keeps its first
        outcome."""
        if not outcomes:
            return
        now = _now()
        async with self._tx() as s:
            ids = sorted({o.task_id for o in outcomes})
            query = select(TaskRow).where(TaskRow.id.in_(ids)).order_by(TaskRow.id)
            rows = {row.id: row for row in await s.scalars(query.with_for_update())}
            for outcome in outcomes:
                row = rows.get(outcome.task_id)
                if row is not None:
                    _finish(row, outcome, now)

    async def fail_task(self, task_id: str, message: str) -> None:
        async with self._tx() as s:
            row = await s.get(TaskRow, task_id)
            if row is None:
                return
            row.status = TaskStatus.FAILED.value
            row.failed = row.received - row.indexed
            row.errors = [*(row.errors or [])[: MAX_TASK_ERRORS - 1], {"message": message}]
            row.finished_at = _now()

    async def reopen_task(self, task_id: str, *, documents: int) -> None:
        """A failed write is being retried (a dead letter replayed): back to queued, its
        ``documents`` no longer counted as failed."""
        async with self._tx() as s:
            row = await s.get(TaskRow, task_id)
            if row is None:
                return
            row.status = TaskStatus.QUEUED.value
            row.failed = max(0, row.failed - documents)
            row.finished_at = None

    # -- delete tombstones ----------------------------------------------------------------------

    async def checkpoint_versions(self, now: datetime, *, keep_after: datetime) -> int:
        """Record the document version counter's current value at ``now``, and forget the
        checkpoints no horizon after ``keep_after`` can need (every one older than the newest
        checkpoint taken at or before ``keep_after``). Returns the horizon at ``keep_after``
        (what ``tombstone_horizon(keep_after)`` answers)."""
        async with self._tx() as s:
            value = await s.scalar(
                select(CounterRow.value).where(CounterRow.name == "document_version")
            )
            await s.execute(
                insert(VersionCheckpointRow).values(taken_at=now, version=int(value or 0))
            )
            floor = (
                await s.execute(
                    select(VersionCheckpointRow.taken_at, VersionCheckpointRow.version)
                    .where(VersionCheckpointRow.taken_at <= keep_after)
                    .order_by(VersionCheckpointRow.taken_at.desc())
                    .limit(1)
                )
            ).first()
            if floor is None:
                return 0
            await s.execute(
                delete(VersionCheckpointRow).where(VersionCheckpointRow.taken_at < floor.taken_at)
            )
            return int(floor.version)

    async def tombstone_horizon(self, at: datetime) -> int:
        """The highest document version handed out by ``at``, as far as the checkpoints tell (the
        newest one taken at or before ``at``); 0 without one. Every write with a version at or
        below it was accepted before ``at``."""
        query = (
            select(VersionCheckpointRow.version)
            .where(VersionCheckpointRow.taken_at <= at)
            .order_by(VersionCheckpointRow.taken_at.desc())
            .limit(1)
        )
        async with self._tx() as s:
            return int(await s.scalar(query) or 0)

    async def prune_tasks(self, finished_before: datetime) -> int:
        query = delete(TaskRow).where(TaskRow.finished_at < finished_before)
        async with self._tx() as s:
            result = await s.execute(query)
            return int(getattr(result, "rowcount", 0))

    # -- tenant tokens -------------------------------------------------------------------------

    async def create_tenant_token(self, token: TenantToken) -> TenantToken:
        row = TenantTokenRow(
            id=token.id,
            tenant_id=token.tenant_id,
            created_by=token.created_by,
            collections=list(token.collections),
            filter=token.filter,
            description=token.description,
            expires_at=token.expires_at,
            created_at=token.created_at,
            revoked_at=None,
        )
        async with self._tx() as s:
            s.add(row)
        return token

    async def get_tenant_token(self, token_id: str) -> TenantToken | None:
        async with self._tx() as s:
            row = await s.get(TenantTokenRow, token_id)
            return _token(row) if row else None

    async def list_tenant_tokens(self, tenant_id: str, *, limit: int) -> list[TenantToken]:
        query = (
            select(TenantTokenRow)
            .where(TenantTokenRow.tenant_id == tenant_id, TenantTokenRow.revoked_at.is_(None))
            .where(TenantTokenRow.expires_at > _now())
            .order_by(TenantTokenRow.created_at.desc())
            .limit(limit)
        )
        async with self._tx() as s:
            return [_token(r) for r in (await s.scalars(query)).all()]

    async def revoke_tenant_token(self, tenant_id: str, token_id: str) -> bool:
        query = (
            update(TenantTokenRow)
            .where(TenantTokenRow.id == token_id, TenantTokenRow.tenant_id == tenant_id)
            .where(TenantTokenRow.revoked_at.is_(None))
            .values(revoked_at=_now())
        )
        async with self._tx() as s:
            result = await s.execute(query)
            return bool(getattr(result, "rowcount", 0))

    async def prune_tenant_tokens(self, expired_before: datetime) -> int:
        query = delete(TenantTokenRow).where(TenantTokenRow.expires_at < expired_before)
        async with self._tx() as s:
            result = await s.execute(query)
            return int(getattr(result, "rowcount", 0))

    # -- secrets shared by every process -------------------------------------------------------

    async def signing_secret(self, name: str, make: str) -> str:
        """The secret stored under ``name``; the first caller stores ``make`` (a race between
        processes is settled by the primary key: every process ends up with the same value)."""
        async with self._tx() as s:
            row = await s.get(SigningSecretRow, name)
            if row is not None:
                return row.value
        try:
            async with self._tx() as s:
                s.add(SigningSecretRow(name=name, value=make, created_at=_now()))
        except Conflict:
            pass
        async with self._tx() as s:
            row = await s.get(SigningSecretRow, name)
            if row is None:  # pragma: no cover - just inserted or lost a race to an insert
                raise MetadataUnavailable()
            return row.value

    # -- audit log -----------------------------------------------------------------------------

    async def record_audit(
        self,
        *,
        action: str,
        outcome: str,
        tenant_id: str | None,
        actor: str | None,
        request_id: str | None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        row = AuditEventRow(
            at=_now(),
            tenant_id=tenant_id,
            actor=actor,
            action=action,
            outcome=outcome,
            request_id=request_id,
            detail=detail,
        )
        async with self._tx() as s:
            s.add(row)

    async def list_audit(
        self,
        *,
        tenant_id: str | None,
        limit: int,
        before_id: int | None = None,
        action: str | None = None,
    ) -> list[AuditEvent]:
        """Newest first. ``tenant_id`` None lists every tenant's events (platform admin)."""
        query = select(AuditEventRow)
        if tenant_id is not None:
            query = query.where(AuditEventRow.tenant_id == tenant_id)
        if before_id is not None:
            query = query.where(AuditEventRow.id < before_id)
        if action is not None:
            query = query.where(AuditEventRow.action == action)
        query = query.order_by(AuditEventRow.id.desc()).limit(limit)
        async with self._tx() as s:
            return [_audit(r) for r in (await s.scalars(query)).all()]
