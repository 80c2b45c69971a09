"""The project's own errors.

Every failure a client can see is one of these: a stable machine-readable ``code``, an HTTP status,
a human ``detail`` and, for bad input, the offending field paths. Adapters translate driver errors
into these (``raise ... from exc``); the API turns them into ``application/problem+json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One problem with one part of the input, located by a JSON-pointer-like path."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class TenantSearchError(Exception):
    """Base of every error the service reports to a client."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Sequence[FieldError] = (),
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.detail = detail or self.title
        self.errors = tuple(errors)
        if code is not None:
            self.code = code
        self.headers = headers or {}
        super().__init__(self.detail)


class InvalidInput(TenantSearchError):
    status = 400
    code = "invalid_input"
    title = "The request is not valid"


class Unauthenticated(TenantSearchError):
    status = 401
    code = "unauthenticated"
    title = "Missing or invalid credentials"


class Forbidden(TenantSearchError):
    status = 403
    code = "forbidden"
    title = "The credential does not allow this action"


class NotFound(TenantSearchError):
    status = 404
    code = "not_found"
    title = "Not found"


class MethodNotAllowed(TenantSearchError):
    status = 405
    code = "method_not_allowed"
    title = "Method not allowed"


class Conflict(TenantSearchError):
    status = 409
    code = "conflict"
    title = "Conflict"


class PayloadTooLarge(TenantSearchError):
    status = 413
    code = "payload_too_large"
    title = "The request is too large"


class UnsupportedMediaType(TenantSearchError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class TooManyRequests(TenantSearchError):
    status = 429
    code = "too_many_requests"
    title = "Too many requests"


class ServiceUnavailable(TenantSearchError):
    """A dependency (engine, queue, database) cannot serve the request right now."""

    status = 503
    code = "service_unavailable"
    title = "The service is temporarily unavailable"


class Misconfigured(ServiceUnavailable):
    """A setting makes a dependency unusable (a CA file that cannot be read): waiting does not
    mend it, so a process starting up stops with this message instead of trying again."""

    code = "misconfigured"


class BackendError(TenantSearchError):
    """An engine failure that is not the client's fault and not (known to be) transient."""

    status = 502
    code = "backend_error"
    title = "The search engine failed to answer"
