"""Structured logs: one JSON object per line, with the request id and tenant bound per request.

Request-scoped values live in structlog's contextvars, so every line logged while a request is
handled carries ``request_id`` and ``tenant`` without passing them around. Secrets are never bound:
keys appear only by their id, and a processor drops any event field whose name says secret.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from tenantsearch.settings import LogFormat

_SECRET_NAMES = ("secret", "password", "authorization", "token", "admin_key")


def _drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in list(event):
        if any(s in name.lower() for s in _SECRET_NAMES):
            event[name] = "[redacted]"
    return event


def configure_logging(level: str = "info", fmt: LogFormat = LogFormat.JSON) -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
        structlog.processors.format_exc_info,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt is LogFormat.JSON
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard library (uvicorn, alembic) go through structlog too.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "alembic"):
        logging.getLogger(name).setLevel(logging.getLevelName(level.upper()))
    logging.getLogger("uvicorn.access").disabled = True  # our middleware logs each request
