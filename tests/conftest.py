"""Fixtures shared by every test layer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from tenantsearch.app import create_app
from tenantsearch.settings import Settings, load_settings
from tests.support.api import ADMIN_KEY, Api
from tests.support.opensearch import drop_prefix, new_prefix
from tests.support.opensearch_node import build_node, start_node
from tests.support.services import postgres, rabbitmq, redis

SEARCH_BACKENDS = ("tantivy", "opensearch")
_FUNCTIONAL_DIR = Path(__file__).parent / "functional"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Functional tests run once per search backend (ids ``[tantivy]``, ``[opensearch]``)."""
    if "search_backend_kind" in metafunc.fixturenames and metafunc.definition.path.is_relative_to(
        _FUNCTIONAL_DIR
    ):
        metafunc.parametrize("search_backend_kind", SEARCH_BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def opensearch_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real OpenSearch node for the whole session, started on first use, removed at the end.

    Tests share it; each one works under its own index prefix (``tests/support/opensearch.py``).
    """
    build_node()
    node = start_node(tmp_path_factory.mktemp("opensearch"), node_name="session", heap="512m")
    try:
        yield node.url
    finally:
        node.close()


@pytest.fixture(scope="session")
def rabbitmq_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real RabbitMQ broker for the session (tests use their own queue names)."""
    with rabbitmq(tmp_path_factory.mktemp("rabbitmq")) as broker:
        yield broker.url


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real PostgreSQL server for the session (tests create their own databases)."""
    with postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Redis server for the session (tests use their own key prefixes)."""
    with redis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def search_backend_kind(request: pytest.FixtureRequest) -> str:
    """The search engine of the ``settings`` fixture: tantivy unless parametrized."""
    return str(getattr(request, "param", "tantivy"))


@pytest.fixture
def settings(
    tmp_path: Path, search_backend_kind: str, request: pytest.FixtureRequest
) -> Iterator[Settings]:
    engine: dict[str, Any] = {}
    if search_backend_kind == "opensearch":
        url: str = request.getfixturevalue("opensearch_url")
        engine = {
            "search_backend": "opensearch",
            "opensearch_url": url,
            "opensearch_index_prefix": new_prefix(),
            "opensearch_shards": 1,
            "opensearch_replicas": 0,
        }
    yield load_settings(
        environ={},
        data_dir=tmp_path / "data",
        admin_key=ADMIN_KEY,
        log_level="warning",
        indexer_linger_ms=0,
        **engine,
    )
    if engine:
        drop_prefix(url, engine["opensearch_index_prefix"])


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The whole app in-process (lifespan included: the indexer runs), over ASGI."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture
def api(client: httpx.AsyncClient) -> Api:
    return Api(client)
