"""Fixtures of the reliability tests: a PostgreSQL database per test, a private broker, and
stacks of real tenantsearch processes (``tests/support/stack.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.support.services import Postgres, RabbitMq, postgres, postgres_database, rabbitmq
from tests.support.stack import Stack, StackConfig

StackFactory = Callable[..., Stack]


@pytest.fixture
def database_url(postgres_url: str) -> Iterator[str]:
    with postgres_database(postgres_url) as url:
        yield url


@pytest.fixture
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMq]:
    """A broker of the test's own: the session's one must not be restarted."""
    with rabbitmq(tmp_path_factory.mktemp("broker")) as broker:
        yield broker


@pytest.fixture
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A PostgreSQL server of the test's own: the session's one must not be stopped."""
    with postgres(tmp_path_factory.mktemp("pg")) as server:
        yield server


@pytest.fixture
def durable_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A PostgreSQL server of the test's own whose commits survive a SIGKILL of the server."""
    with postgres(tmp_path_factory.mktemp("pg"), durable=True) as server:
        yield server


@pytest.fixture
def make_stack(
    tmp_path: Path, opensearch_url: str, rabbitmq_url: str, database_url: str
) -> Iterator[StackFactory]:
    """``make_stack(env=..., broker_url=...)``: a Stack (not started yet) with its own queue name
    and index prefix, stopped and removed after the test."""
    with contextlib.ExitStack() as stacks:

        def make(*, env: Mapping[str, str] | None = None, broker_url: str | None = None) -> Stack:
            config = StackConfig(
                opensearch_url, broker_url or rabbitmq_url, database_url, env=dict(env or {})
            )
            return stacks.enter_context(Stack(tmp_path, config))

        yield make
