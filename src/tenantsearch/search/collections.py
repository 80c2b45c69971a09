"""Collections: a tenant's named, schema-declared sets of documents."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import structlog

from tenantsearch.auth.rbac import Principal
from tenantsearch.cache.refresh_ahead import RefreshAheadCache, StaleServing
from tenantsearch.errors import Conflict, InvalidInput, NotFound
from tenantsearch.ingest.messages import Message, encode
from tenantsearch.ingest.outbox import TaskPublisher
from tenantsearch.queue.port import QueueUnavailable
from tenantsearch.search.port import CollectionRef, SearchBackend
from tenantsearch.search.schema import NAME_RE, CollectionSchema, SchemaErrors, parse_schema
from tenantsearch.store.records import Collection, Task, TaskKind, TaskOutcome
from tenantsearch.store.repository import MetadataStore

log = structlog.get_logger(__name__)

MAX_COLLECTIONS_PER_TENANT = 1000
COLLECTION_CACHE_SECONDS = 1.0
"""How long a process may keep using a collection record it looked up. A collection deleted by
another process can thus be addressed for up to this long; a write sent to it then fails on its
task ("the collection was deleted") and a search finds nothing."""


def new_id() -> str:
    return uuid.uuid4().hex


def check_name(name: str, what: str = "collection") -> None:
    if not NAME_RE.match(name):
        raise InvalidInput(
            f"a {what} name is 1 to 64 characters: lowercase letters, digits, '_' and '-', "
            "starting with a letter or digit",
            code=f"invalid_{what}_name",
        )


def ref_of(collection: Collection) -> CollectionRef:
    return CollectionRef(
        tenant=collection.tenant_id,
        name=collection.name,
        uid=collection.uid,
        schema=collection.schema,
    )


class CollectionService:
    def __init__(
        self,
        store: MetadataStore,
        backend: SearchBackend,
        publisher: TaskPublisher,
        *,
        stale: StaleServing | None = None,
    ) -> None:
        self._store = store
        self._backend = backend
        self._publisher = publisher
        self._cache: RefreshAheadCache[tuple[str, str], Collection] = RefreshAheadCache(
            COLLECTION_CACHE_SECONDS, stale=stale
        )

    async def get(self, principal: Principal, tenant_id: str, name: str) -> Collection:
        check_name(name)
        collection = None
        if principal.sees_collection(name):
            collection = await self._cache.get(
                (tenant_id, name), lambda: self._store.get_collection(tenant_id, name)
            )
        if collection is None:
            raise NotFound(f"collection {name!r} not found", code="collection_not_found")
        return collection

    async def list(self, principal: Principal, tenant_id: str) -> list[Collection]:
        return [
            c
            for c in await self._store.list_collections(tenant_id)
            if principal.sees_collection(c.name)
        ]

    async def put(
        self, principal: Principal, tenant_id: str, name: str, raw_fields: object
    ) -> tuple[Collection, bool]:
        """Create the collection, or confirm an identical one; returns (collection, created)."""
        check_name(name)
        if not principal.sees_collection(name):
            raise NotFound(f"collection {name!r} not found", code="collection_not_found")
        try:
            schema = parse_schema(raw_fields)
        except SchemaErrors as exc:
            raise InvalidInput(
                "the collection's fields are not valid", errors=exc.errors, code="invalid_schema"
            ) from exc
        existing = await self._store.get_collection(tenant_id, name)
        if existing is not None:
            return self._same_or_conflict(existing, schema), False
        if len(await self._store.list_collections(tenant_id)) >= MAX_COLLECTIONS_PER_TENANT:
            raise Conflict(
                f"a tenant has at most {MAX_COLLECTIONS_PER_TENANT} collections",
                code="too_many_collections",
            )
        uid = new_id()
        # The engine side first: a collection row always has a usable index behind it.
        provisional = Collection(tenant_id, name, uid, schema, datetime.now(UTC), datetime.now(UTC))
        await self._backend.ensure_collection(ref_of(provisional))
        try:
            created = await self._store.create_collection(tenant_id, name, uid, schema)
        except Conflict:
            await self._backend.drop_collection(ref_of(provisional))
            existing = await self._store.get_collection(tenant_id, name)
            if existing is None:
                raise
            return self._same_or_conflict(existing, schema), False
        log.info("collection_created", collection=name, uid=uid)
        return created, True

    @staticmethod
    def _same_or_conflict(existing: Collection, schema: CollectionSchema) -> Collection:
        if existing.schema.as_dict() != schema.as_dict():
            raise Conflict(
                "the collection exists with other fields; changing fields needs a new collection "
                "(delete it and create it again, then re-send the documents)",
                code="schema_conflict",
            )
        return existing

    async def delete(self, principal: Principal, tenant_id: str, name: str) -> Task:
        check_name(name)
        if not principal.sees_collection(name):
            raise NotFound(f"collection {name!r} not found", code="collection_not_found")
        collection = await self._store.delete_collection(tenant_id, name)
        self._cache.pop((tenant_id, name))
        if collection is None:
            raise NotFound(f"collection {name!r} not found", code="collection_not_found")
        task = Task.queued(new_id(), tenant_id, TaskKind.COLLECTION_DELETE, name)
        body = encode(
            Message(
                kind="collection_delete",
                task_id=task.id,
                tenant=tenant_id,
                collection=name,
                uid=collection.uid,
            )
        )
        try:
            await self._publisher.submit(task, lambda _first: body)
        except QueueUnavailable:
            # The collection is already gone for clients; do not leave its data behind. (Should
            # this fail too, the pending message is published later and the indexer drops it.)
            await self._backend.drop_collection(ref_of(collection))
            await self._store.finish_tasks([TaskOutcome(task.id)])
            await self._store.published(task.id)
        log.info("collection_deleted", collection=name, uid=collection.uid, task_id=task.id)
        return task
