"""Contract of the metadata store, run on every SQL database it supports: SQLite (embedded) and
PostgreSQL (production; a fresh database per test on the session's server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from tenantsearch.errors import Conflict
from tenantsearch.search.schema import CollectionSchema, FieldSpec, FieldType
from tenantsearch.store.db import create_engine, migrate
from tenantsearch.store.records import ApiKey, Role, Task, TaskKind, TaskOutcome, TaskStatus
from tenantsearch.store.repository import MetadataStore
from tests.support.services import postgres_database

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def postgres_database_url(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the session's PostgreSQL server, dropped after the test."""
    with postgres_database(postgres_url) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MetadataStore]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}"
    else:
        url = request.getfixturevalue("postgres_database_url")
    engine = create_engine(url)
    await migrate(engine)
    await migrate(engine)  # migrations are idempotent
    store = MetadataStore(engine)
    yield store
    await store.close()


def _task(
    task_id: str, tenant: str = "t1", received: int = 3, idempotency_key: str | None = None
) -> Task:
    return Task(
        id=task_id,
        tenant_id=tenant,
        collection="c",
        kind=TaskKind.DOCUMENTS,
        status=TaskStatus.QUEUED,
        received=received,
        indexed=0,
        failed=0,
        idempotency_key=idempotency_key,
    )


async def test_tenants(store: MetadataStore) -> None:
    await store.create_tenant("t1", "One")
    with pytest.raises(Conflict):
        await store.create_tenant("t1", "Again")
    assert (await store.get_tenant("t1")).name == "One"  # type: ignore[union-attr]
    assert await store.get_tenant("missing") is None
    await store.create_tenant("t2", "Two")
    assert [t.id for t in await store.list_tenants(limit=10)] == ["t1", "t2"]
    assert [t.id for t in await store.list_tenants(limit=10, after="t1")] == ["t2"]
    renamed = await store.update_tenant("t1", name="Uno", status="deleting")
    assert renamed is not None
    assert (renamed.name, renamed.status) == ("Uno", "deleting")
    assert renamed.created_at.tzinfo is not None


async def test_versions_are_unique_and_increasing_under_concurrency(store: MetadataStore) -> None:
    await store.create_tenant("t1", "One")
    firsts = await asyncio.gather(
        *(store.create_task(_task(f"task{i}"), reserve_versions=10) for i in range(20))
    )
    flat = [v for f in firsts for v in range(f, f + 10)]
    assert len(set(flat)) == 200
    assert min(flat) >= 1


async def test_keys_and_collections(store: MetadataStore) -> None:
    await store.create_tenant("t1", "One")
    now = datetime.now(UTC)
    key = ApiKey(
        id="k" * 16,
        tenant_id="t1",
        role=Role.READER,
        secret_hash="h",
        description=None,
        collections=("a", "b"),
        expires_at=now + timedelta(days=1),
        created_at=now,
        last_used_at=None,
    )
    await store.create_key(key)
    got = await store.get_key("k" * 16)
    assert got is not None
    assert got.collections == ("a", "b")
    assert got.role is Role.READER
    await store.touch_key(key.id, now)
    assert (await store.get_key(key.id)).last_used_at is not None  # type: ignore[union-attr]
    assert not await store.delete_key("other-tenant", key.id)
    assert await store.delete_key("t1", key.id)
    assert await store.get_key(key.id) is None

    schema = CollectionSchema({"title": FieldSpec(FieldType.TEXT, "en")})
    await store.create_collection("t1", "c", "uid1", schema)
    with pytest.raises(Conflict):
        await store.create_collection("t1", "c", "uid2", schema)
    got_c = await store.get_collection("t1", "c")
    assert got_c is not None
    assert got_c.schema == schema
    assert (await store.get_collection_by_uid("uid1")) == got_c
    assert await store.delete_collection("t1", "c") == got_c
    assert await store.delete_collection("t1", "c") is None


async def test_task_progress_and_pruning(store: MetadataStore) -> None:
    await store.create_task(_task("a", received=3))
    await store.finish_tasks(
        [TaskOutcome("a", indexed=2, failed=1, errors=[{"id": "x", "message": "m"}])]
    )
    task = await store.get_task("a")
    assert task is not None
    assert (task.status, task.indexed, task.failed) == (TaskStatus.SUCCEEDED, 2, 1)
    assert task.errors == [{"id": "x", "message": "m"}]
    await store.create_task(_task("b", received=1))
    await store.finish_tasks([TaskOutcome("b", failed=1)])
    assert (await store.get_task("b")).status is TaskStatus.FAILED  # type: ignore[union-attr]
    assert await store.prune_tasks(datetime.now(UTC) + timedelta(seconds=1)) == 2
    assert await store.get_task("a") is None


