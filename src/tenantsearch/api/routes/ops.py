"""Operations endpoints: liveness and readiness (unauthenticated: they show no tenant data) and
metrics (per-tenant figures: the metrics token or the platform admin key)."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tenantsearch.api.deps import ServicesDep
from tenantsearch.errors import ServiceUnavailable

router = APIRouter(tags=["operations"])

READY_TIMEOUT_SECONDS = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> Response:
    """Every dependency answers: 200 ``ready``. Only the metadata database failing: 200
    ``degraded`` (searches and reads by id go on from the metadata this process verified, for
    ``TENANTSEARCH_METADATA_STALE_SECONDS``; writes and admin calls answer 503), so a balancer keeps
    the process serving reads. Anything else failing: 503 naming the failing ones."""
    checks = {
        "metadata": services.store.ping(),
        "queue": services.queue.ping(),
        "search": services.backend.ping(),
    }
    failing: list[str] = []
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check, READY_TIMEOUT_SECONDS)
        except (ServiceUnavailable, TimeoutError):
            failing.append(name)
    if failing == ["metadata"] and services.stale.seconds > 0:
        body = {
            "status": "degraded",
            "unavailable": failing,
            "stale_metadata_seconds": round(services.stale.oldest_age(), 3),
        }
        return Response(orjson.dumps(body), media_type="application/json")
    if failing:
        raise ServiceUnavailable(f"not ready: {', '.join(failing)} unavailable", code="not_ready")
    return Response(b'{"status":"ready"}', media_type="application/json")


@router.get("/metrics")
async def metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus metrics; ``Authorization: Bearer`` the metrics token or the platform admin key."""
    await services.auth.check_metrics_access(request.headers.get("authorization"))
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
