"""Admission: every authenticated request spends its tenant's budget, or is refused with 429.

Failure policy (docs/operations.md): when the limiter's backend cannot answer within its timeout,
searches, reads and writes are let through (fail open) with a warning and a metric, so a Redis
outage does not take the service down; minting credentials and every administrative call fail
closed (503), since those are what an attacker would flood while limits are off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import structlog

from tenantsearch.auth.rbac import Action, Principal
from tenantsearch.cache.refresh_ahead import RefreshAheadCache, StaleServing
from tenantsearch.errors import ServiceUnavailable, TooManyRequests
from tenantsearch.limits.plans import BUDGET_OF, Budget, Limits, effective
from tenantsearch.limits.port import Decision, LimiterUnavailable, RateLimiter
from tenantsearch.observability.metrics import Metrics
from tenantsearch.store.repository import MetadataStore

log = structlog.get_logger(__name__)

LIMITS_CACHE_SECONDS = 1.0
FAIL_OPEN = frozenset({Budget.SEARCH, Budget.WRITE})


@dataclass(frozen=True)
class Admission:
    rate: Decision
    quota: Decision | None


def headers_of(decision: Decision) -> dict[str, str]:
    """IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers)."""
    return {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(math.ceil(decision.reset_after)),
    }


class LimitService:
    def __init__(
        self,
        limiter: RateLimiter,
        store: MetadataStore,
        metrics: Metrics,
        *,
        default_plan: str = "standard",
        stale: StaleServing | None = None,
    ) -> None:
        self._limiter = limiter
        self._store = store
        self._metrics = metrics
        self._default_plan = default_plan
        self._limits: RefreshAheadCache[str, Limits] = RefreshAheadCache(
            LIMITS_CACHE_SECONDS, stale=stale
        )

    def forget(self, tenant_id: str) -> None:
        self._limits.pop(tenant_id)

    async def limits_of(self, tenant_id: str) -> Limits:

        async def load() -> Limits:
            tenant = await self._store.get_tenant(tenant_id)
            plan = tenant.plan if tenant else self._default_plan
            return effective(plan, tenant.limits if tenant else None)

        limits = await self._limits.get(tenant_id, load)
        assert limits is not None  # load never answers None
        return limits

    async def admit(self, principal: Principal, action: Action) -> Admission | None:
        """Spend one unit of the tenant's budget for ``action``; None when not limited."""
        tenant = principal.tenant_id
        if tenant is None:
            return None  # the platform admin operates the service; it is not metered
        budget = BUDGET_OF[action]
        limits = await self.limits_of(tenant)
        try:
            rate = await self._limiter.acquire(f"rate:{tenant}:{budget.value}", limits.rate(budget))
            if not rate.allowed:
                raise TooManyRequests(
                    f"the {budget.value} rate limit of this tenant is reached; retry later",
                    code="rate_limited",
                    headers={
                        **headers_of(rate),
                        "Retry-After": str(max(1, math.ceil(rate.retry_after))),
                    },
                )
            quota = None
            if limits.daily_requests is not None:
                quota = await self._limiter.consume_quota(f"day:{tenant}", limits.daily_requests)
                if not quota.allowed:
                    raise TooManyRequests(
                        "the daily request quota of this tenant is used up",
                        code="daily_quota_exceeded",
                        headers={
                            **headers_of(quota),
                            "Retry-After": str(max(1, math.ceil(quota.retry_after))),
                        },
                    )
        except LimiterUnavailable as exc:
            self._metrics.limiter_unavailable.labels(budget.value).inc()
            if budget in FAIL_OPEN:
                log.warning("rate_limiter_unavailable_fail_open", budget=budget.value)
                return None
            log.warning("rate_limiter_unavailable_fail_closed", budget=budget.value)
            raise ServiceUnavailable(
                "rate limits cannot be checked right now; retry shortly",
                code="rate_limiter_unavailable",
            ) from exc
        return Admission(rate=rate, quota=quota)
