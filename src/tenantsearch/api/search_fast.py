"""A shortcut for the hottest request: `POST /v1/collections/{name}/search` with a JSON body.

FastAPI's routing, dependency solving and response plumbing cost about as much CPU per search as
everything the search itself does in Python (``bench/opensearch_service.py`` profiles it; see
docs/benchmarks.md). This ASGI middleware sits inside ``RequestContext`` and ``BodyLimit`` (so
request ids, access logs, metrics and the body limit are unchanged) and runs the very same steps
as the declared route: ``Requires(Action.SEARCH)`` (authenticate, authorize, admit) and
``routes.search.run_search``.

It takes only requests it can answer exactly as the route would: a declared ``Content-Length``, a
JSON content type, and a body that parses and validates as ``SearchBody``. Anything else is handed
to FastAPI untouched (the body it read is replayed), so malformed and invalid bodies get the
route's own problem+json errors, after its own authentication, as before. Errors raised while
answering go through the same handler table (``api.problems.HANDLERS``); unexpected ones propagate
to the outer error middleware like any route's.
"""

from __future__ import annotations

import orjson
import pydantic
from fastapi import FastAPI
from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantsearch.api.deps import Requires, Services
from tenantsearch.api.problems import HANDLERS, Handler
from tenantsearch.api.routes.search import PATH, router, run_search
from tenantsearch.api.schemas import SearchBody
from tenantsearch.auth.rbac import Action


def _json_with_length(scope: Scope) -> bool:
    length = json = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = True
        elif name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            json = media == b"application/json"
    return length and json


class SearchFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._requires = Requires(Action.SEARCH)
        # The route's own object: it decides which requests are searches (path and method, as
        # routing does), and the access log and metrics name the request by its template.
        [self._route] = [r for r in router.routes if isinstance(r, Route) and r.path == PATH]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        match, child = self._route.matches(scope)
        if match is not Match.FULL or not _json_with_length(scope):
            await self.app(scope, receive, send)
            return
        raw = await _read(receive)
        if raw is None:
            return  # the client went away before sending its body: nobody to answer
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        try:
            body = SearchBody.model_validate(orjson.loads(raw))
        except (orjson.JSONDecodeError, pydantic.ValidationError):
            await self.app(scope, replay, send)  # the route answers with its own errors
            return
        app: FastAPI = scope["app"]
        scope["route"] = self._route
        services: Services = app.state.services
        request = Request(scope, replay)
        try:
            principal = await self._requires(request, services)
            name = child["path_params"]["name"]
            response = await run_search(services, principal, name, body, request)
        except Exception as exc:
            handler = _handler_for(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, replay, send)


async def _read(receive: Receive) -> bytes | None:
    """The whole body, or None when the client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _handler_for(exc: Exception) -> Handler | None:
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None  # unexpected: the outer error middleware answers 500 and logs it
        handler = HANDLERS.get(cls)
        if handler is not None:
            return handler
    return None
