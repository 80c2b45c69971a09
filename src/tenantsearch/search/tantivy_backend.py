"""The embedded SearchBackend: one tantivy index directory per collection, ``root/<tenant>/<uid>/``.

Each index holds the collection's declared fields plus six hidden ones:

- ``_id`` (raw text, stored): the document id; deletes and version look-ups go by it.
- ``_idh`` (integer, fast): a 64-bit hash of the id, so a version look-up of a whole batch reads
  ids from a numeric column (ordering by or reading a text fast field is ~20x slower).
- ``_version`` (integer, fast): the version of the stored document or tombstone.
- ``_deleted`` (boolean): set only on delete tombstones; every read excludes them.
- ``_source`` (stored bytes): the document exactly as it was sent (orjson), returned by ``get``
  and in hits. Text fields are therefore not stored a second time: highlights are cut from the
  source.
- ``_size`` (integer, fast): the byte length of ``_source`` (puts only), summed by ``stats``. An
  index created before this field existed is opened with its own schema (without it) and its
  ``stored_bytes`` count as 0 (logged when the index is opened); new collections get the field.

Dates are indexed as integer microseconds since the epoch, not as tantivy dates: tantivy-py's
date fields keep only whole seconds, so ``gt 12:00:00.1`` would not match ``12:00:00.5``.
Delete tombstones are kept (they carry the version that makes a late older put stale) until
``purge_tombstones`` removes those at or below the indexer's horizon.
A multi-valued field sorts by its first value as sent (tantivy's choice).

Ordering and paging: a reader is configured with the ``Manual`` reload policy and reloaded only by
``apply`` after its commit, so the segment set a search sees changes only when data changes (not
when a background merge finishes). For a given segment set tantivy orders hits by the sort value
(or score) and breaks ties by document address, the same way for every call, so the cursor can be
a plain offset and paging never skips or repeats a hit while the data is unchanged.

Every tantivy call blocks (most release the GIL), so each port method runs its work in a worker
thread; writes to one index are serialized by that index's lock, and one IndexWriter is kept per
recently written index (at most ``max_open_writers``; each owns threads).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import html
import logging
import os
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import tantivy

from tenantsearch.errors import BackendError, FieldError, InvalidInput, TenantSearchError
from tenantsearch.search import analyzers
from tenantsearch.search.port import (
    BackendUnavailable,
    CollectionRef,
    CollectionStats,
    InvalidCursor,
)
from tenantsearch.search.query import (
    And,
    Eq,
    Filter,
    Hit,
    In,
    Matching,
    Not,
    Or,
    Range,
    SearchQuery,
    SearchResult,
    WriteOp,
    WriteResult,
)
from tenantsearch.search.schema import (
    FILTERABLE,
    INT64_MAX,
    INT64_MIN,
    MAX_KEYWORD_LENGTH,
    NAME_RE,
    RESERVED_FIELDS,
    CollectionSchema,
    FieldSpec,
    FieldType,
    coerce_value,
    field_values,
    parse_date,
)

ID_FIELD = "_id"
ID_HASH_FIELD = "_idh"
VERSION_FIELD = "_version"
DELETED_FIELD = "_deleted"
SOURCE_FIELD = "_source"
SIZE_FIELD = "_size"

MAX_LIMIT = 10_000
"""Largest page a search may ask for (tantivy allocates for ``offset + limit`` hits up front)."""
HIGHLIGHT_FRAGMENT_CHARS = 150
DEFAULT_MAX_OPEN_WRITERS = 8
MIN_WRITER_HEAP_PER_THREAD = 20_000_000
"""tantivy refuses less than 15 MB per indexing thread; keep a margin."""

_UID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_TRASH_DIR = ".trash"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_CURSOR_VERSION = 1
_MISSING = "the collection does not exist"
_log = logging.getLogger(__name__)


class _Rejected(Exception):
    """A document or op the engine will never accept (reported as ``permanent``)."""


@dataclass(eq=False)
class _Collection:
    uid: str
    tenant: str
    path: Path
    schema: CollectionSchema
    engine_schema: tantivy.Schema
    index: tantivy.Index
    text_fields: tuple[tuple[str, str | None], ...]
    builder: _DocumentBuilder
    sized: bool = True
    """Whether the index has ``_size`` (false for indexes created before it existed)."""
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    writer: tantivy.IndexWriter | None = None
    dropped: bool = False


def _date_micros(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


def _engine_schema(schema: CollectionSchema, *, sized: bool = True) -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field(ID_FIELD, stored=True, tokenizer_name="raw", index_option="basic")
    builder.add_integer_field(ID_HASH_FIELD, fast=True)
    builder.add_integer_field(VERSION_FIELD, fast=True)
    builder.add_boolean_field(DELETED_FIELD, indexed=True)
    builder.add_bytes_field(SOURCE_FIELD, stored=True)
    if sized:
        builder.add_integer_field(SIZE_FIELD, fast=True)
    # Sorted so the same collection schema always builds the same engine schema (tantivy compares
    # it with the stored one when the index is opened).
    for name, spec in sorted(schema.fields.items()):
        match spec.type:
            case FieldType.TEXT:
                builder.add_text_field(
                    name,
                    tokenizer_name=analyzers.analyzer_name(spec.language),
                    index_option="freq",
                )
            case FieldType.KEYWORD:
                builder.add_text_field(name, fast=True, tokenizer_name="raw", index_option="basic")
            case FieldType.INTEGER | FieldType.DATE:
                builder.add_integer_field(name, indexed=True, fast=True)
            case FieldType.FLOAT:
                builder.add_float_field(name, indexed=True, fast=True)
            case FieldType.BOOLEAN:
                builder.add_boolean_field(name, indexed=True, fast=True)
    return builder.build()


_Adder = Callable[[tantivy.Document, Any], None]


def _id_hash(doc_id: str) -> int:
    """A stable 64-bit hash of a document id, kept in a numeric fast field so the ids of many hits
    can be read in one call (reading a text fast field per hit is far slower)."""
    digest = hashlib.blake2b(doc_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _rejection(name: str, spec: FieldSpec, value: Any) -> _Rejected:
    try:
        coerce_value(spec, value)
    except ValueError as exc:
        return _Rejected(f"/{name}: {exc}")
    return _Rejected(f"/{name}: not a valid {spec.type.value} value")


def _scalar_adder(name: str, spec: FieldSpec) -> _Adder:
    """Adds one value of field ``name`` to an engine document; the same checks as
    :func:`schema.coerce_value`, specialized per type because this runs for every value."""
    match spec.type:
        case FieldType.TEXT:

            def add_text(doc: tantivy.Document, value: Any) -> None:
                if not isinstance(value, str):
                    raise _rejection(name, spec, value)
                doc.add_text(name, value)

            return add_text
        case FieldType.KEYWORD:

            def add_keyword(doc: tantivy.Document, value: Any) -> None:
                if not isinstance(value, str) or len(value) > MAX_KEYWORD_LENGTH:
                    raise _rejection(name, spec, value)
                doc.add_text(name, value)

            return add_keyword
        case FieldType.INTEGER:

            def add_integer(doc: tantivy.Document, value: Any) -> None:
                if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
                    raise _rejection(name, spec, value)
                doc.add_integer(name, value)

            return add_integer
        case FieldType.FLOAT:

            def add_float(doc: tantivy.Document, value: Any) -> None:
                try:
                    number = coerce_value(spec, value)
                except ValueError as exc:
                    raise _Rejected(f"/{name}: {exc}") from exc
                doc.add_float(name, number)

            return add_float
        case FieldType.DATE:

            def add_date(doc: tantivy.Document, value: Any) -> None:
                parsed = parse_date(value)
                if parsed is None:
                    raise _rejection(name, spec, value)
                doc.add_integer(name, _date_micros(parsed))

            return add_date
        case FieldType.BOOLEAN:

            def add_boolean(doc: tantivy.Document, value: Any) -> None:
                if not isinstance(value, bool):
                    raise _rejection(name, spec, value)
                doc.add_boolean(name, value)

            return add_boolean
    raise AssertionError(spec.type)  # pragma: no cover - the match is exhaustive


def _field_adder(name: str, spec: FieldSpec) -> _Adder:
    add_one = _scalar_adder(name, spec)
    lists_allowed = spec.type is not FieldType.BOOLEAN

    def add(doc: tantivy.Document, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, list):
            if not lists_allowed:
                raise _rejection(name, spec, value)
            for item in value:
                if item is not None:
                    add_one(doc, item)
        else:
            add_one(doc, value)

    return add


class _DocumentBuilder:
    """Turns a client document into an engine document for one collection schema."""

    def __init__(self, schema: CollectionSchema, *, sized: bool = True) -> None:
        self._adders = {name: _field_adder(name, spec) for name, spec in schema.fields.items()}
        self._sized = sized

    def document(self, doc_id: str, version: int, source: Mapping[str, Any]) -> tantivy.Document:
        payload = source if isinstance(source, dict) else dict(source)
        try:
            raw = orjson.dumps(payload)
        except TypeError as exc:
            raise _Rejected(f"the document cannot be stored as JSON: {exc}") from exc
        doc = self._base(doc_id, version)
        doc.add_bytes(SOURCE_FIELD, raw)
        if self._sized:
            doc.add_integer(SIZE_FIELD, len(raw))
        adders = self._adders
        for name, value in payload.items():
            add = adders.get(name)
            if add is not None:
                add(doc, value)
            elif name not in RESERVED_FIELDS:
                raise _Rejected(f"/{name}: unknown field")
        return doc

    def tombstone(self, doc_id: str, version: int) -> tantivy.Document:
        doc = self._base(doc_id, version)
        doc.add_boolean(DELETED_FIELD, True)
        return doc

    @staticmethod
    def _base(doc_id: str, version: int) -> tantivy.Document:
        doc = tantivy.Document()
        doc.add_text(ID_FIELD, doc_id)
        doc.add_integer(ID_HASH_FIELD, _id_hash(doc_id))
        doc.add_integer(VERSION_FIELD, version)
        return doc


def _render_highlight(fragment: str, ranges: Sequence[tantivy.Range]) -> str:
    # Snippet ranges are UTF-8 byte offsets into the fragment.
    data = fragment.encode()
    out: list[str] = []
    pos = 0
    for r in sorted(ranges, key=lambda r: r.start):
        start = max(r.start, pos)
        if r.end <= start:
            continue
        out.append(html.escape(data[pos:start].decode(errors="replace")))
        out.append("<em>")
        out.append(html.escape(data[start : r.end].decode(errors="replace")))
        out.append("</em>")
        pos = r.end
    out.append(html.escape(data[pos:].decode(errors="replace")))
    return "".join(out)


def _query_digest(query: SearchQuery) -> str:
    # The dataclasses' reprs are deterministic, so this names "the same search" across pages.
    key = repr((query.text, query.matching, query.filter, query.sort)).encode()
    return hashlib.blake2b(key, digest_size=8).hexdigest()


def _encode_cursor(offset: int, digest: str) -> str:
    raw = orjson.dumps({"v": _CURSOR_VERSION, "o": offset, "q": digest})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_cursor(token: str, digest: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = orjson.loads(raw)
    except (ValueError, binascii.Error) as exc:
        raise InvalidCursor() from exc
    if not isinstance(data, dict) or data.get("v") != _CURSOR_VERSION or data.get("q") != digest:
        raise InvalidCursor()
    offset = data.get("o")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 1:
        raise InvalidCursor()
    return offset


def _complete(ops: list[WriteOp], results: list[WriteResult | None]) -> list[WriteResult]:
    """Every op has a result by now; one without (a bug) is reported as retryable, not dropped."""
    return [
        r if r is not None else WriteResult(op.id, "retryable", "the op was not processed")
        for op, r in zip(ops, results, strict=True)
    ]


def _hit_count(result: tantivy.SearchResult) -> int:
    # tantivy-py's stub omits SearchResult.count (None when count=False was asked).
    count: object = getattr(result, "count", None)
    return count if isinstance(count, int) else 0


@contextmanager
def _engine_errors(action: str) -> Iterator[None]:
    """Translate whatever tantivy raises into the project's errors."""
    try:
        yield
    except TenantSearchError:
        raise
    except OSError as exc:
        raise BackendUnavailable(f"the search index is not usable (trying to {action})") from exc
    except Exception as exc:
        raise BackendError(f"the search engine failed to {action}") from exc
    except BaseException as exc:
        # A Rust panic surfaces as pyo3's PanicException, which is not an Exception.
        if type(exc).__name__ == "PanicException":
            raise BackendError(f"the search engine failed to {action}") from exc
        raise