async def test_finishing_tasks_together_keeps_each_outcome_and_a_first_recording(
    store: MetadataStore,
) -> None:
    for task_id, received in (("a", 3), ("b", 2), ("c", 1)):
        await store.create_task(_task(task_id, received=received))
    await store.finish_tasks([TaskOutcome("c", indexed=1)])
    error = {"id": "x", "message": "m"}
    await store.finish_tasks(
        [
            TaskOutcome("b", failed=2, errors=[error, error]),
            TaskOutcome("a", indexed=2, failed=1, errors=[error]),
            TaskOutcome("c", failed=1),  # redelivered after its outcome was recorded
            TaskOutcome("gone", indexed=5),  # pruned meanwhile: skipped
        ]
    )
    got = {t: await store.get_task(t) for t in "abc"}
    assert {t: (g.status, g.indexed, g.failed) for t, g in got.items() if g} == {
        "a": (TaskStatus.SUCCEEDED, 2, 1),
        "b": (TaskStatus.FAILED, 0, 2),
        "c": (TaskStatus.SUCCEEDED, 1, 0),
    }
    assert got["a"] is not None
    assert got["a"].errors == [error]
    assert all(g is not None and g.finished_at is not None for g in got.values())
    await store.finish_tasks([])


async def test_started_tasks_are_processing_until_they_finish(store: MetadataStore) -> None:
    for task_id in ("a", "b", "done"):
        await store.create_task(_task(task_id, received=1))
    await store.finish_tasks([TaskOutcome("done", indexed=1)])
    await store.start_tasks(["b", "a", "done", "gone", "a"])
    a, done = await store.get_task("a"), await store.get_task("done")
    assert a is not None
    assert done is not None
    assert (a.status, a.finished_at) == (TaskStatus.PROCESSING, None)
    assert a.started_at is not None
    assert done.status is TaskStatus.SUCCEEDED  # finished already: left as it was
    # Taken again (a redelivery): still processing, first start kept.
    await store.start_tasks(["a"])
    again = await store.get_task("a")
    assert again is not None
    assert (again.status, again.started_at) == (TaskStatus.PROCESSING, a.started_at)
    await store.finish_tasks([TaskOutcome("a", indexed=1)])
    finished = await store.get_task("a")
    assert finished is not None
    assert (finished.status, finished.started_at) == (TaskStatus.SUCCEEDED, a.started_at)
    await store.start_tasks([])


async def test_a_task_is_recorded_with_its_pending_publish(store: MetadataStore) -> None:
    t0 = datetime.now(UTC)
    lease = t0 + timedelta(seconds=30)
    firsts: list[int] = []

    def body_of(first: int) -> bytes:
        firsts.append(first)
        return f"versions from {first}".encode()

    await store.create_task(_task("before"), reserve_versions=4)  # versions 1-4
    body = await store.create_task_to_publish(
        _task("a"), body_of, documents=3, lease_until=lease, reserve_versions=3
    )
    assert (firsts, body) == ([5], b"versions from 5")  # built from the versions it reserved
    assert await store.get_task("a") is not None
    pending = await store.pending_publish("a")
    assert pending is not None
    assert (pending.tenant_id, pending.documents, pending.body) == ("t1", 3, body)
    assert abs((pending.lease_until - lease).total_seconds()) < 0.001
    # A held lease cannot be claimed, and is not listed as expired.
    assert await store.claim_publish("a", now=t0, lease_until=t0 + timedelta(seconds=60)) is None
    assert await store.expired_publishes(t0, limit=10) == []
    # Once it ended, one claimant wins; the others see the new lease.
    later = lease + timedelta(seconds=1)
    claims = await asyncio.gather(
        *(
            store.claim_publish("a", now=later, lease_until=later + timedelta(seconds=30))
            for _ in range(5)
        )
    )
    won = [c for c in claims if c is not None]
    assert len(won) == 1
    assert won[0].body == body
    assert await store.expired_publishes(later, limit=10) == []
    assert await store.expired_publishes(later + timedelta(seconds=31), limit=10) == ["a"]
    await store.published("a")
    await store.published("a")  # gone already: a no-op
    assert await store.pending_publish("a") is None
    assert await store.claim_publish("a", now=later, lease_until=later) is None
    assert await store.expired_publishes(later + timedelta(days=1), limit=10) == []


async def test_a_released_publish_can_be_claimed_at_once(store: MetadataStore) -> None:
    now = datetime.now(UTC)
    await store.create_task_to_publish(
        _task("a"), lambda _first: b"m", documents=1, lease_until=now + timedelta(seconds=30)
    )
    assert await store.claim_publish("a", now=now, lease_until=now) is None
    await store.release_publish("a")
    await store.release_publish("gone")  # no row: a no-op
    later = datetime.now(UTC) + timedelta(milliseconds=1)
    claimed = await store.claim_publish("a", now=later, lease_until=later + timedelta(seconds=30))
    assert claimed is not None
    assert claimed.body == b"m"


