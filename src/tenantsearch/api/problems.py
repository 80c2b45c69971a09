"""The error handler table: every failure becomes ``application/problem+json``.

Keyed by exception class. Our own errors carry their status and code; FastAPI's request validation
errors become ``invalid_input`` (or ``malformed_json``) with the field paths; Starlette's HTTP
errors (unknown route, wrong method) keep their status. Anything else is logged with its traceback
and answered as a bare 500 with the request id: never a stack trace or an engine message.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from tenantsearch.errors import TenantSearchError

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"

_HTTP_CODES = {
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("payload_too_large", "The request is too large"),
}


def problem_response(
    request: Request | None,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    request_id = getattr(request.state, "request_id", None) if request is not None else None
    if request_id:
        body["request_id"] = request_id
    if errors:
        body["errors"] = errors
    return Response(
        orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


async def _ours(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TenantSearchError)
    if exc.status >= 500:
        # Only the cause's type: its text may quote an engine's or a proxy's response.
        cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else None
        log.warning("request_failed", code=exc.code, status=exc.status, cause=cause)
    return problem_response(
        request,
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        errors=[e.as_dict() for e in exc.errors] or None,
        headers=_retry_after(exc),
    )


def _retry_after(exc: TenantSearchError) -> dict[str, str] | None:
    """A dependency that cannot serve right now says when to try again (1 s unless the error
    names its own wait): clients and balancers then back off instead of hammering it."""
    if exc.status == 503 and "Retry-After" not in exc.headers:
        return {**exc.headers, "Retry-After": "1"}
    return exc.headers or None


def _path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        where, parts = parts[0], parts[1:]
        prefix = "" if where == "body" else f"{where}:"
        return prefix + "/" + "/".join(parts)
    return "/" + "/".join(parts)


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = exc.errors()
    if any(d.get("type") == "json_invalid" for d in details):
        return problem_response(
            request,
            status=400,
            code="malformed_json",
            title="The request is not valid",
            detail="the body is not valid JSON",
        )
    errors = [
        {"path": _path(tuple(d.get("loc", ()))), "message": str(d.get("msg"))} for d in details
    ]
    return problem_response(
        request,
        status=400,
        code="invalid_input",
        title="The request is not valid",
        detail="; ".join(f"{e['path']}: {e['message']}" for e in errors[:5]),
        errors=errors[:100],
    )


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "HTTP error"))
    detail = exc.detail if isinstance(exc.detail, str) else title
    return problem_response(
        request,
        status=exc.status_code,
        code=code,
        title=title,
        detail=detail,
        headers=dict(exc.headers) if exc.headers else None,
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled_error", error_type=type(exc).__name__)
    return problem_response(
        request,
        status=500,
        code="internal_error",
        title="Internal error",
        detail="the request failed unexpectedly; quote the request_id when you report it",
    )


Handler = Callable[[Request, Exception], Coroutine[Any, Any, Response]]

HANDLERS: dict[type[Exception], Handler] = {
    TenantSearchError: _ours,
    RequestValidationError: _validation,
    StarletteHTTPException: _http,
    Exception: _unexpected,
}


def install(app: FastAPI) -> None:
    for exc_class, handler in HANDLERS.items():
        app.add_exception_handler(exc_class, handler)
