"""Fixtures of the attack suite: the whole app in-process, wired to a real loopback OIDC issuer.

These fixtures do not build on ``tests/conftest.py``'s ``settings``/``client``: the attack suite
runs on the embedded defaults (Tantivy, SQLite) so it stays fast, and it needs its own OIDC
settings (JWKS cache and refetch intervals). Identity and authorization are decided in the
service layer before any backend is reached, so the backend does not change what is tested here.

To stay fast, one app (``sec_client``) and one issuer serve a whole test module: every test works
in tenants of its own. Tests that change the issuer (rotate keys, make it fail) or count its
requests exactly start their own issuer (``own_issuer``) and app (``running(make_settings(...))``).
Every async test and fixture of this directory runs in its module's event loop
(``pytest.mark.asyncio(loop_scope="module")``), the loop the shared app lives in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tenantsearch.settings import Settings
from tests.security.world import running, security_settings
from tests.support.api import Api
from tests.support.oidc_issuer import OidcIssuer

SettingsFactory = Callable[..., Settings]


@pytest.fixture(scope="module")
def issuer() -> Iterator[OidcIssuer]:
    """The identity provider the shared app trusts: one RSA and one EC signing key. Do not
    rotate or break it; use ``own_issuer`` for that."""
    with OidcIssuer(keys=("RSA", "EC")) as server:
        yield server


@pytest.fixture
def own_issuer() -> Iterator[OidcIssuer]:
    """An issuer for one test alone (one RSA and one EC key), free to rotate, fail and count."""
    with OidcIssuer(keys=("RSA", "EC")) as server:
        yield server


@pytest.fixture
def attacker() -> Iterator[OidcIssuer]:
    """Another loopback server holding an attacker's key; the app must never talk to it."""
    with OidcIssuer(keys=("RSA",)) as server:
        yield server


@pytest.fixture(scope="module")
def make_settings(tmp_path_factory: pytest.TempPathFactory, issuer: OidcIssuer) -> SettingsFactory:
    """Settings for an app trusting ``issuer`` (or ``trust=`` another); keyword arguments
    override any setting. Each call gets a data directory of its own."""

    def make(*, trust: OidcIssuer | None = None, **overrides: Any) -> Settings:
        data_dir = tmp_path_factory.mktemp("data")
        return security_settings(data_dir, trust or issuer, **overrides)

    return make


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sec_client(make_settings: SettingsFactory) -> AsyncIterator[httpx.AsyncClient]:
    """The app with OIDC on (JWKS cached 300 s, unknown kids refetched at most every 30 s)."""
    async with running(make_settings()) as client:
        yield client


@pytest.fixture(scope="module")
def sec_api(sec_client: httpx.AsyncClient) -> Api:
    return Api(sec_client)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plain_client(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[httpx.AsyncClient]:
    """The app without OIDC: API keys and tenant tokens only."""
    async with running(security_settings(tmp_path_factory.mktemp("plain"), None)) as client:
        yield client


@pytest.fixture(scope="module")
def plain_api(plain_client: httpx.AsyncClient) -> Api:
    return Api(plain_client)
