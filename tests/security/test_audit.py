"""The audit log after denials and authentication failures: who sees which events."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tenantsearch.auth.audit import FAILURE_RATE
from tests.security.conftest import SettingsFactory
from tests.security.world import build_tenant, expect, running
from tests.support.api import Api, bearer, unique
from tests.support.oidc_issuer import OidcIssuer

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="module")]


async def events(client: httpx.AsyncClient, auth: dict[str, str], query: str = "") -> Any:
    r = await client.get(f"/v1/audit?limit=1000{query}", headers=auth)
    return expect(r, 200)["events"]


async def test_audit_log_scoping_and_contents(
    sec_client: httpx.AsyncClient, sec_api: Api, issuer: OidcIssuer
) -> None:
    client = sec_client
    started = datetime.now(UTC) - timedelta(seconds=5)
    a = await build_tenant(sec_api)
    b = await build_tenant(sec_api)
    jwt_sub = unique("alice")
    a_jwt_reader = bearer(issuer.mint(tenant_id=a.id, roles=["reader"], sub=jwt_sub))

    # Role denials in A (by a key, a JWT and a tenant token) and in B, each with a request id.
    denials: dict[str, tuple[str, str, dict[str, str], str]] = {
        "a-reader": ("POST", "/v1/keys", a.reader, a.key_ids["reader"]),
        "a-writer": ("DELETE", f"/v1/collections/{a.collection}", a.writer, a.key_ids["writer"]),
        "a-jwt": ("POST", "/v1/tokens", a_jwt_reader, f"jwt:{jwt_sub}"),
        "a-token": ("GET", "/v1/keys", a.token, f"token:{a.token_id}"),
        "b-reader": ("POST", "/v1/keys", b.reader, b.key_ids["reader"]),
    }
    for probe_id, (method, path, auth, _) in denials.items():
        headers = {**auth, "X-Request-Id": f"probe-{probe_id}"}
        body = {"role": "admin"} if path == "/v1/keys" else {"collections": [a.collection]}
        r = await client.request(
            method, path, json=body if method == "POST" else None, headers=headers
        )
        expect(r, 403, "forbidden")
        assert r.headers["x-request-id"] == f"probe-{probe_id}"
    # Authentication failures: a forged key, a forged JWT, an unknown tenant token; and a valid
    # JWT that carries no role.
    for credential in ("ts_" + "a" * 16 + "_" + "B" * 43, "eyJ.eyJ.sig", "tt_x.y.z"):
        headers = {**bearer(credential), "X-Request-Id": "probe-authn"}
        expect(await client.get("/v1/collections", headers=headers), 401)
    no_role = bearer(issuer.mint(tenant_id=a.id, roles=["superuser"]))
    headers = {**no_role, "X-Request-Id": "probe-no-role"}
    expect(await client.get("/v1/collections", headers=headers), 403, "no_role")

    # A's admin: A's events only, with actor, time and request id; ?tenant= cannot widen it.
    seen_a = await events(client, a.admin)
    assert seen_a
    assert {e["tenant_id"] for e in seen_a} == {a.id}
    assert seen_a == sorted(seen_a, key=lambda e: -e["id"])  # newest first
    for event in seen_a:
        assert event["actor"], event
        assert event["request_id"], event
        assert started <= datetime.fromisoformat(event["at"]) <= datetime.now(UTC), event
    by_request = {e["request_id"]: e for e in seen_a if e["action"] == "authorize"}
    for probe_id, (_, path, _, actor) in denials.items():
        event = by_request.get(f"probe-{probe_id}")
        if probe_id.startswith("b-"):
            assert event is None
            continue
        assert event is not None, probe_id
        assert (event["outcome"], event["actor"], event["tenant_id"]) == ("denied", actor, a.id)
        assert event["detail"]["route"] == path
    assert {"key.create", "token.create", "authorize"} <= {e["action"] for e in seen_a}
    assert await events(client, a.admin, f"&tenant={b.id}") == seen_a
    assert "probe-authn" not in {e["request_id"] for e in seen_a}

    # The platform admin: everything, including failures that belong to no tenant; ?tenant=.
    seen_all = await events(client, sec_api.admin)
    assert {a.id, b.id, None} <= {e["tenant_id"] for e in seen_all}
    failures = [e for e in seen_all if e["request_id"] == "probe-authn"]
    assert len(failures) == 3
    assert all(
        (e["action"], e["outcome"], e["tenant_id"]) == ("authenticate", "failure", None)
        for e in failures
    )
    (no_role_event,) = [e for e in seen_all if e["request_id"] == "probe-no-role"]
    assert (no_role_event["action"], no_role_event["detail"]) == (
        "authenticate",
        {"code": "no_role"},
    )
    only_b = await events(client, sec_api.admin, f"&tenant={b.id}")
    assert only_b
    assert {e["tenant_id"] for e in only_b} == {b.id}
    assert "probe-b-reader" in {e["request_id"] for e in only_b}
    denied = await events(client, sec_api.admin, "&action=authorize")
    assert denied
    assert {e["action"] for e in denied} == {"authorize"}
    oldest_page = await events(client, sec_api.admin, f"&before={seen_all[0]['id']}")
    assert all(e["id"] < seen_all[0]["id"] for e in oldest_page)

    # No secret ever reaches the log.
    text = (await client.get("/v1/audit?limit=1000", headers=sec_api.admin)).text
    for secret in (*a.secrets, *b.secrets, a_jwt_reader["Authorization"][7:]):
        assert secret not in text
        if secret.startswith("ts_"):
            assert secret[20:] not in text  # an API key's secret part

    # Who may not read it.
    for auth in (a.reader, a.writer, a.token, a_jwt_reader):
        expect(await client.get("/v1/audit", headers=auth), 403, "forbidden")
    expect(await client.get("/v1/audit"), 401, "missing_credentials")


async def test_a_flood_of_authentication_failures_is_written_at_a_bounded_rate(
    make_settings: SettingsFactory,
) -> None:
    async with running(make_settings()) as client:
        api = Api(client)
        flood, tail = 400, 50
        for i in range(flood - tail):
            r = await client.get("/v1/keys", headers=bearer(f"ts_nope{i}.secret"))
            assert r.status_code == 401
        # The last ones at once, so the flood surely ends with failures left out (sent one by
        # one, a stall of the machine near the end let the rate admit all of the last ones).
        last = await asyncio.gather(
            *(client.get("/v1/keys", headers=bearer(f"ts_tail{i}.secret")) for i in range(tail))
        )
        assert {r.status_code for r in last} == {401}
        written = [e for e in await events(client, api.admin) if e["action"] == "authenticate"]
        # The burst and the steady rate over the flood's duration, nowhere near all of them.
        assert FAILURE_RATE.burst <= len(written) < flood // 2
        # Each failure written says how many were left out since the one before: nothing is
        # unaccounted for once one more is written.
        await asyncio.sleep(0.2)
        r = await client.get("/v1/keys", headers=bearer("ts_nope.last"))
        assert r.status_code == 401
        every = await events(client, api.admin, "&action=authenticate")
        assert len(every) == len(written) + 1
        assert every[0]["detail"]["suppressed"] > 0
        assert sum(e["detail"].get("suppressed", 0) for e in every) == flood - len(written)
