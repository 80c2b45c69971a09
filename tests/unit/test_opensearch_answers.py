"""Partial answers from OpenSearch (some shard without an answering copy) are refused."""

from __future__ import annotations

import socket

import pytest

from tenantsearch.search.opensearch_backend import (
    OpenSearchBackend,
    RetryPolicy,
    require_every_shard,
)
from tenantsearch.search.port import BackendUnavailable


def test_a_complete_answer_passes() -> None:
    require_every_shard({"_shards": {"total": 3, "successful": 3, "failed": 0}}, "search")
    require_every_shard({"count": 3}, "count")  # no _shards part: nothing to judge


def test_an_answer_missing_a_shard_is_refused_as_unavailable() -> None:
    with pytest.raises(BackendUnavailable) as caught:
        require_every_shard({"_shards": {"total": 3, "successful": 2, "failed": 1}}, "search")
    assert caught.value.status == 503
    assert "shard" in caught.value.detail


async def test_a_failed_start_leaves_no_http_session_open() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenSearchBackend(
        [f"http://127.0.0.1:{port}"], timeout_seconds=1, retry=RetryPolicy(attempts=1)
    )
    with pytest.raises(BackendUnavailable):
        await backend.start()
    assert backend._client is None  # closed: no "Unclosed client session" later
