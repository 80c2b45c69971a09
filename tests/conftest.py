"""Fixtures shared by every test layer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from tenantsearch.app import create_app
from tenantsearch.settings import Settings, load_settings
from tests.support.api import ADMIN_KEY, Api


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        environ={},
        data_dir=tmp_path / "data",
        admin_key=ADMIN_KEY,
        log_level="warning",
        indexer_linger_ms=0,
    )


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
