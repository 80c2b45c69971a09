"""One typed Settings object, read from ``TENANTSEARCH_*`` environment variables.

Secrets can also come from files: ``TENANTSEARCH_ADMIN_KEY_FILE=/run/secrets/admin`` reads the key
from that file (trailing newline stripped). Setting both the variable and its ``_FILE`` form is an
error. Validation happens once at start-up; the error names the variable.
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
SECRET_FIELDS = ("admin_key",)


class SearchBackendKind(StrEnum):
    TANTIVY = "tantivy"


class QueueBackendKind(StrEnum):
    SQLITE = "sqlite"


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

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy async URL; default: SQLite in the data dir.",
    )
    search_backend: SearchBackendKind = SearchBackendKind.TANTIVY
    queue_backend: QueueBackendKind = QueueBackendKind.SQLITE

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
    task_retention_days: Annotated[int, Field(ge=1)] = 7

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

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        if self.oidc_issuer and not self.oidc_audience:
            raise ValueError("TENANTSEARCH_OIDC_AUDIENCE is required with TENANTSEARCH_OIDC_ISSUER")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
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
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and not key.endswith("_FILE"):
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
