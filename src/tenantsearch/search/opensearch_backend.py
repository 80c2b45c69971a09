"""The production SearchBackend: OpenSearch 2.19 through ``opensearchpy.AsyncOpenSearch`` (aiohttp).

Layout (see ``opensearch_mapping`` and ``docs/architecture.md``, "OpenSearch index design"):

- Documents of every collection live in shared indices behind aliases: ``<prefix>-shared-read`` and
  ``<prefix>-shared-write`` point at ``<prefix>-shared-v<N>-000001`` (routed by tenant, so one
  tenant's data sits on one shard). A tenant configured as *dedicated* gets the same layout under
  ``<prefix>-tenant-<tenant>-...`` (not routed: its documents spread over that index's shards).
  The same code path serves both; only the aliases and the routing differ.
- ``<prefix>-registry`` holds one small document per collection uid with its state (active or
  dropped). ``apply`` checks it before and after writing, so a write that races a drop cannot leave
  data behind that the drop missed.

Writes are external-versioned index operations, deletes are versioned tombstone documents (kept,
so "a delete blocks an older put" holds forever, unlike OpenSearch's own delete tombstones, which
are forgotten after ``index.gc_deletes``). Every engine failure is translated here: the service
sees ``BackendUnavailable``, ``BackendError``, ``InvalidCursor`` or ``InvalidInput``, never an
``opensearchpy`` exception or an engine message.
"""

from __future__ import annotations

import asyncio
import base64
import random
import ssl
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp
import orjson
import structlog
from opensearchpy import AsyncHttpConnection, AsyncOpenSearch
from opensearchpy.exceptions import (
    ConnectionError as EngineConnectionError,
)
from opensearchpy.exceptions import (
    ConnectionTimeout,
    OpenSearchException,
    TransportError,
)
from opensearchpy.serializer import JSONSerializer

from tenantsearch.errors import (
    BackendError,
    FieldError,
    InvalidInput,
    Misconfigured,
    TenantSearchError,
)
from tenantsearch.search.opensearch_mapping import (
    ADDED_FIELDS,
    COLLECTION_FIELD,
    DELETED_FIELD,
    MAPPING_VERSION,
    REGISTRY_STATE_ACTIVE,
    REGISTRY_STATE_DROPPED,
    SIZE_FIELD,
    TOMBSTONE_VERSION_FIELD,
    Rejected,
    check_name_part,
    check_prefix,
    docs_template,
    engine_document,
    engine_id,
    field_slots,
    registry_index_body,
    tombstone,
)
from tenantsearch.search.opensearch_query import (
    MAX_RESULT_WINDOW,
    AfterCursor,
    OffsetCursor,
    Scope,
    SearchPlan,
    build_search,
    encode_cursor,
    live_query,
    scope_filters,
)
from tenantsearch.search.port import BackendUnavailable, CollectionRef, CollectionStats
from tenantsearch.search.query import Hit, SearchQuery, SearchResult, WriteOp, WriteResult
from tenantsearch.search.schema import INT64_MAX

log = structlog.get_logger(__name__)

T = TypeVar("T")
RefreshMode = Literal["true", "wait_for"]

PURGE_CHUNK = 1000
"""Collections per tombstone purge request (a terms filter on their uids)."""
BULK_MAX_BYTES = 16 * 1024 * 1024
"""Largest ``_bulk`` payload (OpenSearch refuses requests over ``http.max_content_length``,
100 MB by default, and bulks of 5-15 MB index best)."""
RETRY_STATUSES = frozenset({429, 502, 503, 504})
"""HTTP statuses (of a whole request or of one bulk item) that mean "try again later"."""
_MISSING = "the collection does not exist"
_OVERLOADED = "the search engine is busy; the write will be retried"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter, for transient engine failures."""

    attempts: int = 4
    """Tries in all (1 = no retry)."""
    base_seconds: float = 0.05
    max_seconds: float = 2.0

    def delay(self, attempt: int) -> float:
        """The pause after the ``attempt``-th failed try (1-based): half fixed, half random."""
        ceiling = min(self.max_seconds, self.base_seconds * 2.0 ** (attempt - 1))
        jitter: float = random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto
        return ceiling / 2 + jitter


@dataclass(frozen=True)
class Placement:
    """Where one tenant's documents live: an alias pair over versioned indices, and whether
    documents are routed by tenant (shared indices) or spread over the shards (dedicated)."""

    name: str
    read_alias: str
    write_alias: str
    first_index: str
    routed: bool

    def routing(self, tenant: str) -> str | None:
        return tenant if self.routed else None


class _OrjsonSerializer(JSONSerializer):
    """opensearch-py's JSON serializer on orjson (several times faster for bulk bodies and hits)."""

    def dumps(self, data: Any) -> Any:
        if isinstance(data, str | bytes):
            return data
        return orjson.dumps(data).decode()

    def loads(self, s: str) -> Any:
        return orjson.loads(s)


