"""Fault injection for the reliability tests: ``TENANTSEARCH_FAILPOINT`` names one point of the
write path at which the process SIGKILLs itself, a moment no signal sent from outside can hit.
Off by default and never to be set in production (docs/operations.md, "Fault injection").

It is deliberately not a ``Settings`` field: ``tenantsearch check-config`` does not list it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from typing import NoReturn

import structlog

log = structlog.get_logger(__name__)

INDEXER_POINTS = frozenset({"after_apply_before_ack"})
"""Points in the indexer (``tenantsearch.ingest.indexer``)."""

PUBLISHER_POINTS = frozenset({"after_task_commit", "after_publish_before_record"})
"""Points in an API process's publishing of a task (``tenantsearch.ingest.outbox``): the task and
its message are committed; the queue confirmed the message, before the outbox row is deleted."""
QUEUE_POINTS = frozenset({"after_ledger_write"})
"""Points in the RabbitMQ adapter's publish (``tenantsearch.queue.rabbitmq``), between the two
above: the message is recorded in the backlog ledger, before the broker publish."""
API_POINTS = PUBLISHER_POINTS | QUEUE_POINTS


def from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The failpoint set in the environment, or None; an unknown name is an error."""
    point = (os.environ if environ is None else environ).get("TENANTSEARCH_FAILPOINT") or None
    if point is not None and point not in INDEXER_POINTS | API_POINTS:
        raise ValueError(f"unknown failpoint {point!r}")
    return point


def chosen(points: frozenset[str]) -> str | None:
    """The failpoint set in the environment if it is one of ``points`` (a component's own)."""
    point = from_env()
    return point if point in points else None


def kill(point: str) -> NoReturn:
    log.warning("failpoint_kill", failpoint=point)
    os.kill(os.getpid(), signal.SIGKILL)
    raise SystemExit(137)  # not reached: SIGKILL cannot be caught
