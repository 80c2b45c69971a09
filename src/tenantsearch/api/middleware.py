"""Pure ASGI middleware: request id, access log, metrics, and the request body size limit.

The body limit is ours rather than FastAPI's ``max_body_size``: Starlette's limiter answers a
declared oversize body with a ``text/plain`` 413 of its own, replacing whatever the error handler
table produced, so clients would get the one error that is not problem+json.

Written against ASGI directly rather than Starlette's BaseHTTPMiddleware, which buffers streaming
and costs a task per request on the hot path.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import structlog
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantsearch.api.problems import problem_response
from tenantsearch.limits.service import headers_of
from tenantsearch.observability.metrics import Metrics

log = structlog.get_logger("tenantsearch.access")

_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if 0 < len(text) <= 64 and set(text) <= _REQUEST_ID_OK:
                return text
    return None


class BodyLimit:
    """413 problem+json for a body over ``max_bytes``: by Content-Length before the app runs, or
    by counting the stream (raised from ``receive`` as an HTTPException, which FastAPI passes on
    to the handler table instead of turning it into a 400)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> StarletteHTTPException:
        return StarletteHTTPException(413, f"a request body is at most {self.max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                request = Request(scope)
                error = self._error()
                response = problem_response(
                    request,
                    status=413,
                    code="payload_too_large",
                    title="The request is too large",
                    detail=str(error.detail),
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._error()
            return message

        await self.app(scope, counting_receive, send)


class RequestContext:
    """Binds a request id (the client's ``X-Request-Id`` if sane, else a new one), echoes it,
    and logs and measures every request with its route template and tenant."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _client_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers: list[Any] = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                decision = scope["state"].get("ratelimit")
                if decision is not None and status != 429:  # a 429 carries its own
                    headers.extend(
                        (k.lower().encode(), v.encode()) for k, v in headers_of(decision).items()
                    )
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            tenant = scope["state"].get("tenant", "-")
            method = scope.get("method", "")
            self.metrics.requests.labels(tenant, route, method, f"{status // 100}xx").inc()
            self.metrics.latency.labels(route, method).observe(elapsed)
            log.info(
                "request",
                method=method,
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                tenant=tenant,
            )
            structlog.contextvars.clear_contextvars()