async def test_an_indexer_starting_a_task_ends_its_pending_publish(store: MetadataStore) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    for task_id in ("a", "b"):
        await store.create_task_to_publish(
            _task(task_id), lambda _first: b"m", documents=1, lease_until=past
        )
    await store.start_tasks(["a"])
    assert await store.pending_publish("a") is None
    assert await store.expired_publishes(datetime.now(UTC), limit=10) == ["b"]


async def test_erasing_a_tenant_forgets_its_pending_publishes(store: MetadataStore) -> None:
    await store.create_tenant("t1", "One")
    lease = datetime.now(UTC)
    for task_id in ("a", "erasure"):
        await store.create_task_to_publish(
            _task(task_id), lambda _first: b"m", documents=0, lease_until=lease
        )
    await store.create_task_to_publish(
        _task("other", tenant="t2"), lambda _first: b"m", documents=0, lease_until=lease
    )
    await store.delete_tenant_metadata("t1", keep_task="erasure")
    assert await store.pending_publish("a") is None
    assert await store.pending_publish("erasure") is not None
    assert await store.pending_publish("other") is not None


async def test_the_tombstone_horizon_follows_version_checkpoints(store: MetadataStore) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    hour = timedelta(hours=1)
    assert await store.tombstone_horizon(t0 + 100 * hour) == 0  # no checkpoint yet
    await store.create_task(_task("a"), reserve_versions=10)  # versions 1-10
    await store.checkpoint_versions(t0, keep_after=t0 - hour)
    await store.create_task(_task("b"), reserve_versions=5)  # 11-15
    await store.checkpoint_versions(t0 + hour, keep_after=t0 - hour)
    assert await store.tombstone_horizon(t0 - hour) == 0
    assert await store.tombstone_horizon(t0) == 10
    assert await store.tombstone_horizon(t0 + timedelta(minutes=30)) == 10
    assert await store.tombstone_horizon(t0 + 5 * hour) == 15
    # Checkpoints no later horizon needs are forgotten: those older than the newest one taken
    # at or before keep_after.
    assert await store.checkpoint_versions(t0 + 2 * hour, keep_after=t0 + hour) == 15
    assert await store.tombstone_horizon(t0) == 0
    assert await store.tombstone_horizon(t0 + hour) == 15
    assert await store.tombstone_horizon(t0 + 2 * hour) == 15


async def test_all_collections_lists_every_tenants(store: MetadataStore) -> None:
    await store.create_tenant("t1", "One")
    await store.create_tenant("t2", "Two")
    await store.create_collection("t1", "c", "u1", CollectionSchema({}))
    await store.create_collection("t2", "c", "u2", CollectionSchema({}))
    assert {c.uid for c in await store.all_collections()} >= {"u1", "u2"}


async def test_idempotency_lookup_is_per_tenant(store: MetadataStore) -> None:
    await store.create_task(_task("a", tenant="t1", idempotency_key="k"))
    assert (await store.find_task_by_idempotency_key("t1", "k")).id == "a"  # type: ignore[union-attr]
    assert await store.find_task_by_idempotency_key("t2", "k") is None


async def test_tenant_metadata_erasure_keeps_only_the_named_task(store: MetadataStore) -> None:
    await store.create_tenant("t1", "One")
    await store.create_task(_task("keep"))
    await store.create_task(_task("drop"))
    await store.create_collection("t1", "c", "u", CollectionSchema({}))
    await store.delete_tenant_metadata("t1", keep_task="keep")
    assert await store.get_tenant("t1") is None
    assert await store.get_collection("t1", "c") is None
    assert await store.get_task("keep") is not None
    assert await store.get_task("drop") is None


@pytest.mark.slow
async def test_processes_starting_at_once_migrate_once_on_postgresql(
    postgres_database_url: str,
) -> None:
    """Several processes (engines) starting on an empty PostgreSQL database: one migrates, the
    others wait for it and then have nothing to do. (The embedded SQLite database has a single
    process, so this is PostgreSQL's alone.)"""
    engines = [create_engine(postgres_database_url) for _ in range(4)]
    try:
        await asyncio.gather(*(migrate(engine) for engine in engines))
        async with engines[0].connect() as conn:
            counters = (await conn.execute(text("SELECT count(*) FROM counters"))).scalar_one()
            versions = (
                await conn.execute(text("SELECT version_num FROM alembic_version"))
            ).scalars()
            assert counters == 1  # the initial migration's seed row, inserted once
            assert len(list(versions)) == 1
    finally:
        for engine in engines:
            await engine.dispose()