def _connection_failure(exc: EngineConnectionError) -> str:
    """Why a connection failed, for the operator's log (clients are only told the engine cannot
    be reached): a certificate the service does not trust, or another TLS failure, is told apart
    from an engine that is down, since it takes an operator to mend it."""
    cause = exc.info if isinstance(exc.info, BaseException) else exc.__cause__
    if isinstance(cause, aiohttp.ClientConnectorCertificateError):
        return "tls_certificate_not_trusted"
    if isinstance(cause, aiohttp.ClientSSLError):
        return "tls_handshake_failed"
    return "connection_failed"


def _error_type(exc: TransportError) -> str:
    """The engine's error type (for logs only: engine messages can quote document content)."""
    info = exc.info
    if isinstance(info, dict):
        error = info.get("error")
        if isinstance(error, dict):
            causes = error.get("root_cause")
            if isinstance(causes, list) and causes and isinstance(causes[0], dict):
                return str(causes[0].get("type", error.get("type", "unknown")))
            return str(error.get("type", "unknown"))
    return "unknown"


def _item_error_type(item: Mapping[str, Any]) -> str:
    error = item.get("error")
    if isinstance(error, dict):
        return str(error.get("type", "unknown"))
    return "unknown"


def classify_item(doc_id: str, item: Mapping[str, Any]) -> WriteResult:
    """The outcome of one ``_bulk`` response item (its status and error type)."""
    status = item.get("status")
    if not isinstance(status, int):
        return WriteResult(doc_id, "retryable", "the search engine gave no status")
    if 200 <= status < 300:
        return WriteResult(doc_id, "applied")
    if status == 409:
        return WriteResult(doc_id, "stale")
    if status in RETRY_STATUSES or status >= 500 or status in (404, 408):
        return WriteResult(doc_id, "retryable", _OVERLOADED)
    error_type = _item_error_type(item)
    if error_type == "cluster_block_exception":
        # A write block (index.blocks.write, read_only_allow_delete) is an operator's or the
        # disk watermark's, and is lifted again: wait it out, never fail accepted writes for it.
        return WriteResult(doc_id, "retryable", "the search engine blocks writes for now")
    log.warning("opensearch_document_refused", status=status, error_type=error_type)
    if error_type in ("mapper_parsing_exception", "document_parsing_exception"):
        return WriteResult(doc_id, "permanent", "a field value was refused by the search engine")
    return WriteResult(doc_id, "permanent", "the search engine refused the document")


def require_every_shard(response: Any, action: str) -> None:
    """Refuse a partial answer: with ``_shards.failed`` above 0, some shard had no copy that
    answered, and its documents are missing from hits, totals and facets alike (an erasure that
    looked a tenant's collections up would miss some). The caller gets 503 and retries."""
    shards = response.get("_shards") if isinstance(response, dict) else None
    failed = shards.get("failed", 0) if isinstance(shards, dict) else 0
    if isinstance(failed, int) and failed > 0:
        log.warning("opensearch_partial_answer", action=action, failed_shards=failed)
        raise BackendUnavailable("the search engine could not read every shard; retry shortly")


