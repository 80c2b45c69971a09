"""A metadata database that cannot be reached is MetadataUnavailable (503), never a driver error."""

from __future__ import annotations

import socket

import pytest

from tenantsearch.store.db import create_engine
from tenantsearch.store.repository import MetadataStore, MetadataUnavailable


async def test_a_refused_postgresql_connection_is_metadata_unavailable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = MetadataStore(create_engine(f"postgresql+asyncpg://u:p@127.0.0.1:{port}/db"))
    try:
        with pytest.raises(MetadataUnavailable) as caught:
            await store.ping()
        assert caught.value.status == 503
        with pytest.raises(MetadataUnavailable):
            await store.get_tenant("t")
    finally:
        await store.close()
