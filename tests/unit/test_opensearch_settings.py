"""The OpenSearch settings and their wiring in the composition root."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenantsearch.app import build_backend
from tenantsearch.search.opensearch_backend import OpenSearchBackend
from tenantsearch.settings import SearchBackendKind, SettingsError, load_settings


def test_opensearch_settings_from_the_environment(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("s3cret\n", encoding="utf-8")
    ca = tmp_path / "ca.pem"
    settings = load_settings(
        environ={
            "TENANTSEARCH_SEARCH_BACKEND": "opensearch",
            "TENANTSEARCH_OPENSEARCH_URL": "https://search-1:9200, https://search-2:9200",
            "TENANTSEARCH_OPENSEARCH_USERNAME": "tenantsearch",
            "TENANTSEARCH_OPENSEARCH_PASSWORD_FILE": str(password),
            # Ends in _FILE but is a path setting, not a secret's file variant.
            "TENANTSEARCH_OPENSEARCH_CA_FILE": str(ca),
            "TENANTSEARCH_OPENSEARCH_VERIFY_CERTS": "false",
            "TENANTSEARCH_OPENSEARCH_TIMEOUT_SECONDS": "5",
            "TENANTSEARCH_OPENSEARCH_POOL_SIZE": "32",
            "TENANTSEARCH_OPENSEARCH_INDEX_PREFIX": "prod",
            "TENANTSEARCH_OPENSEARCH_SHARDS": "6",
            "TENANTSEARCH_OPENSEARCH_REPLICAS": "2",
            "TENANTSEARCH_OPENSEARCH_DEDICATED_TENANTS": "bigcorp, megacorp",
        }
    )

    assert settings.search_backend is SearchBackendKind.OPENSEARCH
    assert settings.opensearch_hosts == ["https://search-1:9200", "https://search-2:9200"]
    assert settings.opensearch_password is not None
    assert settings.opensearch_password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.opensearch_ca_file == ca
    assert settings.opensearch_verify_certs is False
    assert (settings.opensearch_timeout_seconds, settings.opensearch_pool_size) == (5.0, 32)
    assert (settings.opensearch_shards, settings.opensearch_replicas) == (6, 2)
    assert settings.opensearch_dedicated_tenant_ids == ["bigcorp", "megacorp"]
    backend = build_backend(settings)
    assert isinstance(backend, OpenSearchBackend)
    assert backend.placement("bigcorp").read_alias == "prod-tenant-bigcorp-read"
    assert backend.placement("small").write_alias == "prod-shared-write"


def test_opensearch_defaults() -> None:
    settings = load_settings(environ={})
    assert settings.opensearch_hosts == ["http://127.0.0.1:9200"]
    assert settings.opensearch_index_prefix == "ts"
    assert settings.opensearch_verify_certs is True
    assert settings.opensearch_dedicated_tenant_ids == []


def test_api_key_from_a_file(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("os_abc\n", encoding="utf-8")
    settings = load_settings(environ={"TENANTSEARCH_OPENSEARCH_API_KEY_FILE": str(key)})
    assert settings.opensearch_api_key is not None
    assert settings.opensearch_api_key.get_secret_value() == "os_abc"


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"TENANTSEARCH_OPENSEARCH_URL": "search-1:9200"}, "TENANTSEARCH_OPENSEARCH_URL"),
        ({"TENANTSEARCH_OPENSEARCH_URL": " , "}, "TENANTSEARCH_OPENSEARCH_URL"),
        ({"TENANTSEARCH_OPENSEARCH_INDEX_PREFIX": "a-b"}, "TENANTSEARCH_OPENSEARCH_INDEX_PREFIX"),
        ({"TENANTSEARCH_OPENSEARCH_POOL_SIZE": "0"}, "TENANTSEARCH_OPENSEARCH_POOL_SIZE"),
        ({"TENANTSEARCH_OPENSEARCH_USERNAME": "u"}, "TENANTSEARCH_OPENSEARCH_PASSWORD"),
        (
            {
                "TENANTSEARCH_OPENSEARCH_USERNAME": "u",
                "TENANTSEARCH_OPENSEARCH_PASSWORD": "p",
                "TENANTSEARCH_OPENSEARCH_API_KEY": "k",
            },
            "API key",
        ),
        (
            {
                "TENANTSEARCH_OPENSEARCH_PASSWORD": "p",
                "TENANTSEARCH_OPENSEARCH_PASSWORD_FILE": "/nonexistent",
            },
            "TENANTSEARCH_OPENSEARCH_PASSWORD_FILE",
        ),
    ],
)
def test_bad_opensearch_settings_are_refused(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(environ=environ)
