"""The RabbitMQ queue across a broker restart: what was confirmed survives (delayed retries
included), publishing while the broker is down fails within its timeout, and the API answers 503,
never 202, for a write it could not queue; the robust connection comes back by itself.

The module has its own broker (the session's one is shared and must not be restarted).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantsearch.app import create_app
from tenantsearch.queue.port import Delivery, QueueUnavailable
from tenantsearch.queue.rabbitmq import RabbitMqQueue
from tenantsearch.settings import load_settings
from tenantsearch.store.db import create_engine, migrate
from tests.support.api import ADMIN_KEY, Api
from tests.support.services import RabbitMq, rabbitmq

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PUBLISH_TIMEOUT = 2.0
RECOVERY_TIMEOUT = 60.0

T = TypeVar("T")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMq]:
    with rabbitmq(tmp_path_factory.mktemp("broker")) as broker:
        yield broker


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'metadata.db'}")
    await migrate(engine)
    yield engine
    await engine.dispose()


async def eventually(attempt: Callable[[], Awaitable[T]], timeout: float = RECOVERY_TIMEOUT) -> T:
    """``attempt()`` once it stops raising QueueUnavailable (the connection is back)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await attempt()
        except QueueUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def test_confirmed_messages_and_delayed_retries_survive_a_restart(
    broker: RabbitMq, ledger: AsyncEngine
) -> None:
    queue = RabbitMqQueue(
        broker.url,
        ledger_engine=ledger,
        queue=f"restart.{uuid.uuid4().hex[:8]}",
        publish_timeout=PUBLISH_TIMEOUT,
        operation_timeout=PUBLISH_TIMEOUT,
    )
    await queue.start()
    try:
        for body in (b"delayed", b"waiting-1", b"waiting-2"):
            await queue.publish(body, tenant="acme", documents=1)
        [delayed] = await queue.receive(1, 5.0)
        assert delayed.body == b"delayed"
        await queue.retry(delayed, 5.0)  # comes due while the broker is down

        await asyncio.to_thread(broker.stop)
        try:
            started = time.monotonic()
            with pytest.raises(QueueUnavailable):
                await queue.publish(b"refused", tenant="acme", documents=1)
            assert time.monotonic() - started < PUBLISH_TIMEOUT + 3
        finally:
            await asyncio.to_thread(broker.start)

        await eventually(lambda: queue.publish(b"after", tenant="acme", documents=1))
        received: list[Delivery] = []
        deadline = time.monotonic() + 30
        while len(received) < 4 and time.monotonic() < deadline:
            received += await eventually(lambda: queue.receive(10, 1.0))
        by_body = {d.body: d for d in received}
        assert sorted(by_body) == [b"after", b"delayed", b"waiting-1", b"waiting-2"]
        assert by_body[b"delayed"].attempts == 2
        assert (await queue.backlog("acme")).messages == 4  # the refused one never counted
        await queue.ack(received)
        assert (await queue.backlog()).messages == 0
    finally:
        await queue.close()


async def test_writes_answer_503_while_the_broker_is_down(broker: RabbitMq, tmp_path: Path) -> None:
    settings = load_settings(
        environ={},
        data_dir=tmp_path / "data",
        admin_key=ADMIN_KEY,
        log_level="warning",
        indexer_linger_ms=0,
        queue_backend="rabbitmq",
        rabbitmq_url=broker.url,
        rabbitmq_queue=f"api.{uuid.uuid4().hex[:8]}",
        rabbitmq_publish_timeout_seconds=PUBLISH_TIMEOUT,
    )
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            api = Api(client)
            _, auth = await api.tenant()
            await api.collection(auth, "docs")
            await api.index(auth, "docs", [{"id": "1", "title": "before the outage"}])

            await asyncio.to_thread(broker.stop)
            try:
                r = await client.put(
                    "/v1/collections/docs/documents/2", json={"title": "lost?"}, headers=auth
                )
                assert r.status_code == 503, r.text
                assert r.json()["code"] == "queue_unavailable"
            finally:
                await asyncio.to_thread(broker.start)

            deadline = time.monotonic() + RECOVERY_TIMEOUT
            while True:
                r = await client.post(
                    "/v1/collections/docs/documents?wait=true",
                    json=[{"id": "2", "title": "after the outage"}],
                    headers=auth,
                )
                if r.status_code != 503 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "succeeded"
            found = await api.search(auth, "docs", q="outage")
            assert sorted(hit["id"] for hit in found.json()["hits"]) == ["1", "2"]
