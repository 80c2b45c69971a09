"""A tantivy index created before documents' sizes were recorded (no ``_size`` field) still opens,
reads and writes; its ``stored_bytes`` count as 0, and new collections are measured."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import tantivy

from tenantsearch.search import tantivy_backend
from tenantsearch.search.port import CollectionRef, CollectionStats
from tenantsearch.search.query import WriteOp
from tenantsearch.search.schema import parse_schema

SCHEMA = parse_schema({"title": {"type": "text", "language": "en"}})


def _ref(tenant: str) -> CollectionRef:
    return CollectionRef(tenant=tenant, name="c", uid=uuid.uuid4().hex, schema=SCHEMA)


async def test_an_index_without_sizes_opens_and_counts_zero_bytes(tmp_path: Path) -> None:
    old, new = _ref("t1"), _ref("t1")
    path = tmp_path / old.tenant / old.uid
    path.mkdir(parents=True)
    legacy = tantivy_backend._engine_schema(SCHEMA, sized=False)
    tantivy.Index(legacy, path=str(path), reuse=True)

    backend = tantivy_backend.TantivyBackend(tmp_path, writer_heap_bytes=40_000_000)
    await backend.start()
    try:
        doc = {"title": "old index"}
        for ref in (old, new):
            await backend.ensure_collection(ref)
            [result] = await backend.apply(ref, [WriteOp("a", 1, doc)])
            assert result.outcome == "applied"
            assert await backend.get(ref, "a") == doc
        assert await backend.stats(old) == CollectionStats(documents=1, stored_bytes=0)
        assert await backend.stats(new) == CollectionStats(1, len(orjson.dumps(doc)))
    finally:
        await backend.close()
