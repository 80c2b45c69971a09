"""OpenSearchBackend for tests: a fresh index prefix per test on the session's node, removed after.

Each test's backend creates its own template, indices and aliases under a unique prefix, so tests
never see each other's engine state and could run in parallel against one node.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection

from tenantsearch.search.opensearch_backend import OpenSearchBackend
from tests.support.opensearch_node import http_request


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def make_backend(
    url: str, prefix: str, *, dedicated_tenants: Collection[str] = ()
) -> OpenSearchBackend:
    """An adapter for one test: one shard, no replicas (a single node would stay yellow)."""
    return OpenSearchBackend(
        [url],
        index_prefix=prefix,
        shards=1,
        replicas=0,
        timeout_seconds=30,
        pool_size=4,
        dedicated_tenants=dedicated_tenants,
    )


def drop_prefix(url: str, prefix: str) -> None:
    """Delete every index and the template of one test's prefix."""
    http_request("DELETE", f"{url}/{prefix}-*?expand_wildcards=all", expect=(200, 404))
    http_request("DELETE", f"{url}/_index_template/{prefix}-*", expect=(200, 404))
