"""``startup.start_when_available``: what is waited out at start-up, and what is not."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from tenantsearch.errors import Misconfigured, ServiceUnavailable
from tenantsearch.startup import start_when_available


async def test_an_unavailable_dependency_is_tried_again_until_it_starts() -> None:
    tries: list[int] = []

    async def start() -> None:
        tries.append(1)
        if len(tries) < 3:
            raise ServiceUnavailable("not up yet")

    with structlog.testing.capture_logs() as logs:
        assert await start_when_available("api", "engine", start, asyncio.Event())
    assert len(tries) == 3
    waits = [e for e in logs if e["event"] == "api_waiting_for_dependency"]
    assert [e["attempt"] for e in waits] == [1, 2]
    assert {e["error"] for e in waits} == {"not up yet"}


async def test_a_misconfiguration_stops_the_start_at_once_with_its_message() -> None:
    tries: list[int] = []

    async def start() -> None:
        tries.append(1)
        raise Misconfigured("the OpenSearch CA file /x/ca.pem cannot be read")

    with structlog.testing.capture_logs() as logs, pytest.raises(Misconfigured):
        await start_when_available("indexer", "search engine", start, asyncio.Event())
    assert len(tries) == 1
    assert [(e["event"], e["log_level"], e["error"]) for e in logs] == [
        ("indexer_misconfigured", "error", "the OpenSearch CA file /x/ca.pem cannot be read")
    ]


async def test_a_stop_during_the_wait_ends_it() -> None:
    stopping = asyncio.Event()

    async def start() -> None:
        stopping.set()  # told to stop while the dependency is still down
        raise ServiceUnavailable("not up yet")

    assert not await start_when_available("api", "engine", start, stopping)
