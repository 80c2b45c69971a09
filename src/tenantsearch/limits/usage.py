"""A tenant's usage against its quotas: documents and bytes stored, requests today.

Document counts and stored bytes come from the search engine in one pass (``SearchBackend.stats``
of each of the tenant's collections: exact counts, ``stored_bytes`` as the port defines it), and
are re-read at most every ``COUNT_CACHE_SECONDS``; writes this process accepted meanwhile are
added (their document count and request bytes), so neither quota can be overrun by one process in
that window.
"""

from __future__ import annotations

import time

from tenantsearch.errors import Forbidden
from tenantsearch.search.collections import ref_of
from tenantsearch.search.port import CollectionStats, SearchBackend
from tenantsearch.store.repository import MetadataStore

COUNT_CACHE_SECONDS = 5.0


class UsageService:
    def __init__(self, store: MetadataStore, backend: SearchBackend) -> None:
        self._store = store
        self._backend = backend
        self._usage: dict[str, tuple[float, CollectionStats]] = {}

    async def usage(self, tenant_id: str, *, fresh: bool = False) -> CollectionStats:
        """Documents and stored bytes of every collection of the tenant (cached, see above)."""
        now = time.monotonic()
        cached = self._usage.get(tenant_id)
        if cached is not None and not fresh and now - cached[0] < COUNT_CACHE_SECONDS:
            return cached[1]
        documents = stored_bytes = 0
        for collection in await self._store.list_collections(tenant_id):
            stats = await self._backend.stats(ref_of(collection))
            documents += stats.documents
            stored_bytes += stats.stored_bytes
        if len(self._usage) > 10_000:
            self._usage.clear()
        total = CollectionStats(documents=documents, stored_bytes=stored_bytes)
        self._usage[tenant_id] = (now, total)
        return total

    async def documents(self, tenant_id: str, *, fresh: bool = False) -> int:
        return (await self.usage(tenant_id, fresh=fresh)).documents

    async def stored_bytes(self, tenant_id: str, *, fresh: bool = False) -> int:
        return (await self.usage(tenant_id, fresh=fresh)).stored_bytes

    async def check_document_quota(
        self,
        tenant_id: str,
        incoming: int,
        max_documents: int | None,
        *,
        size: int = 0,
        max_stored_bytes: int | None = None,
    ) -> None:
        """403 ``document_quota_exceeded`` when ``incoming`` new documents could pass the document
        quota, 403 ``storage_quota_exceeded`` when ``size`` more bytes (the request's) could pass
        the stored-bytes quota. Both are conservative: updates count as new documents, and the
        request's bytes as added bytes (the old version's bytes are not subtracted)."""
        if max_documents is None and max_stored_bytes is None:
            return
        current = await self.usage(tenant_id)
        if max_documents is not None and current.documents + incoming > max_documents:
            raise Forbidden(
                f"this tenant's plan holds at most {max_documents} documents; delete some or "
                "ask for a larger plan",
                code="document_quota_exceeded",
            )
        if max_stored_bytes is not None and current.stored_bytes + size > max_stored_bytes:
            raise Forbidden(
                f"this tenant's plan stores at most {max_stored_bytes} bytes of documents; "
                "delete some or ask for a larger plan",
                code="storage_quota_exceeded",
            )
        at, _ = self._usage[tenant_id]
        self._usage[tenant_id] = (
            at,
            CollectionStats(
                documents=current.documents + incoming,
                stored_bytes=current.stored_bytes + size,
            ),
        )
