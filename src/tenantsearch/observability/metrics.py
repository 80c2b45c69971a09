"""Prometheus metrics. One registry per app, so tests and several apps in a process don't clash."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "tenantsearch_http_requests_total",
            "HTTP requests by tenant, route and status class.",
            ["tenant", "route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tenantsearch_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.limiter_unavailable = Counter(
            "tenantsearch_rate_limiter_unavailable_total",
            "Requests whose rate limit could not be checked (search and writes pass, admin 503).",
            ["budget"],
            registry=self.registry,
        )
        self.cache_requests = Counter(
            "tenantsearch_search_cache_requests_total",
            "Search result cache lookups by tenant and outcome (hit, miss, error).",
            ["tenant", "outcome"],
            registry=self.registry,
        )
        self.documents_indexed = Counter(
            "tenantsearch_documents_indexed_total",
            "Document writes applied by the indexer, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.metadata_stale = Gauge(
            "tenantsearch_metadata_stale_seconds",
            "Age of the oldest credential, tenant, plan or collection record this process served "
            "from its cache in the last 10 s because the metadata database could not be reached "
            "(0: none; docs/operations.md).",
            registry=self.registry,
        )

    def watch_stale_metadata(self, oldest_age: Callable[[], float]) -> None:
        self.metadata_stale.set_function(oldest_age)
