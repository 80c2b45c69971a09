"""API key format and settings validation: pure logic."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenantsearch.auth import keys
from tenantsearch.settings import SettingsError, load_settings


def test_generated_keys_parse_and_verify() -> None:
    new = keys.generate_key()
    parsed = keys.parse_token(new.token)
    assert parsed == (new.id, new.secret)
    assert keys.secret_matches(new.secret, new.secret_hash)
    assert not keys.secret_matches(new.secret + "x", new.secret_hash)
    assert new.secret not in new.secret_hash
    assert keys.parse_token(new.token + "x") is None
    assert keys.parse_token(new.token.replace("ts_", "tk_")) is None
    assert keys.generate_key().id != new.id


def test_settings_defaults_and_env() -> None:
    s = load_settings(environ={"TENANTSEARCH_HTTP_PORT": "9999", "OTHER": "x"})
    assert s.http_port == 9999
    assert s.resolved_database_url.startswith("sqlite+aiosqlite:///")


def test_bad_settings_name_the_variable() -> None:
    with pytest.raises(SettingsError, match="TENANTSEARCH_HTTP_PORT"):
        load_settings(environ={"TENANTSEARCH_HTTP_PORT": "eighty"})
    with pytest.raises(SettingsError, match="TENANTSEARCH_LOG_LEVEL"):
        load_settings(environ={"TENANTSEARCH_LOG_LEVEL": "loud"})


def test_secret_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "admin"
    secret.write_text("from-a-file\n")
    s = load_settings(environ={"TENANTSEARCH_ADMIN_KEY_FILE": str(secret)})
    assert s.admin_key is not None
    assert s.admin_key.get_secret_value() == "from-a-file"
    assert "from-a-file" not in repr(s)
    with pytest.raises(SettingsError, match="both set"):
        load_settings(
            environ={"TENANTSEARCH_ADMIN_KEY_FILE": str(secret), "TENANTSEARCH_ADMIN_KEY": "x"}
        )
    with pytest.raises(SettingsError, match="TENANTSEARCH_ADMIN_KEY_FILE"):
        load_settings(environ={"TENANTSEARCH_ADMIN_KEY_FILE": str(tmp_path / "missing")})


def test_connection_urls_are_secrets_and_rabbitmq_needs_one(tmp_path: Path) -> None:
    url_file = tmp_path / "amqp"
    url_file.write_text("amqp://user:hunter2@broker:5672/\n")
    s = load_settings(
        environ={
            "TENANTSEARCH_QUEUE_BACKEND": "rabbitmq",
            "TENANTSEARCH_RABBITMQ_URL_FILE": str(url_file),
            "TENANTSEARCH_DATABASE_URL": "postgresql+asyncpg://ts:hunter2@db/ts",
        }
    )
    assert s.rabbitmq_url is not None
    assert s.rabbitmq_url.get_secret_value() == "amqp://user:hunter2@broker:5672/"
    assert s.resolved_database_url == "postgresql+asyncpg://ts:hunter2@db/ts"
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.model_dump())
    with pytest.raises(SettingsError, match="TENANTSEARCH_RABBITMQ_URL"):
        load_settings(environ={"TENANTSEARCH_QUEUE_BACKEND": "rabbitmq"})