class OpenSearchBackend:
    """SearchBackend on an OpenSearch cluster (see the module docstring for the layout).

    ``hosts`` are URLs (``https://search-1:9200``). ``pool_size`` is the number of connections
    kept per host; ``timeout_seconds`` bounds every request except drops, which may run up to
    ``drop_timeout_seconds``. ``dedicated_tenants`` get their own indices. ``refresh`` is how
    ``apply`` makes its writes visible before it returns: ``"true"`` refreshes the touched shards
    at once (measured faster for the indexer's batches), ``"wait_for"`` waits for the next
    scheduled refresh (fewer, larger segments when many writers share an index).
    """

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        index_prefix: str = "ts",
        username: str | None = None,
        password: str | None = None,
        api_key: str | None = None,
        ca_file: Path | None = None,
        verify_certs: bool = True,
        timeout_seconds: float = 10.0,
        pool_size: int = 10,
        shards: int = 1,
        replicas: int = 1,
        dedicated_tenants: Collection[str] = (),
        retry: RetryPolicy | None = None,
        refresh: RefreshMode = "true",
        drop_timeout_seconds: float = 600.0,
    ) -> None:
        if not hosts:
            raise ValueError("at least one OpenSearch URL is needed")
        if (username is None) != (password is None):
            raise ValueError("give both an OpenSearch username and password, or neither")
        if api_key is not None and username is not None:
            raise ValueError("give an OpenSearch API key or a username and password, not both")
        if pool_size < 1 or timeout_seconds <= 0 or shards < 1 or replicas < 0:
            raise ValueError("pool size, timeout and shards must be positive, replicas >= 0")
        self._hosts = list(hosts)
        self._prefix = check_prefix(index_prefix)
        self._username = username
        self._password = password
        self._api_key = api_key
        self._ca_file = ca_file
        self._verify_certs = verify_certs
        self._timeout = timeout_seconds
        self._pool_size = pool_size
        self._shards = shards
        self._replicas = replicas
        self._retry = retry or RetryPolicy()
        self._refresh = refresh
        self._drop_timeout = drop_timeout_seconds
        self._shared = self._make_placement("shared", routed=True)
        self._dedicated = {
            tenant: self._make_placement(f"tenant-{check_name_part(tenant)}", routed=False)
            for tenant in dedicated_tenants
        }
        self._registry_alias = f"{self._prefix}-registry"
        self._registry_index = f"{self._prefix}-registry-v{MAPPING_VERSION}"
        self._client: AsyncOpenSearch | None = None

    def _make_placement(self, name: str, *, routed: bool) -> Placement:
        base = f"{self._prefix}-{name}"
        return Placement(
            name=name,
            read_alias=f"{base}-read",
            write_alias=f"{base}-write",
            first_index=f"{base}-v{MAPPING_VERSION}-000001",
            routed=routed,
        )

    def placement(self, tenant: str) -> Placement:
        """The placement of ``tenant``'s documents (its dedicated indices, or the shared ones)."""
        return self._dedicated.get(tenant, self._shared)

    def _placements_of(self, tenant: str) -> list[Placement]:
        """Every placement that may hold ``tenant``'s data (a tenant moved to a dedicated index
        may have left documents in the shared one)."""
        dedicated = self._dedicated.get(tenant)
        return [self._shared] if dedicated is None else [dedicated, self._shared]

    # -- lifecycle ------------------------------------------------------------------------------

    def _build_client(self) -> AsyncOpenSearch:
        headers: dict[str, str] = {}
        if self._api_key is not None:
            headers["Authorization"] = f"ApiKey {self._api_key}"
        elif self._username is not None:
            # Sent as a header rather than opensearch-py's http_auth=(user, password), which it
            # turns into aiohttp.BasicAuth + auth=, deprecated in aiohttp 3.14 and gone in 4.0
            # (and where DeprecationWarnings are errors, every request then fails).
            pair = f"{self._username}:{self._password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        ssl_context = None
        if any(h.startswith("https:") for h in self._hosts):
            ssl_context = ssl.create_default_context(
                cafile=str(self._ca_file) if self._ca_file else None
            )
            if not self._verify_certs:
                ssl_context.check_hostname = False
                ssl_context.verify_mode = ssl.CERT_NONE
        return AsyncOpenSearch(
            hosts=self._hosts,
            connection_class=AsyncHttpConnection,
            headers=headers or None,
            # All TLS options are in the context (opensearch-py ignores its own then).
            ssl_context=ssl_context,
            maxsize=self._pool_size,
            timeout=self._timeout,
            # Retries (with backoff) are ours: see _request.
            max_retries=0,
            retry_on_timeout=False,
            serializer=_OrjsonSerializer(),
            http_compress=False,
        )

    def _configuration_problem(self, exc: Exception) -> str:
        """What is wrong with the client's settings, for the log of a start that cannot work."""
        if self._ca_file is not None and isinstance(exc, OSError):
            if isinstance(exc, ssl.SSLError):
                return f"the OpenSearch CA file {self._ca_file} holds no usable certificate"
            return f"the OpenSearch CA file {self._ca_file} cannot be read ({exc.strerror})"
        return f"the search engine client cannot be configured: {exc}"

    @property
    def _os(self) -> AsyncOpenSearch:
        if self._client is None:
            raise BackendUnavailable("the search backend is not started")
        return self._client

    async def start(self) -> None:
        """Create the index template, the indices and their aliases unless they exist.

        Safe when several processes start at once: the template is overwritten with the same
        body, and an index another process created first is taken as it is.
        """
        if self._client is None:
            try:
                self._client = self._build_client()
            except (OpenSearchException, ValueError, OSError) as exc:
                raise Misconfigured(self._configuration_problem(exc)) from exc
        try:
            await self._create_layout()
        except BaseException:
            await self.close()  # no HTTP session left open by a start that failed
            raise

    async def _create_layout(self) -> None:
        patterns = [
            f"{self._prefix}-shared-v{MAPPING_VERSION}-*",
            f"{self._prefix}-tenant-*-v{MAPPING_VERSION}-*",
        ]
        template = docs_template(patterns, shards=self._shards, replicas=self._replicas)
        await self._request(
            "create the index template",
            lambda: self._os.indices.put_index_template(
                name=f"{self._prefix}-docs-v{MAPPING_VERSION}", body=template
            ),
        )
        for placement in [self._shared, *self._dedicated.values()]:
            await self._ensure_index(
                placement.read_alias,
                placement.first_index,
                {
                    "aliases": {
                        placement.read_alias: {},
                        placement.write_alias: {"is_write_index": True},
                    }
                },
            )
        await self._ensure_index(
            self._registry_alias,
            self._registry_index,
            registry_index_body(replicas=self._replicas, aliases={self._registry_alias: {}}),
        )
        for placement in [self._shared, *self._dedicated.values()]:
            await self._ensure_added_fields(placement)

    async def _ensure_added_fields(self, placement: Placement) -> None:
        """Add ``_size`` and ``_tomb_version`` to indices created before they existed (the
        mapping is strict, so their writes would be refused). Putting the same fields again
        changes nothing, so this runs at every start, on every index behind the placement's
        alias."""
        properties = {name: dict(mapping) for name, mapping in ADDED_FIELDS.items()}
        await self._request(
            "update the mapping",
            lambda: self._os.indices.put_mapping(
                index=placement.read_alias, body={"properties": properties}
            ),
        )

    async def _ensure_index(self, alias: str, index: str, body: dict[str, Any]) -> None:
        exists = await self._request(
            "look up the indices", lambda: self._os.indices.exists_alias(name=alias, ignore=404)
        )
        if exists:
            return
        response = await self._request(
            "create the indices",
            lambda: self._os.indices.create(index=index, body=body, ignore=400),
        )
        error = response.get("error") if isinstance(response, dict) else None
        if isinstance(error, dict) and error.get("type") != "resource_already_exists_exception":
            log.error("opensearch_index_create_failed", index=index, error_type=error.get("type"))
            raise BackendError("the search indices could not be created")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def ping(self) -> None:
        aliases = ",".join(
            [p.read_alias for p in (self._shared, *self._dedicated.values())]
            + [self._registry_alias]
        )
        health = await self._request(
            "check its health",
            # Health waits (here at most 2 s) for a missing index to appear, then answers 408.
            lambda: self._os.cluster.health(
                index=aliases,
                params={"timeout": "2s", "request_timeout": self._timeout},
                ignore=408,
            ),
        )
        if not isinstance(health, dict) or health.get("status") not in ("green", "yellow"):
            raise BackendUnavailable("the search engine's indices are not available")

    # -- requests and errors --------------------------------------------------------------------

    async def _request(self, action: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one engine request with bounded retries on transient failures; translate errors.

        Connection errors and 429/502/503/504 are retried with backoff. A timeout is not: the
        request may still be running in the engine, which is most likely overloaded, and a
        search should fail within about one timeout, not several.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except ConnectionTimeout as exc:
                failure: Exception = exc
                transient, reason, cause = False, "timed out", "timeout"
            except EngineConnectionError as exc:
                failure, transient, reason = exc, True, "cannot be reached"
                cause = _connection_failure(exc)
            except TransportError as exc:
                if exc.status_code not in RETRY_STATUSES:
                    raise self._translate(exc, action) from exc
                failure, transient, reason = exc, True, "is overloaded"
                cause = f"http_{exc.status_code}"
            except OpenSearchException as exc:
                raise BackendError(f"the search engine failed to {action}") from exc
            if not transient or attempt >= self._retry.attempts:
                log.warning(
                    "opensearch_unavailable",
                    action=action,
                    attempts=attempt,
                    error=type(failure).__name__,
                    reason=cause,
                )
                raise BackendUnavailable(
                    f"the search engine {reason} (trying to {action})"
                ) from failure
            await asyncio.sleep(self._retry.delay(attempt))

    @staticmethod
    def _translate(exc: TransportError, action: str) -> TenantSearchError:
        status = exc.status_code
        error_type = _error_type(exc)
        log.warning("opensearch_error", action=action, status=status, error_type=error_type)
        if status in (401, 403):
            return BackendUnavailable("the search engine refused the service's credentials")
        if status == 404:
            return BackendUnavailable("the search indices are missing")
        if status == 400 and error_type in ("too_many_clauses", "too_many_nested_clauses"):
            return InvalidInput(
                "the search has too many words for this collection",
                errors=[FieldError("/q", "too many words")],
            )
        return BackendError(f"the search engine failed to {action}")

    # -- collections ----------------------------------------------------------------------------

    async def ensure_collection(self, ref: CollectionRef) -> None:
        await self._request(
            "register the collection",
            lambda: self._os.index(
                index=self._registry_alias,
                id=ref.uid,
                require_alias="true",
                body={
                    "tenant": ref.tenant,
                    "name": ref.name,
                    "state": REGISTRY_STATE_ACTIVE,
                    "schema": ref.schema.as_dict(),
                },
            ),
        )

    async def _is_active(self, ref: CollectionRef) -> bool:
        """Whether ``ref`` is registered and not dropped (a realtime read, no refresh needed)."""
        found = await self._request(
            "look up the collection",
            lambda: self._os.get(index=self._registry_alias, id=ref.uid, ignore=404),
        )
        if not isinstance(found, dict) or "error" in found:
            raise BackendUnavailable("the collection registry is missing")
        source = found.get("_source") if found.get("found") else None
        return (
            isinstance(source, dict)
            and source.get("state") == REGISTRY_STATE_ACTIVE
            and source.get("tenant") == ref.tenant
        )

    async def _mark_dropped(self, uids: Sequence[str]) -> None:
        if not uids:
            return
        lines: list[bytes] = []
        for uid in uids:
            # The marker keeps no tenant id or name: after an erasure only the uid remains.
            lines.append(orjson.dumps({"index": {"_id": uid}}))
            lines.append(orjson.dumps({"state": REGISTRY_STATE_DROPPED}))
        body = b"\n".join(lines) + b"\n"
        response = await self._request(
            "drop the collection",
            lambda: self._os.bulk(
                body=body, index=self._registry_alias, require_alias="true", refresh="true"
            ),
        )
        if response.get("errors"):
            raise BackendUnavailable("the search engine could not record the drop")

    async def _delete_by_query(self, tenant: str, query: dict[str, Any]) -> None:
        for placement in self._placements_of(tenant):
            await self._delete_in(placement, tenant, query)

    async def _delete_in(
        self, placement: Placement, tenant: str | None, query: dict[str, Any]
    ) -> int:
        """Delete what ``query`` matches behind the placement (routed to ``tenant``'s shard, or
        on every shard for None); how many were deleted."""
        params: dict[str, Any] = {
            "conflicts": "proceed",
            "refresh": "true",
            "wait_for_completion": "true",
            "request_timeout": self._drop_timeout,
            **(self._routing_params(placement, tenant) if tenant is not None else {}),
        }
        response = await self._request(
            "drop data",
            lambda: self._os.delete_by_query(
                index=placement.read_alias, body={"query": query}, params=params
            ),
        )
        if response.get("failures") or response.get("timed_out"):
            log.warning(
                "opensearch_drop_incomplete",
                failures=len(response.get("failures") or []),
                timed_out=bool(response.get("timed_out")),
            )
            raise BackendUnavailable("the search engine could not drop all data; retry")
        deleted = response.get("deleted")
        return deleted if isinstance(deleted, int) else 0

    async def drop_collection(self, ref: CollectionRef) -> None:
        await self._mark_dropped([ref.uid])
        await self._delete_by_query(
            ref.tenant, {"bool": {"filter": scope_filters(Scope(ref.tenant, ref.uid))}}
        )

    async def drop_tenant(self, tenant: str) -> None:
        await self._request(
            "drop data", lambda: self._os.indices.refresh(index=self._registry_alias)
        )
        found = await self._request(
            "drop data",
            lambda: self._os.search(
                index=self._registry_alias,
                body={
                    "query": {"term": {"tenant": tenant}},
                    "size": MAX_RESULT_WINDOW,
                    "_source": False,
                },
            ),
        )
        require_every_shard(found, "drop data")
        await self._mark_dropped([hit["_id"] for hit in found["hits"]["hits"]])
        await self._delete_by_query(tenant, {"term": {"_tenant": tenant}})

    # -- writes ---------------------------------------------------------------------------------

    async def apply(self, ref: CollectionRef, ops: Sequence[WriteOp]) -> list[WriteResult]:
        ops = list(ops)
        if not ops:
            return []
        if not await self._is_active(ref):
            return [WriteResult(op.id, "permanent", _MISSING) for op in ops]
        results: list[WriteResult | None] = [None] * len(ops)
        bodies = self._choose(ref, ops, results)
        placement = self.placement(ref.tenant)

        pending = sorted(bodies)
        attempt = 0
        while pending:
            attempt += 1
            written = await self._write(placement, ref, [(ops[i], bodies[i]) for i in pending])
            retry: list[int] = []
            for i, result in zip(pending, written, strict=True):
                results[i] = result
                if result.outcome == "retryable":
                    retry.append(i)
            if not retry or attempt >= self._retry.attempts:
                break
            # Ops the engine turned away (429, a shard not available) get a few more tries
            # here before they go back to the indexer as retryable.
            await asyncio.sleep(self._retry.delay(attempt))
            pending = retry

        applied = [i for i, r in enumerate(results) if r is not None and r.outcome == "applied"]
        if applied and not await self._is_active(ref):
            # A drop ran while this batch was written and may have missed it: remove it again.
            await self._bulk_delete(placement, ref, [ops[i].id for i in applied])
            for i in applied:
                results[i] = WriteResult(ops[i].id, "permanent", _MISSING)
        return [
            r if r is not None else WriteResult(op.id, "retryable", "the op was not processed")
            for op, r in zip(ops, results, strict=True)
        ]

    @staticmethod
    def _choose(
        ref: CollectionRef, ops: list[WriteOp], results: list[WriteResult | None]
    ) -> dict[int, dict[str, Any]]:
        """Engine bodies of the ops worth sending: per id, the newest op the schema accepts.

        Older ops of the same id in the batch are stale whatever is stored; ops the schema refuses
        are permanent (so a refused newer op does not hide an older valid one).
        """
        slots = field_slots(ref.schema)
        by_id: dict[str, list[int]] = {}
        for i, op in enumerate(ops):
            if isinstance(op.version, int) and 0 <= op.version <= INT64_MAX:
                by_id.setdefault(op.id, []).append(i)
            else:
                message = "the version must be a non-negative 64-bit integer"
                results[i] = WriteResult(op.id, "permanent", message)
        bodies: dict[int, dict[str, Any]] = {}
        for doc_id, indexes in by_id.items():
            chosen = False
            for i in sorted(indexes, key=lambda i: -ops[i].version):
                if chosen:
                    results[i] = WriteResult(doc_id, "stale")
                    continue
                document = ops[i].document
                try:
                    bodies[i] = (
                        tombstone(ref.tenant, ref.uid, doc_id, ops[i].version)
                        if document is None
                        else engine_document(
                            ref.tenant, ref.uid, doc_id, document, ref.schema, slots
                        )
                    )
                except Rejected as exc:
                    results[i] = WriteResult(doc_id, "permanent", str(exc))
                    continue
                chosen = True
        return bodies

    async def _write(
        self,
        placement: Placement,
        ref: CollectionRef,
        ops: Sequence[tuple[WriteOp, dict[str, Any]]],
    ) -> list[WriteResult]:
        """External-versioned index operations: one ``_bulk`` request, or one per
        ``BULK_MAX_BYTES`` of payload for very large batches; one result per op."""
        if not ops:
            return []
        routing = placement.routing(ref.tenant)
        chunks: list[tuple[list[bytes], list[str]]] = [([], [])]
        size = 0
        for op, body in ops:
            action: dict[str, Any] = {
                "_id": engine_id(ref.uid, op.id),
                "version": op.version,
                "version_type": "external",
            }
            if routing is not None:
                action["routing"] = routing
            lines = orjson.dumps({"index": action}) + b"\n" + orjson.dumps(body) + b"\n"
            if chunks[-1][1] and size + len(lines) > BULK_MAX_BYTES:
                chunks.append(([], []))
                size = 0
            chunks[-1][0].append(lines)
            chunks[-1][1].append(op.id)
            size += len(lines)

        results: list[WriteResult] = []
        unavailable: str | None = None
        for parts, ids in chunks:
            if unavailable is None:
                try:
                    items = await self._bulk(placement, b"".join(parts), len(ids))
                except BackendUnavailable as exc:
                    # Overload or a lost connection, after retries: every op may succeed later.
                    unavailable = exc.detail
                else:
                    results.extend(
                        classify_item(i, item) for i, item in zip(ids, items, strict=True)
                    )
                    continue
            results.extend(WriteResult(i, "retryable", unavailable) for i in ids)
        return results

    async def _bulk(self, placement: Placement, payload: bytes, count: int) -> list[dict[str, Any]]:
        response = await self._request(
            "write documents",
            lambda: self._os.bulk(
                body=payload,
                index=placement.write_alias,
                # Never create an index by accident: writes go through the alias only.
                require_alias="true",
                refresh=self._refresh,
                filter_path="errors,items.*.status,items.*.error.type",
            ),
        )
        items = response.get("items") if isinstance(response, dict) else None
        if not isinstance(items, list) or len(items) != count:
            raise BackendError("the search engine gave an unexpected answer to a write")
        return [next(iter(item.values())) for item in items]

    async def _bulk_delete(self, placement: Placement, ref: CollectionRef, ids: list[str]) -> None:
        routing = placement.routing(ref.tenant)
        lines = []
        for doc_id in ids:
            action: dict[str, Any] = {"_id": engine_id(ref.uid, doc_id)}
            if routing is not None:
                action["routing"] = routing
            lines.append(orjson.dumps({"delete": action}))
        payload = b"\n".join(lines) + b"\n"
        await self._request(
            "drop data",
            lambda: self._os.bulk(
                body=payload, index=placement.write_alias, require_alias="true", refresh="true"
            ),
        )

    async def purge_tombstones(self, refs: Sequence[CollectionRef], through_version: int) -> int:
        """One ``_delete_by_query`` per placement and 1,000 collections: tombstones of those
        collections whose ``_tomb_version`` is at or below ``through_version``."""
        by_placement: dict[str, tuple[Placement, list[str]]] = {}
        for ref in refs:
            placement = self.placement(ref.tenant)
            by_placement.setdefault(placement.read_alias, (placement, []))[1].append(ref.uid)
        purged = 0
        for placement, uids in by_placement.values():
            for start in range(0, len(uids), PURGE_CHUNK):
                query = {
                    "bool": {
                        "filter": [
                            {"terms": {COLLECTION_FIELD: uids[start : start + PURGE_CHUNK]}},
                            {"term": {DELETED_FIELD: True}},
                            {"range": {TOMBSTONE_VERSION_FIELD: {"lte": through_version}}},
                        ]
                    }
                }
                purged += await self._delete_in(placement, None, query)
        return purged

    # -- reads ----------------------------------------------------------------------------------

    @staticmethod
    def _routing_params(placement: Placement, tenant: str) -> dict[str, Any]:
        routing = placement.routing(tenant)
        return {} if routing is None else {"routing": routing}

    async def get(self, ref: CollectionRef, doc_id: str) -> dict[str, Any] | None:
        placement = self.placement(ref.tenant)
        params = self._routing_params(placement, ref.tenant)
        found = await self._request(
            "read a document",
            lambda: self._os.get(
                index=placement.read_alias,
                id=engine_id(ref.uid, doc_id),
                params={**params, "_source_includes": "doc,_tenant,_collection,_deleted"},
                ignore=404,
            ),
        )
        if not isinstance(found, dict) or "error" in found:
            raise BackendUnavailable("the search indices are missing")
        if not found.get("found"):
            return None
        source = found.get("_source")
        if (
            not isinstance(source, dict)
            or source.get("_deleted")
            or source.get("_tenant") != ref.tenant
            or source.get("_collection") != ref.uid
        ):
            return None
        document = source.get("doc", {})
        if not isinstance(document, dict):
            raise BackendError("a stored document is not an object")
        return document

    async def count(self, ref: CollectionRef) -> int:
        placement = self.placement(ref.tenant)
        response = await self._request(
            "count documents",
            lambda: self._os.count(
                index=placement.read_alias,
                body={"query": live_query(Scope(ref.tenant, ref.uid))},
                params=self._routing_params(placement, ref.tenant),
            ),
        )
        require_every_shard(response, "count")
        return int(response["count"])

    async def stats(self, ref: CollectionRef) -> CollectionStats:
        placement = self.placement(ref.tenant)
        response = await self._request(
            "measure the collection",
            lambda: self._os.search(
                index=placement.read_alias,
                body={
                    "size": 0,
                    "track_total_hits": True,
                    "query": live_query(Scope(ref.tenant, ref.uid)),
                    "aggs": {"bytes": {"sum": {"field": SIZE_FIELD}}},
                },
                params=self._routing_params(placement, ref.tenant),
            ),
        )
        require_every_shard(response, "stats")
        try:
            documents = int(response["hits"]["total"]["value"])
            # A double: exact up to 2**53 bytes. Documents written before _size existed add 0.
            stored = round(float(response["aggregations"]["bytes"]["value"] or 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError("the search engine gave an unexpected answer") from exc
        return CollectionStats(documents=documents, stored_bytes=stored)

    async def search(self, ref: CollectionRef, query: SearchQuery) -> SearchResult:
        plan = build_search(Scope(ref.tenant, ref.uid), ref.schema, field_slots(ref.schema), query)
        placement = self.placement(ref.tenant)
        params = self._routing_params(placement, ref.tenant)
        # The same shard copies answer every page of one collection's searches, so replicas'
        # slightly different statistics cannot reorder hits between pages.
        params["preference"] = ref.uid
        response = await self._request(
            "search",
            lambda: self._os.search(index=placement.read_alias, body=plan.body, params=params),
        )
        require_every_shard(response, "search")
        try:
            return self._result(plan, query, response)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BackendError("the search engine gave an unexpected answer") from exc

    @staticmethod
    def _result(plan: SearchPlan, query: SearchQuery, response: dict[str, Any]) -> SearchResult:
        hits_part = response["hits"]
        total = int(hits_part["total"]["value"])
        raw_hits: list[dict[str, Any]] = hits_part["hits"]
        hits: list[Hit] = []
        for raw in raw_hits:
            doc_id = str(raw["sort"][-1])
            document = (raw.get("_source") or {}).get("doc", {})
            highlights: dict[str, list[str]] | None = None
            if query.highlight:
                highlights = {
                    plan.highlight_names[path]: list(fragments)
                    for path, fragments in (raw.get("highlight") or {}).items()
                    if path in plan.highlight_names
                }
            score = None if plan.sort_spec is not None else float(raw.get("_score") or 0.0)
            hits.append(
                Hit(
                    id=doc_id,
                    score=score,
                    document=document,
                    highlights=highlights,
                )
            )

        facets: dict[str, dict[str, int]] = {name: {} for name in query.facets}
        aggregations = response.get("aggregations") or {}
        for agg, name in plan.facet_names.items():
            buckets = aggregations[agg]["buckets"]
            facets[name] = {str(b["key"]): int(b["doc_count"]) for b in buckets}

        next_after: str | None = None
        if hits:
            if plan.sort_spec is None:
                offset = plan.cursor.offset if isinstance(plan.cursor, OffsetCursor) else 0
                end = offset + len(hits)
                if end < total and end < MAX_RESULT_WINDOW:
                    next_after = encode_cursor(OffsetCursor(end), plan.digest)
            else:
                seen = (plan.cursor.seen if isinstance(plan.cursor, AfterCursor) else 0) + len(hits)
                if seen < total:
                    value, last_id = raw_hits[-1]["sort"]
                    next_after = encode_cursor(AfterCursor(value, str(last_id), seen), plan.digest)
        return SearchResult(hits=hits, total=total, facets=facets, next_after=next_after)
