"""Plans: named sets of rates and quotas, with per-tenant overrides.

A tenant is on one plan (``TENANTSEARCH_DEFAULT_PLAN`` when created) and may carry overrides set
by the platform admin through ``PATCH /v1/tenants/{id}`` (``{"plan": ..., "limits": {...}}``).
Budgets are separate for searches and reads, for writes, and for administrative calls, so a
tenant that floods one cannot starve the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

from tenantsearch.auth.rbac import Action
from tenantsearch.errors import FieldError
from tenantsearch.limits.port import Rate


class Budget(StrEnum):
    SEARCH = "search"
    WRITE = "write"
    ADMIN = "admin"


BUDGET_OF: Mapping[Action, Budget] = {
    Action.SEARCH: Budget.SEARCH,
    Action.DOCUMENTS_READ: Budget.SEARCH,
    Action.COLLECTIONS_READ: Budget.SEARCH,
    Action.TASKS_READ: Budget.SEARCH,
    Action.DOCUMENTS_WRITE: Budget.WRITE,
    Action.COLLECTIONS_WRITE: Budget.ADMIN,
    Action.KEYS_MANAGE: Budget.ADMIN,
    Action.TOKENS_MANAGE: Budget.ADMIN,
    Action.AUDIT_READ: Budget.ADMIN,
    Action.TENANTS_MANAGE: Budget.ADMIN,
    Action.DEAD_LETTERS_MANAGE: Budget.ADMIN,
    Action.USAGE_READ: Budget.ADMIN,
}
"""Every action spends one budget (tests check the table covers every action)."""


@dataclass(frozen=True)
class Limits:
    """Effective limits of one tenant: ``<budget>_rate`` requests per ``<budget>_period`` seconds
    (default 1), plus ``<budget>_burst`` at once; ``None`` quotas are unlimited.
    ``max_stored_bytes`` bounds the tenant's stored documents' bytes (the search port's
    ``stored_bytes``: their original JSON, summed over every collection)."""

    search_rate: int
    search_burst: int
    write_rate: int
    write_burst: int
    admin_rate: int
    admin_burst: int
    daily_requests: int | None
    max_documents: int | None
    max_stored_bytes: int | None = None
    search_period: int = 1
    write_period: int = 1
    admin_period: int = 1

    def rate(self, budget: Budget) -> Rate:
        match budget:
            case Budget.SEARCH:
                return Rate(self.search_rate, self.search_period, self.search_burst)
            case Budget.WRITE:
                return Rate(self.write_rate, self.write_period, self.write_burst)
            case Budget.ADMIN:
                return Rate(self.admin_rate, self.admin_period, self.admin_burst)

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)


MB = 1_000_000
GB = 1_000 * MB
TB = 1_000 * GB

PLANS: Mapping[str, Limits] = {
    "free": Limits(
        10, 20, 2, 5, 2, 5, daily_requests=10_000, max_documents=10_000, max_stored_bytes=100 * MB
    ),
    "standard": Limits(
        100,
        200,
        20,
        40,
        10,
        20,
        daily_requests=2_000_000,
        max_documents=1_000_000,
        max_stored_bytes=10 * GB,
    ),
    "enterprise": Limits(
        1000,
        2000,
        200,
        400,
        50,
        100,
        daily_requests=None,
        max_documents=100_000_000,
        max_stored_bytes=1 * TB,
    ),
    "unlimited": Limits(
        100_000,
        100_000,
        100_000,
        100_000,
        10_000,
        10_000,
        daily_requests=None,
        max_documents=None,
        max_stored_bytes=None,
    ),
}

_RATE_FIELDS = ("search_rate", "write_rate", "admin_rate")
_BURST_FIELDS = ("search_burst", "write_burst", "admin_burst")
_QUOTA_FIELDS = ("daily_requests", "max_documents", "max_stored_bytes")
_PERIOD_FIELDS = ("search_period", "write_period", "admin_period")
MAX_PERIOD = 86_400
MAX_RATE = 1_000_000


def check_overrides(raw: Mapping[str, Any]) -> dict[str, int | None]:
    """Validate a ``limits`` override object; raises :class:`OverrideErrors` naming each field."""
    errors: list[FieldError] = []
    out: dict[str, int | None] = {}
    for name, value in raw.items():
        here = f"/limits/{name}"
        if name in _RATE_FIELDS:
            ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_RATE
            message = f"an integer from 1 to {MAX_RATE} (per period)"
        elif name in _BURST_FIELDS:
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_RATE
            message = f"an integer from 0 to {MAX_RATE}"
        elif name in _PERIOD_FIELDS:
            ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_PERIOD
            message = f"an integer from 1 to {MAX_PERIOD} (seconds)"
        elif name in _QUOTA_FIELDS:
            ok = value is None or (
                isinstance(value, int) and not isinstance(value, bool) and value >= 1
            )
            message = "a positive integer, or null for unlimited"
        else:
            errors.append(FieldError(here, "unknown limit"))
            continue
        if not ok:
            errors.append(FieldError(here, f"must be {message}"))
            continue
        out[name] = value
    if errors:
        raise OverrideErrors(errors)
    return out


class OverrideErrors(Exception):
    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.path}: {e.message}" for e in errors))


def effective(plan: str, overrides: Mapping[str, Any] | None) -> Limits:
    base = PLANS.get(plan, PLANS["standard"])
    return replace(base, **dict(overrides or {}))
