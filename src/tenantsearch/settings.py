"""One typed Settings object, read from ``TENANTSEARCH_*`` environment variables.

Secrets (``SECRET_FIELDS``: keys, passwords, URLs that may hold one) can also come from files:
``TENANTSEARCH_ADMIN_KEY_FILE=/run/secrets/admin`` reads the key from that file (trailing newline
stripped). Setting both the variable and its ``_FILE`` form is an error. Validation happens once
at start-up; the error names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "TENANTSEARCH_"
SECRET_FIELDS = (
    "admin_key",
    "opensearch_password",
    "opensearch_api_key",
    "database_url",
    "rabbitmq_url",
    "metrics_token",
    "redis_url",
)


class SearchBackendKind(StrEnum):
    TANTIVY = "tantivy"
    OPENSEARCH = "opensearch"


class QueueBackendKind(StrEnum):
    SQLITE = "sqlite"
    RABBITMQ = "rabbitmq"


class LimiterBackendKind(StrEnum):
    MEMORY = "memory"
    REDIS = "redis"


class CacheBackendKind(StrEnum):
    MEMORY = "memory"
    REDIS = "redis"
    NONE = "none"


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, validate_default=True
    )

    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Field(ge=1, le=65535)] = 8080
    data_dir: Path = Path("data")
    admin_key: SecretStr | None = None

    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy async URL (it may hold a password); default: SQLite in the data "
        "dir. PostgreSQL: postgresql+asyncpg://user:password@host:5432/db.",
    )
    database_pool_size: Annotated[int, Field(ge=1, le=1000)] = 5
    search_backend: SearchBackendKind = SearchBackendKind.TANTIVY
    queue_backend: QueueBackendKind = QueueBackendKind.SQLITE

    # The RabbitMQ queue (queue_backend=rabbitmq).
    rabbitmq_url: SecretStr | None = Field(
        default=None, description="AMQP URL, e.g. amqp://user:password@host:5672/vhost."
    )
    rabbitmq_queue: Annotated[str, Field(min_length=1, max_length=200)] = "tenantsearch.writes"
    rabbitmq_prefetch: Annotated[int, Field(ge=1, le=10_000)] = 100
    rabbitmq_publish_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0

    # The OpenSearch engine (search_backend=opensearch).
    opensearch_url: str = Field(
        default="http://127.0.0.1:9200", description="Comma-separated node URLs (http or https)."
    )
    opensearch_username: str | None = None
    opensearch_password: SecretStr | None = None
    opensearch_api_key: SecretStr | None = None
    opensearch_ca_file: Path | None = None
    opensearch_verify_certs: bool = True
    opensearch_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 10.0
    opensearch_pool_size: Annotated[int, Field(ge=1, le=1000)] = 10
    opensearch_index_prefix: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")] = "ts"
    opensearch_shards: Annotated[int, Field(ge=1, le=1024)] = 1
    opensearch_replicas: Annotated[int, Field(ge=0, le=16)] = 1
    opensearch_dedicated_tenants: str = Field(
        default="", description="Comma-separated tenant ids that get their own indices."
    )

    log_level: str = "info"
    log_format: LogFormat = LogFormat.JSON

    max_body_bytes: Annotated[int, Field(ge=1024)] = 20 * 1024 * 1024
    max_document_bytes: Annotated[int, Field(ge=256)] = 1024 * 1024
    max_batch_documents: Annotated[int, Field(ge=1)] = 10_000
    max_search_limit: Annotated[int, Field(ge=1, le=10_000)] = 1000
    max_wait_seconds: Annotated[float, Field(gt=0, le=300)] = 30.0

    indexer_batch_documents: Annotated[int, Field(ge=1)] = 5000
    indexer_linger_ms: Annotated[int, Field(ge=0, le=10_000)] = 20
    indexer_max_deliveries: Annotated[int, Field(ge=1)] = 5
    indexer_concurrency: Annotated[int, Field(ge=1, le=64)] = Field(
        default=2, description="Batches one indexer applies at the same time (its lanes)."
    )
    indexer_retry_budget_seconds: Annotated[float, Field(gt=0, le=1500)] = Field(
        default=120.0,
        description="How long a write the engine keeps turning away (429, a write block) is "
        "retried before it is dead-lettered; an unreachable engine does not count.",
    )
    task_retention_days: Annotated[int, Field(ge=1)] = 7
    metadata_stale_seconds: Annotated[float, Field(ge=0, le=86400)] = Field(
        default=300.0,
        description="While the metadata database cannot be reached, how long past their normal "
        "1 s refresh this process keeps answering with the credentials, tenants, plans and "
        "collections it last verified (0: not at all); a key revoked elsewhere just before an "
        "outage stays valid here for up to this long.",
    )
    publish_lease_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=30.0,
        description="How long a write's queue message is left to the API process that recorded "
        "it before another process (a same-key retry, the sweeper) publishes it again; keep it "
        "above the queue's publish timeout.",
    )
    publish_sweep_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=5.0,
        description="How often each API process publishes the queue messages whose lease ended.",
    )
    max_tenant_backlog_documents: Annotated[int, Field(ge=1)] = 500_000
    max_tenant_backlog_bytes: Annotated[int, Field(ge=1024)] = 2 * 1024**3
    max_backlog_documents: Annotated[int, Field(ge=1)] = 5_000_000

    # Rate limits, quotas and the search result cache.
    redis_url: SecretStr | None = None
    limiter_backend: LimiterBackendKind = LimiterBackendKind.MEMORY
    limiter_timeout_seconds: Annotated[float, Field(gt=0, le=5)] = 0.05
    cache_backend: CacheBackendKind = CacheBackendKind.MEMORY
    cache_ttl_seconds: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    cache_max_entries: Annotated[int, Field(ge=1)] = 10_000
    default_plan: str = "standard"

    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for GET /metrics (which names tenants); the platform admin "
        "key is accepted too.",
    )

    # JWT bearer tokens from an OIDC issuer (off unless oidc_issuer is set).
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_tenant_claim: str = "tenant_id"
    oidc_roles_claim: str = "roles"
    oidc_jwks_file: Path | None = Field(
        default=None, description="Read the JWKS from this file instead of the issuer's discovery."
    )
    oidc_jwks_cache_seconds: Annotated[float, Field(gt=0)] = 300.0
    oidc_jwks_refetch_seconds: Annotated[float, Field(ge=0)] = 30.0
    oidc_leeway_seconds: Annotated[float, Field(ge=0, le=300)] = 30.0

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.lower()
        if value not in ("debug", "info", "warning", "error"):
            raise ValueError("must be one of debug, info, warning, error")
        return value

    @field_validator("opensearch_url")
    @classmethod
    def _opensearch_urls(cls, value: str) -> str:
        hosts = [h.strip() for h in value.split(",") if h.strip()]
        if not hosts or not all(h.startswith(("http://", "https://")) for h in hosts):
            raise ValueError("a comma-separated list of http:// or https:// URLs")
        return ",".join(hosts)

    @model_validator(mode="after")
    def _opensearch_credentials(self) -> Settings:
        if (self.opensearch_username is None) != (self.opensearch_password is None):
            raise ValueError(
                "set both TENANTSEARCH_OPENSEARCH_USERNAME and TENANTSEARCH_OPENSEARCH_PASSWORD"
            )
        if self.opensearch_username is not None and self.opensearch_api_key is not None:
            raise ValueError("set an OpenSearch API key or a username and password, not both")
        return self

    @property
    def opensearch_hosts(self) -> list[str]:
        return self.opensearch_url.split(",")

    @property
    def opensearch_dedicated_tenant_ids(self) -> list[str]:
        return [t.strip() for t in self.opensearch_dedicated_tenants.split(",") if t.strip()]

    @field_validator("default_plan")
    @classmethod
    def _known_plan(cls, value: str) -> str:
        from tenantsearch.limits.plans import PLANS

        if value not in PLANS:
            raise ValueError(f"must be one of {', '.join(PLANS)}")
        return value

    @model_validator(mode="after")
    def _redis_complete(self) -> Settings:
        uses_redis = (
            self.limiter_backend == LimiterBackendKind.REDIS
            or self.cache_backend == CacheBackendKind.REDIS
        )
        if uses_redis and self.redis_url is None:
            raise ValueError(
                "TENANTSEARCH_REDIS_URL (or _FILE) is required with a redis limiter or cache"
            )
        return self

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        if self.oidc_issuer and not self.oidc_audience:
            raise ValueError("TENANTSEARCH_OIDC_AUDIENCE is required with TENANTSEARCH_OIDC_ISSUER")
        return self

    @model_validator(mode="after")
    def _queue_complete(self) -> Settings:
        if self.queue_backend == QueueBackendKind.RABBITMQ and not self.rabbitmq_url:
            raise ValueError(
                "TENANTSEARCH_RABBITMQ_URL (or _FILE) is required with TENANTSEARCH_QUEUE_BACKEND"
                "=rabbitmq"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url.get_secret_value()
        return f"sqlite+aiosqlite:///{(self.data_dir / 'metadata.db').resolve()}"


class SettingsError(Exception):
    """Start-up configuration is invalid; the message names each bad variable."""


def _read_secret_files(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in SECRET_FIELDS:
        var = f"{ENV_PREFIX}{name.upper()}"
        file_var = f"{var}_FILE"
        if file_var not in environ:
            continue
        if var in environ:
            raise SettingsError(f"{var} and {file_var} are both set; set only one")
        try:
            values[name] = Path(environ[file_var]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(f"{file_var}: cannot read {environ[file_var]!r}: {exc}") from exc
        if not values[name]:
            raise SettingsError(f"{file_var}: the file {environ[file_var]!r} is empty")
    return values


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from ``environ`` (default: os.environ), ``_FILE`` secrets and overrides."""
    env = dict(os.environ if environ is None else environ)
    values = _read_secret_files(env)
    # Only secrets have _FILE variants; other names may end in _FILE (OPENSEARCH_CA_FILE).
    secret_file_vars = {f"{ENV_PREFIX}{name.upper()}_FILE" for name in SECRET_FIELDS}
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and key not in secret_file_vars:
            name = key[len(ENV_PREFIX) :].lower()
            if name in Settings.model_fields:
                values[name] = value
    values.update(overrides)
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "settings"
            var = f"{ENV_PREFIX}{loc.upper()}" if loc in Settings.model_fields else loc
            problems.append(f"{var}: {err['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from exc