class TantivyBackend:
    """SearchBackend on local tantivy indexes (see the module docstring for the layout).

    ``writer_threads`` is per index: one thread measured cheaper than two per indexed document on
    a 2-core machine (each thread writes its own segment per commit, so more merging follows).
    """

    def __init__(
        self,
        root: Path,
        *,
        writer_heap_bytes: int = 64_000_000,
        writer_threads: int = 1,
        max_open_writers: int = DEFAULT_MAX_OPEN_WRITERS,
    ) -> None:
        if writer_heap_bytes < MIN_WRITER_HEAP_PER_THREAD * writer_threads:
            raise ValueError(
                f"writer_heap_bytes must be at least {MIN_WRITER_HEAP_PER_THREAD} per writer thread"
            )
        self._root = Path(root)
        self._heap = writer_heap_bytes
        self._threads = writer_threads
        self._max_writers = max(1, max_open_writers)
        self._lock = threading.Lock()
        self._collections: dict[str, _Collection] = {}
        self._writers: OrderedDict[str, _Collection] = OrderedDict()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._start)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    async def ping(self) -> None:
        await asyncio.to_thread(self._ping)

    def _start(self) -> None:
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self._root / _TRASH_DIR, ignore_errors=True)
        except OSError as exc:
            raise BackendUnavailable(f"the index directory {self._root} is not usable") from exc

    def _close(self) -> None:
        with self._lock:
            collections = list(self._collections.values())
            self._collections.clear()
            self._writers.clear()
        for coll in collections:
            with coll.write_lock:
                self._close_writer(coll)

    def _ping(self) -> None:
        if not self._root.is_dir() or not os.access(self._root, os.R_OK | os.W_OK | os.X_OK):
            raise BackendUnavailable(f"the index directory {self._root} is not usable")

    # -- collections ----------------------------------------------------------------------------

    async def ensure_collection(self, ref: CollectionRef) -> None:
        await asyncio.to_thread(self._ensure_collection, ref)

    async def drop_collection(self, ref: CollectionRef) -> None:
        await asyncio.to_thread(self._drop_collection, ref)

    async def drop_tenant(self, tenant: str) -> None:
        await asyncio.to_thread(self._drop_tenant, tenant)

    def _ensure_collection(self, ref: CollectionRef) -> None:
        with _engine_errors("create the collection"):
            self._open(ref, create=True)

    def _drop_collection(self, ref: CollectionRef) -> None:
        path = self._path(ref)
        with self._lock:
            # Forget the collection and move its directory away under the same lock, so no reader
            # can reopen it in between and keep serving the dropped data.
            coll = self._collections.pop(ref.uid, None)
            self._writers.pop(ref.uid, None)
            trash = self._move_to_trash(path)
        if coll is not None:
            with coll.write_lock:
                coll.dropped = True
                self._close_writer(coll)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def _drop_tenant(self, tenant: str) -> None:
        path = self._tenant_path(tenant)
        with self._lock:
            dropped = [c for c in self._collections.values() if c.tenant == tenant]
            for coll in dropped:
                del self._collections[coll.uid]
                self._writers.pop(coll.uid, None)
            trash = self._move_to_trash(path)
        for coll in dropped:
            with coll.write_lock:
                coll.dropped = True
                self._close_writer(coll)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def _move_to_trash(self, path: Path) -> Path | None:
        if not path.exists():
            return None
        trash = self._root / _TRASH_DIR / uuid.uuid4().hex
        try:
            trash.parent.mkdir(parents=True, exist_ok=True)
            path.rename(trash)
        except OSError as exc:
            raise BackendUnavailable("the index directory could not be removed") from exc
        return trash

    def _tenant_path(self, tenant: str) -> Path:
        if not NAME_RE.match(tenant):
            raise InvalidInput("not a valid tenant id", errors=[FieldError("/tenant", tenant)])
        return self._root / tenant

    def _path(self, ref: CollectionRef) -> Path:
        if not _UID_RE.match(ref.uid):
            raise InvalidInput("not a valid collection uid", errors=[FieldError("/uid", ref.uid)])
        return self._tenant_path(ref.tenant) / ref.uid

    def _open(self, ref: CollectionRef, *, create: bool) -> _Collection | None:
        """The cached open index of ``ref``; None if it does not exist and ``create`` is false."""
        path = self._path(ref)
        with self._lock:
            coll = self._collections.get(ref.uid)
            if coll is not None:
                return coll
            if not create and not (path.is_dir() and tantivy.Index.exists(str(path))):
                return None
            path.mkdir(parents=True, exist_ok=True)
            sized = True
            engine_schema = _engine_schema(ref.schema)
            try:
                index = tantivy.Index(engine_schema, path=str(path), reuse=True)
            except ValueError:
                # The schema does not match: an index created before sizes were recorded is
                # opened with its own schema (a genuine mismatch fails again, here).
                engine_schema = _engine_schema(ref.schema, sized=False)
                index = tantivy.Index(engine_schema, path=str(path), reuse=True)
                sized = False
                _log.warning(
                    "the index %s has no document sizes (created before they were recorded); "
                    "its stored_bytes count as 0",
                    path,
                )
            analyzers.register_analyzers(index)
            # Reload only after our own commits: a merge finishing in the background must not
            # change the segment set (and so the tie order) under a client paging through hits.
            index.config_reader("Manual")
            index.reload()
            text_fields = tuple(
                (name, spec.language)
                for name, spec in sorted(ref.schema.fields.items())
                if spec.type is FieldType.TEXT
            )
            coll = _Collection(
                uid=ref.uid,
                tenant=ref.tenant,
                path=path,
                schema=ref.schema,
                engine_schema=engine_schema,
                index=index,
                text_fields=text_fields,
                builder=_DocumentBuilder(ref.schema, sized=sized),
                sized=sized,
            )
            self._collections[ref.uid] = coll
            return coll

    # -- writers --------------------------------------------------------------------------------

    def _writer(self, coll: _Collection) -> tantivy.IndexWriter:
        """The collection's writer (caller holds ``coll.write_lock``)."""
        with self._lock:
            self._writers[coll.uid] = coll
            self._writers.move_to_end(coll.uid)
            idle = [c for c in self._writers.values() if c is not coll]
            excess = len(self._writers) - self._max_writers
        for other in idle:
            if excess <= 0:
                break
            # Never wait for another index's lock here (that could deadlock); a busy writer stays
            # open for now, so the limit is approximate.
            if other.write_lock.acquire(blocking=False):
                try:
                    self._close_writer(other)
                    excess -= 1
                finally:
                    other.write_lock.release()
        if coll.writer is None:
            coll.writer = coll.index.writer(self._heap, self._threads)
        return coll.writer

    def _close_writer(self, coll: _Collection) -> None:
        """Close the writer, waiting for its merges (caller holds ``coll.write_lock``)."""
        with self._lock:
            if self._writers.get(coll.uid) is coll:
                del self._writers[coll.uid]
        writer, coll.writer = coll.writer, None
        if writer is not None:
            try:
                writer.wait_merging_threads()
            except Exception:  # noqa: BLE001 - a failed merge must not stop the close
                _log.warning("closing the writer of %s failed", coll.path, exc_info=True)

    # -- writes ---------------------------------------------------------------------------------

    async def apply(self, ref: CollectionRef, ops: Sequence[WriteOp]) -> list[WriteResult]:
        if not ops:
            return []
        return await asyncio.to_thread(self._apply, ref, list(ops))

    def _apply(self, ref: CollectionRef, ops: list[WriteOp]) -> list[WriteResult]:
        with _engine_errors("write documents"):
            coll = self._open(ref, create=False)
            if coll is None:
                return [WriteResult(op.id, "permanent", _MISSING) for op in ops]
            with coll.write_lock:
                if coll.dropped:
                    return [WriteResult(op.id, "permanent", _MISSING) for op in ops]
                return self._apply_locked(coll, ops)

    def _apply_locked(self, coll: _Collection, ops: list[WriteOp]) -> list[WriteResult]:
        results: list[WriteResult | None] = [None] * len(ops)
        # Candidates per id, newest first (the first of equal versions before the others).
        candidates: dict[str, list[int]] = {}
        for i, op in enumerate(ops):
            if isinstance(op.version, int) and INT64_MIN <= op.version <= INT64_MAX:
                candidates.setdefault(op.id, []).append(i)
            else:
                results[i] = WriteResult(op.id, "permanent", "the version must be a 64-bit integer")
        try:
            stored = self._stored_versions(coll, list(candidates))
        except Exception as exc:  # noqa: BLE001 - any engine failure here is reported per op as retryable
            return self._retryable(ops, results, f"the stored versions could not be read: {exc}")

        # Per id, the newest op above the stored version that the engine accepts wins; ops the
        # engine refuses are permanent; every other op (older, or not above the stored version)
        # is stale. Documents are only built for ops that can win, so redeliveries cost little.
        docs: dict[int, tantivy.Document] = {}
        for doc_id, indexes in candidates.items():
            floor = stored.get(doc_id)
            indexes.sort(key=lambda i: -ops[i].version)
            for i in indexes:
                op = ops[i]
                if floor is not None and op.version <= floor:
                    results[i] = WriteResult(op.id, "stale")
                    continue
                try:
                    docs[i] = (
                        coll.builder.tombstone(op.id, op.version)
                        if op.document is None
                        else coll.builder.document(op.id, op.version, op.document)
                    )
                except (_Rejected, ValueError, TypeError, OverflowError) as exc:
                    message = str(exc) or "rejected by the engine"
                    results[i] = WriteResult(op.id, "permanent", message)
                    continue
                floor = op.version  # everything after this one is stale
        chosen = sorted(docs)
        if not chosen:
            return _complete(ops, results)

        try:
            writer = self._writer(coll)
            writer.delete_documents_by_query(
                tantivy.Query.term_set_query(
                    coll.engine_schema, ID_FIELD, [ops[i].id for i in chosen]
                )
            )
            for i in chosen:
                writer.add_document(docs[i])
            writer.commit()
        except Exception as exc:  # noqa: BLE001 - engine/I-O failure: nothing was committed; the ops may succeed later
            self._discard_uncommitted(coll)
            return self._retryable(ops, results, f"the index could not be written: {exc}")
        try:
            coll.index.reload()
        except Exception as exc:  # noqa: BLE001 - committed but not visible: reopen the index next time
            with self._lock:
                if self._collections.get(coll.uid) is coll:
                    del self._collections[coll.uid]
            self._close_writer(coll)
            return self._retryable(ops, results, f"the index could not be reloaded: {exc}")
        for i in chosen:
            results[i] = WriteResult(ops[i].id, "applied")
        return _complete(ops, results)

    async def purge_tombstones(self, refs: Sequence[CollectionRef], through_version: int) -> int:
        purged = 0
        for ref in refs:
            purged += await asyncio.to_thread(self._purge_tombstones, ref, through_version)
        return purged

    def _purge_tombstones(self, ref: CollectionRef, through_version: int) -> int:
        with _engine_errors("purge delete tombstones"):
            coll = self._open(ref, create=False)
            if coll is None:
                return 0
            with coll.write_lock:
                if coll.dropped:
                    return 0
                occur = tantivy.Occur
                old_tombstones = tantivy.Query.boolean_query(
                    [
                        (
                            occur.Must,
                            tantivy.Query.term_query(coll.engine_schema, DELETED_FIELD, True),
                        ),
                        (
                            occur.Must,
                            tantivy.Query.range_query(
                                coll.engine_schema,
                                VERSION_FIELD,
                                tantivy.FieldType.Integer,
                                None,
                                through_version,
                            ),
                        ),
                    ]
                )
                found = _hit_count(coll.index.searcher().search(old_tombstones, 1, count=True))
                if not found:
                    return 0
                writer = self._writer(coll)
                try:
                    writer.delete_documents_by_query(old_tombstones)
                    writer.commit()
                except Exception:
                    self._discard_uncommitted(coll)
                    raise
                coll.index.reload()
                return found

    def _discard_uncommitted(self, coll: _Collection) -> None:
        if coll.writer is not None:
            try:
                coll.writer.rollback()
            except Exception:  # noqa: BLE001 - the writer is closed below whatever happened
                _log.warning("rolling back the writer of %s failed", coll.path, exc_info=True)
        self._close_writer(coll)

    @staticmethod
    def _retryable(
        ops: list[WriteOp], results: list[WriteResult | None], message: str
    ) -> list[WriteResult]:
        return [
            r
            if r is not None and r.outcome in ("permanent", "stale")
            else WriteResult(op.id, "retryable", message)
            for op, r in zip(ops, results, strict=True)
        ]

    def _stored_versions(self, coll: _Collection, ids: list[str]) -> dict[str, int]:
        """Current version (document or tombstone) of each of ``ids`` that is stored."""
        if not ids:
            return {}
        searcher = coll.index.searcher()
        query = tantivy.Query.term_set_query(coll.engine_schema, ID_FIELD, ids)
        result = searcher.search(query, len(ids))
        matched = _hit_count(result)
        if matched > len(ids):
            result = searcher.search(query, matched)
        addresses = [address for _, address in result.hits]
        # Ids come back as their hashes (two fast-field reads for all hits, no stored documents).
        by_hash: dict[int, str] = {}
        for doc_id in ids:
            if by_hash.setdefault(_id_hash(doc_id), doc_id) != doc_id:
                return self._stored_versions_slowly(searcher, addresses)
        hashes = searcher.fast_field_values(ID_HASH_FIELD, addresses)
        versions = searcher.fast_field_values(VERSION_FIELD, addresses)
        stored: dict[str, int] = {}
        for id_hash, version in zip(hashes, versions, strict=True):
            hit_id = by_hash.get(id_hash) if isinstance(id_hash, int) else None
            if hit_id is not None and isinstance(version, int):
                stored[hit_id] = max(version, stored.get(hit_id, version))
        return stored

    @staticmethod
    def _stored_versions_slowly(
        searcher: tantivy.Searcher, addresses: list[tantivy.DocAddress]
    ) -> dict[str, int]:
        """The same, reading each id from the stored document (two ids in the batch collide)."""
        versions = searcher.fast_field_values(VERSION_FIELD, addresses)
        stored: dict[str, int] = {}
        for address, version in zip(addresses, versions, strict=True):
            doc_id = searcher.doc(address).get_first(ID_FIELD)
            if isinstance(doc_id, str) and isinstance(version, int):
                stored[doc_id] = max(version, stored.get(doc_id, version))
        return stored

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, ref: CollectionRef, doc_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._get, ref, doc_id)

    async def count(self, ref: CollectionRef) -> int:
        return await asyncio.to_thread(self._count, ref)

    async def stats(self, ref: CollectionRef) -> CollectionStats:
        return await asyncio.to_thread(self._stats, ref)

    async def search(self, ref: CollectionRef, query: SearchQuery) -> SearchResult:
        return await asyncio.to_thread(self._search, ref, query)

    def _live(self, coll: _Collection, query: tantivy.Query | None) -> tantivy.Query:
        """``query`` (or every document) without delete tombstones."""
        occur = tantivy.Occur
        return tantivy.Query.boolean_query(
            [
                (occur.Must, query if query is not None else tantivy.Query.all_query()),
                (occur.MustNot, tantivy.Query.term_query(coll.engine_schema, DELETED_FIELD, True)),
            ]
        )

    def _get(self, ref: CollectionRef, doc_id: str) -> dict[str, Any] | None:
        with _engine_errors("read a document"):
            coll = self._open(ref, create=False)
            if coll is None:
                return None
            searcher = coll.index.searcher()
            term = tantivy.Query.term_query(coll.engine_schema, ID_FIELD, doc_id, "basic")
            hits = searcher.search(self._live(coll, term), 1).hits
            if not hits:
                return None
            return self._source(searcher.doc(hits[0][1]))

    def _count(self, ref: CollectionRef) -> int:
        with _engine_errors("count documents"):
            coll = self._open(ref, create=False)
            if coll is None:
                return 0
            return self._total(coll.index.searcher(), self._live(coll, None))

    def _stats(self, ref: CollectionRef) -> CollectionStats:
        with _engine_errors("measure the collection"):
            coll = self._open(ref, create=False)
            if coll is None:
                return CollectionStats(documents=0, stored_bytes=0)
            searcher = coll.index.searcher()
            live = self._live(coll, None)
            documents = self._total(searcher, live)
            stored = 0
            if coll.sized and documents:
                answer = searcher.aggregate(live, {"bytes": {"sum": {"field": SIZE_FIELD}}})
                value = answer.get("bytes", {}).get("value")
                # The sum is a float64: exact up to 2**53 bytes (8 PiB).
                stored = round(value) if isinstance(value, int | float) else 0
            return CollectionStats(documents=documents, stored_bytes=stored)

    @staticmethod
    def _total(searcher: tantivy.Searcher, query: tantivy.Query) -> int:
        return _hit_count(searcher.search(query, 1, count=True))

    @staticmethod
    def _source(doc: tantivy.Document) -> dict[str, Any]:
        raw = doc.get_first(SOURCE_FIELD)
        if not isinstance(raw, bytes):
            raise BackendError("a stored document has no source")
        source = orjson.loads(raw)
        if not isinstance(source, dict):
            raise BackendError("a stored document is not an object")
        return source

    def _search(self, ref: CollectionRef, query: SearchQuery) -> SearchResult:
        digest = _query_digest(query)
        offset = 0 if query.after is None else _decode_cursor(query.after, digest)
        if not 0 <= query.limit <= MAX_LIMIT:
            raise InvalidInput(
                f"limit must be between 0 and {MAX_LIMIT}",
                errors=[FieldError("/limit", "out of range")],
            )
        if len(query.sort) > 1:
            raise InvalidInput(
                "at most one sort key", errors=[FieldError("/sort", "at most one key")]
            )
        with _engine_errors("search"):
            coll = self._open(ref, create=False)
            if coll is None:
                self._check_fields(ref.schema, query)
                return SearchResult(hits=[], total=0, facets={name: {} for name in query.facets})
            self._check_fields(coll.schema, query)
            return self._search_collection(coll, query, offset, digest)

    def _check_fields(self, schema: CollectionSchema, query: SearchQuery) -> None:
        for key in query.sort:
            self._spec(schema, key.field, FILTERABLE, "/sort")
        for name in query.facets:
            self._spec(schema, name, frozenset({FieldType.KEYWORD}), "/facets")

    @staticmethod
    def _spec(
        schema: CollectionSchema, name: str, types: frozenset[FieldType], path: str
    ) -> FieldSpec:
        spec = schema.fields.get(name)
        if spec is None or spec.type not in types:
            raise InvalidInput(
                f"'{name}' is not a field this operation applies to",
                errors=[FieldError(f"{path}/{name}", "not applicable to this field")],
            )
        return spec

    def _search_collection(
        self, coll: _Collection, query: SearchQuery, offset: int, digest: str
    ) -> SearchResult:
        occur = tantivy.Occur
        text_query = self._text_query(coll, query.text, query.matching)
        clauses: list[tuple[tantivy.Occur, tantivy.Query]] = [
            (occur.Must, text_query if text_query is not None else tantivy.Query.all_query()),
            (occur.MustNot, tantivy.Query.term_query(coll.engine_schema, DELETED_FIELD, True)),
        ]
        if query.filter is not None:
            # Filters narrow the matches but must not change relevance.
            filter_query = self._filter_query(coll, query.filter)
            clauses.append((occur.Must, tantivy.Query.const_score_query(filter_query, 0.0)))
        engine_query = tantivy.Query.boolean_query(clauses)

        searcher = coll.index.searcher()
        sort = query.sort[0] if query.sort else None
        hits: list[Hit] = []
        if query.limit == 0 or offset >= searcher.num_docs:
            total = self._total(searcher, engine_query)
        else:
            if sort is None:
                found = searcher.search(engine_query, query.limit, count=True, offset=offset)
            else:
                found = searcher.search(
                    engine_query,
                    query.limit,
                    count=True,
                    order_by_field=sort.field,
                    offset=offset,
                    order=tantivy.Order.Desc if sort.descending else tantivy.Order.Asc,
                )
            total = _hit_count(found)
            highlighter = (
                self._highlighter(coll, searcher, text_query)
                if query.highlight and text_query is not None
                else None
            )
            for key, address in found.hits:
                doc = searcher.doc(address)
                doc_id = doc.get_first(ID_FIELD)
                source = self._source(doc)
                highlights = None
                if query.highlight:
                    highlights = highlighter(source) if highlighter is not None else {}
                hits.append(
                    Hit(
                        id=str(doc_id),
                        score=float(key) if sort is None else None,
                        document=source,
                        highlights=highlights,
                    )
                )
        end = offset + len(hits)
        return SearchResult(
            hits=hits,
            total=total,
            facets=self._facets(searcher, engine_query, query) if query.facets else {},
            next_after=_encode_cursor(end, digest) if hits and end < total else None,
        )

    def _text_query(self, coll: _Collection, text: str, matching: Matching) -> tantivy.Query | None:
        """The words' query (``SearchQuery.matching``): every word must match some text field
        (``all``), or at least one, scores summed (``ranked``); None for empty text (match
        everything)."""
        if not text.strip():
            return None
        occur = tantivy.Occur
        words: list[tantivy.Query] = []
        seen: set[frozenset[tuple[str, str]]] = set()
        for word in analyzers.query_words(text):
            terms = frozenset(
                (name, term)
                for name, language in coll.text_fields
                for term in analyzers.analyze(language, word)
            )
            if not terms or terms in seen:
                continue
            seen.add(terms)
            alternatives = [
                tantivy.Query.term_query(coll.engine_schema, name, term, "freq")
                for name, term in sorted(terms)
            ]
            words.append(
                alternatives[0]
                if len(alternatives) == 1
                else tantivy.Query.boolean_query([(occur.Should, q) for q in alternatives])
            )
        if not words:
            # Text was given but no word of it can match (punctuation only, or over-long words).
            return tantivy.Query.empty_query()
        if len(words) == 1:
            return words[0]
        return tantivy.Query.boolean_query(
            [(occur.Must if matching == "all" else occur.Should, q) for q in words]
        )

    def _filter_query(self, coll: _Collection, node: Filter) -> tantivy.Query:
        occur = tantivy.Occur
        match node:
            case Eq(field=name, value=value):
                spec = self._spec(coll.schema, name, FILTERABLE, "/filter")
                return tantivy.Query.term_query(
                    coll.engine_schema, name, self._term(spec, value), "basic"
                )
            case In(field=name, values=values):
                spec = self._spec(coll.schema, name, FILTERABLE, "/filter")
                if not values:
                    return tantivy.Query.empty_query()
                return tantivy.Query.term_set_query(
                    coll.engine_schema, name, [self._term(spec, v) for v in values]
                )
            case Range(field=name):
                return self._range_query(coll, node)
            case And(clauses=clauses):
                if not clauses:
                    return tantivy.Query.all_query()
                return tantivy.Query.boolean_query(
                    [(occur.Must, self._filter_query(coll, c)) for c in clauses]
                )
            case Or(clauses=clauses):
                if not clauses:
                    return tantivy.Query.empty_query()
                return tantivy.Query.boolean_query(
                    [(occur.Should, self._filter_query(coll, c)) for c in clauses]
                )
            case Not(clause=clause):
                return tantivy.Query.boolean_query(
                    [
                        (occur.Must, tantivy.Query.all_query()),
                        (occur.MustNot, self._filter_query(coll, clause)),
                    ]
                )
        raise InvalidInput("unknown filter")  # pragma: no cover - the match is exhaustive

    def _range_query(self, coll: _Collection, node: Range) -> tantivy.Query:
        numeric = frozenset({FieldType.INTEGER, FieldType.FLOAT, FieldType.DATE})
        spec = self._spec(coll.schema, node.field, numeric, "/filter")
        lower, include_lower = (node.gt, False) if node.gt is not None else (node.gte, True)
        upper, include_upper = (node.lt, False) if node.lt is not None else (node.lte, True)
        if lower is None and upper is None:
            return tantivy.Query.exists_query(node.field)
        engine_type = (
            tantivy.FieldType.Float if spec.type is FieldType.FLOAT else tantivy.FieldType.Integer
        )
        return tantivy.Query.range_query(
            coll.engine_schema,
            node.field,
            engine_type,
            None if lower is None else self._term(spec, lower),
            None if upper is None else self._term(spec, upper),
            include_lower=include_lower,
            include_upper=include_upper,
        )

    @staticmethod
    def _term(spec: FieldSpec, value: Any) -> Any:
        """A filter value as the engine stores it (values are normally typed already)."""
        if spec.type is FieldType.DATE and isinstance(value, datetime):
            return _date_micros(value)
        try:
            typed = coerce_value(spec, value)
        except ValueError as exc:
            raise InvalidInput(
                f"a filter value does not fit field '{spec.type.value}'",
                errors=[FieldError("/filter", str(exc))],
            ) from exc
        return _date_micros(typed) if spec.type is FieldType.DATE else typed

    def _highlighter(
        self, coll: _Collection, searcher: tantivy.Searcher, text_query: tantivy.Query
    ) -> Callable[[dict[str, Any]], dict[str, list[str]]]:
        generators: list[tuple[str, FieldSpec, tantivy.SnippetGenerator]] = []
        for name, _ in coll.text_fields:
            generator = tantivy.SnippetGenerator.create(
                searcher, text_query, coll.engine_schema, name
            )
            generator.set_max_num_chars(HIGHLIGHT_FRAGMENT_CHARS)
            generators.append((name, coll.schema.fields[name], generator))

        def highlight(source: dict[str, Any]) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for name, spec, generator in generators:
                try:
                    values = field_values(spec, source.get(name))
                except ValueError:
                    continue
                fragments: list[str] = []
                for value in values:
                    # One snippet per value, so a fragment never runs across two values.
                    doc = tantivy.Document()
                    doc.add_text(name, value)
                    snippet = generator.snippet_from_doc(doc)
                    ranges = snippet.highlighted()
                    if ranges:
                        fragments.append(_render_highlight(snippet.fragment(), ranges))
                if fragments:
                    out[name] = fragments
            return out

        return highlight

    @staticmethod
    def _facets(
        searcher: tantivy.Searcher, engine_query: tantivy.Query, query: SearchQuery
    ) -> dict[str, dict[str, int]]:
        facets: dict[str, dict[str, int]] = {name: {} for name in query.facets}
        if query.facet_size <= 0:
            return facets
        size = query.facet_size
        request = {
            name: {"terms": {"field": name, "size": size, "segment_size": max(10 * size, 1000)}}
            for name in facets
        }
        answer = searcher.aggregate(engine_query, request)
        for name in facets:
            buckets = answer.get(name, {}).get("buckets", [])
            counted = sorted(
                ((str(b["key"]), int(b["doc_count"])) for b in buckets),
                key=lambda kv: (-kv[1], kv[0]),
            )
            facets[name] = dict(counted[:size])
        return facets
