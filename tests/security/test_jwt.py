"""JWT attacks against the OIDC verifier, through the whole app, with a real loopback issuer.

Every refused token answers 401 ``invalid_token`` (``expired_token`` when only ``exp`` is wrong),
never 500 and never a success; a token with no known role answers 403 ``no_role``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from jwt.algorithms import get_default_algorithms

from tenantsearch.auth.oidc import OidcConfig, OidcVerifier
from tenantsearch.errors import Unauthenticated
from tests.security.conftest import SettingsFactory
from tests.security.world import expect, running
from tests.support.api import Api, bearer, unique
from tests.support.oidc_issuer import (
    DISCOVERY_PATH,
    JWKS_PATH,
    OidcIssuer,
    SigningKey,
    b64url,
    b64url_json,
    forge,
    generate_key,
    hs256_signer,
)

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="module")]

PROBE = "/v1/collections"  # collections.read: every tenant role may call it


async def probe(client: httpx.AsyncClient, token: str, path: str = PROBE) -> httpx.Response:
    return await client.get(path, headers=bearer(token))


def hmac_signer(secret: bytes, digest: Callable[[], Any]) -> Callable[[bytes], bytes]:
    def sign(data: bytes) -> bytes:
        return hmac.new(secret, data, digest).digest()

    return sign


def only_issuer_paths_fetched(issuer: OidcIssuer) -> None:
    assert set(issuer.requests()) <= {DISCOVERY_PATH, JWKS_PATH}, issuer.requests()


# -- what is accepted ----------------------------------------------------------------------------


async def test_valid_tokens_are_accepted(
    sec_client: httpx.AsyncClient, sec_api: Api, issuer: OidcIssuer
) -> None:
    tenant, _ = await sec_api.tenant()
    for key in issuer.published:  # RS256 and ES256
        expect(
            await probe(sec_client, issuer.mint(key=key, tenant_id=tenant, roles=["reader"])), 200
        )
    for typ in (None, "JWT", "jwt", "at+jwt", "application/at+jwt"):
        token = issuer.mint(headers={"typ": typ}, tenant_id=tenant, roles=["reader"])
        expect(await probe(sec_client, token), 200)
    # An aud list containing ours is accepted; roles may be a space-separated string.
    token = issuer.mint(tenant_id=tenant, roles="reader", aud=["another-api", issuer.audience])
    expect(await probe(sec_client, token), 200)
    # Within the leeway (30 s), a just-expired token still passes.
    token = issuer.mint(tenant_id=tenant, roles=["reader"], exp=int(time.time()) - 5)
    expect(await probe(sec_client, token), 200)


# -- forged signatures ---------------------------------------------------------------------------


async def test_alg_none_and_empty_signatures_are_refused(
    sec_client: httpx.AsyncClient, sec_api: Api, issuer: OidcIssuer
) -> None:
    tenant, _ = await sec_api.tenant()
    kid = issuer.key().kid
    claims = issuer.claims(tenant_id=tenant, roles=["admin"])
    for alg in ("none", "None", "NONE", "nOnE"):
        for header in ({"alg": alg, "typ": "JWT"}, {"alg": alg, "kid": kid}):
            expect(await probe(sec_client, forge(header, claims)), 401, "invalid_token")
    # A real algorithm with the signature cut off, or a signature of another token.
    valid = issuer.mint(tenant_id=tenant, roles=["admin"])
    expect(await probe(sec_client, valid.rsplit(".", 1)[0] + "."), 401, "invalid_token")
    expect(await probe(sec_client, forge({"alg": "RS256", "kid": kid}, claims)), 401)
    other = issuer.mint(tenant_id=tenant, roles=["reader"])
    spliced = valid.rsplit(".", 1)[0] + "." + other.rsplit(".", 1)[1]
    expect(await probe(sec_client, spliced), 401, "invalid_token")
    expect(await probe(sec_client, valid), 200)  # the control
    only_issuer_paths_fetched(issuer)


async def test_hmac_signed_with_the_public_key_is_refused(
    sec_client: httpx.AsyncClient, sec_api: Api, issuer: OidcIssuer
) -> None:
    """RS256 -> HS256 key confusion: the public key (PEM, DER, JWK JSON) as the HMAC secret."""
    tenant, _ = await sec_api.tenant()
    claims = issuer.claims(tenant_id=tenant, roles=["admin"])
    for key in issuer.published:
        jwk = key.public_jwk()
        secrets = {
            "pem": key.public_pem(),
            "pem without newline": key.public_pem().strip(),
            "der": key.public_der(),
            "jwk json": json.dumps(jwk).encode(),
            "jwk compact": json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode(),
        }
        for form, secret in secrets.items():
            for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
                header = {"alg": alg, "typ": "JWT", "kid": key.kid}
                token = forge(header, claims, hmac_signer(secret, digest))
                r = await probe(sec_client, token)
                assert r.status_code == 401, (key.kind, form, alg, r.text)
                assert r.json()["code"] == "invalid_token"


async def test_kid_attacks_are_refused(
    sec_client: httpx.AsyncClient, sec_api: Api, issuer: OidcIssuer
) -> None:
    tenant, _ = await sec_api.tenant()
    key = issuer.key()
    claims = issuer.claims(tenant_id=tenant, roles=["admin"])
    kids: list[Any] = [
        "unknown-kid",
        "../../etc/passwd",
        "/etc/passwd",
        "../../../../../../dev/zero",
        "file:///etc/passwd",
        issuer.jwks_url,
        "x" * 300,
        "",
        "#0",
        123,
        1.5,
        True,
        [key.kid],
        {"kid": key.kid},
    ]
    for kid in kids:
        token = forge({"alg": key.algorithm, "typ": "JWT", "kid": kid}, claims, key.sign)
        r = await probe(sec_client, token)
        assert r.status_code == 401, (kid, r.text)
        assert r.json()["code"] == "invalid_token", kid
    # No kid at all: ambiguous with two published keys.
    token = forge({"alg": key.algorithm, "typ": "JWT"}, claims, key.sign)
    expect(await probe(sec_client, token), 401, "invalid_token")
    # The control: the same claims with the key's kid.
    token = forge({"alg": key.algorithm, "typ": "JWT", "kid": key.kid}, claims, key.sign)
    expect(await probe(sec_client, token), 200)
    only_issuer_paths_fetched(issuer)


async def test_key_urls_and_embedded_keys_are_never_used(
    sec_client: httpx.AsyncClient, sec_api: Api, issuer: OidcIssuer, attacker: OidcIssuer
) -> None:
    """``jku``/``x5u`` point at an attacker's server holding the signing key; ``jwk``/``x5c``
    embed it. Refused, and the attacker's server never receives a request."""
    tenant, _ = await sec_api.tenant()
    evil = attacker.key()
    ours = issuer.key()
    claims = issuer.claims(tenant_id=tenant, roles=["admin"])
    cert = base64.b64encode(evil.self_signed_certificate_der()).decode("ascii")
    evil_jwk_as_ours = {**evil.public_jwk(), "kid": ours.kid}
    headers: list[dict[str, Any]] = []
    for kid in (evil.kid, ours.kid, None):
        base: dict[str, Any] = {"alg": "RS256", "typ": "JWT"}
        if kid is not None:
            base["kid"] = kid
        headers += [
            {**base, "jku": attacker.jwks_url},
            {**base, "jku": attacker.url + "/.well-known/openid-configuration"},
            {**base, "x5u": attacker.url + "/cert.pem"},
            {**base, "jwk": evil.public_jwk()},
            {**base, "jwk": evil_jwk_as_ours},
            {**base, "x5c": [cert]},
            {**base, "jku": attacker.jwks_url, "jwk": evil_jwk_as_ours, "x5c": [cert]},
        ]
    for header in headers:
        r = await probe(sec_client, forge(header, claims, evil.sign))
        assert r.status_code == 401, (header, r.text)
        assert r.json()["code"] == "invalid_token"
    assert attacker.count() == 0, attacker.requests()
    only_issuer_paths_fetched(issuer)
    # The attacker's server was reachable all along: zero requests means "never asked".
    async with httpx.AsyncClient() as outside:
        assert (await outside.get(attacker.jwks_url)).status_code == 200
    assert attacker.count() == 1


async def test_only_asymmetric_signing_keys_of_the_jwks_sign(
    make_settings: SettingsFactory, own_issuer: OidcIssuer
) -> None:
    """A symmetric key or an encryption key in the (public) JWKS signs nothing; the header's
    alg must be the key's; unknown critical header extensions are refused."""
    issuer = own_issuer
    hmac_secret = b"published-in-the-jwks-for-all-to-see"
    issuer.publish_jwk(
        {"kty": "oct", "kid": "shared-hmac", "alg": "HS256", "k": b64url(hmac_secret)}
    )
    enc = generate_key("RSA", kid="enc-1")
    issuer.publish_jwk({**enc.public_jwk(), "use": "enc"})
    async with running(make_settings(trust=issuer)) as client:
        await _signing_key_attempts(client, issuer, hmac_secret, enc)


async def _signing_key_attempts(
    client: httpx.AsyncClient, issuer: OidcIssuer, hmac_secret: bytes, enc: SigningKey
) -> None:
    tenant, _ = await Api(client).tenant()
    claims = issuer.claims(tenant_id=tenant, roles=["admin"])
    rsa_key = next(k for k in issuer.published if k.kind == "RSA")
    ec_key = next(k for k in issuer.published if k.kind == "EC")
    algorithms = get_default_algorithms()

    def signer(alg: str, key: SigningKey) -> Callable[[bytes], bytes]:
        return lambda data: algorithms[alg].sign(data, key.private_key)

    attempts: list[tuple[str, dict[str, Any], Callable[[bytes], bytes]]] = [
        (
            "oct key from the JWKS",
            {"alg": "HS256", "kid": "shared-hmac"},
            hs256_signer(hmac_secret),
        ),
        ("encryption key", {"alg": "RS256", "kid": "enc-1"}, enc.sign),
        ("PS256 with an RS256 key", {"alg": "PS256", "kid": rsa_key.kid}, signer("PS256", rsa_key)),
        ("RS512 with an RS256 key", {"alg": "RS512", "kid": rsa_key.kid}, signer("RS512", rsa_key)),
        ("RSA signature, EC kid", {"alg": "RS256", "kid": ec_key.kid}, rsa_key.sign),
        ("ES384 with an ES256 key", {"alg": "ES384", "kid": ec_key.kid}, signer("ES384", ec_key)),
        ("unknown crit", {"alg": "RS256", "kid": rsa_key.kid, "crit": ["x"], "x": 1}, rsa_key.sign),
        ("crit not a list", {"alg": "RS256", "kid": rsa_key.kid, "crit": "exp"}, rsa_key.sign),
        (
            "detached b64",
            {"alg": "RS256", "kid": rsa_key.kid, "crit": ["b64"], "b64": False},
            rsa_key.sign,
        ),
    ]
    for name, header, sign in attempts:
        r = await probe(client, forge({"typ": "JWT", **header}, claims, sign))
        assert r.status_code == 401, (name, r.text)
        assert r.json()["code"] == "invalid_token", name
    # The control: the same claims, properly signed.
    token = forge({"alg": "RS256", "kid": rsa_key.kid}, claims, rsa_key.sign)
    expect(await probe(client, token), 200)


async def test_malformed_tokens_are_refused(
    sec_client: httpx.AsyncClient, sec_api: Api, issuer: OidcIssuer
) -> None:
    tenant, _ = await sec_api.tenant()
    valid = issuer.mint(tenant_id=tenant, roles=["admin"])
    header, payload, signature = valid.split(".")
    for token in (
        "a.b.c",
        "..",
        f"{header}..{signature}",
        f"{header}.{payload}.!!!",
        f"{b64url_json({'alg': 'RS256'})[:-2]}.{payload}.{signature}",
        f"{base64.urlsafe_b64encode(b'[1,2]').decode()}.{payload}.{signature}",
        f"{header}.{base64.urlsafe_b64encode(b'[]').decode()}.{signature}",
        f"{header}.{payload}.{signature}" + "A" * 17_000,
        valid[:-10],
    ):
        r = await probe(sec_client, token)
        assert r.status_code == 401, (token[:80], r.text)
        assert r.json()["code"] in ("invalid_token", "invalid_credentials"), token[:80]


# -- claims --------------------------------------------------------------------------------------


async def test_claims_are_enforced(
    sec_client: httpx.AsyncClient, sec_api: Api, issuer: OidcIssuer
) -> None:
    tenant, _ = await sec_api.tenant()
    now = int(time.time())
    cases: list[tuple[str, dict[str, Any], int, str | None]] = [
        ("expired", {"exp": now - 3600}, 401, "expired_token"),
        ("expired beyond leeway", {"exp": now - 60}, 401, "expired_token"),
        ("not yet valid", {"nbf": now + 3600}, 401, "invalid_token"),
        ("not yet valid beyond leeway", {"nbf": now + 120}, 401, "invalid_token"),
        ("issued in the future", {"iat": now + 3600}, 401, "invalid_token"),
        ("iat not a number", {"iat": "yesterday"}, 401, "invalid_token"),
        ("no exp", {"exp": None}, 401, "invalid_token"),
        ("exp not a number", {"exp": "never"}, 401, "invalid_token"),
        ("wrong iss", {"iss": "http://127.0.0.1:1"}, 401, "invalid_token"),
        ("iss with a trailing slash", {"iss": issuer.issuer + "/"}, 401, "invalid_token"),
        ("no iss", {"iss": None}, 401, "invalid_token"),
        ("wrong aud", {"aud": "another-api"}, 401, "invalid_token"),
        ("aud list without ours", {"aud": ["a", "b"]}, 401, "invalid_token"),
        ("no aud", {"aud": None}, 401, "invalid_token"),
        ("aud list with ours", {"aud": ["another-api", issuer.audience]}, 200, None),
    ]
    for name, overrides, status, code in cases:
        token = issuer.mint(tenant_id=tenant, roles=["admin"], **overrides)
        r = await probe(sec_client, token)
        assert r.status_code == status, (name, r.text)
        if code is not None:
            assert r.json()["code"] == code, name


async def test_tampered_payload_with_the_original_signature_is_refused(
    sec_client: httpx.AsyncClient, sec_api: Api, issuer: OidcIssuer
) -> None:
    tenant_a, _ = await sec_api.tenant()
    tenant_b, _ = await sec_api.tenant()
    for key in issuer.published:
        token = issuer.mint(key=key, tenant_id=tenant_a, roles=["reader"])
        expect(await probe(sec_client, token), 200)
        header, payload, signature = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        for change in (
            {"tenant_id": tenant_b},
            {"roles": ["admin"]},
            {"roles": ["platform-admin"]},
            {"exp": claims["exp"] + 3600},
        ):
            forged = f"{header}.{b64url_json({**claims, **change})}.{signature}"
            expect(await probe(sec_client, forged), 401, "invalid_token")


async def test_typ_other_than_an_access_token_is_refused(
    sec_client: httpx.AsyncClient, sec_api: Api, issuer: OidcIssuer
) -> None:
    tenant, _ = await sec_api.tenant()
    for typ in ("secevent+jwt", "logout+jwt", "dpop+jwt", "JWE", "id_token", 1):
        token = issuer.mint(headers={"typ": typ}, tenant_id=tenant, roles=["admin"])
        r = await probe(sec_client, token)
        assert r.status_code == 401, (typ, r.text)
        assert r.json()["code"] == "invalid_token"


# -- the JWKS: rotation, cache, outage, refetch limit --------------------------------------------


async def test_a_newly_published_key_is_accepted_after_one_refetch(
    make_settings: SettingsFactory, own_issuer: OidcIssuer
) -> None:
    issuer = own_issuer
    settings = make_settings(
        trust=issuer, oidc_jwks_cache_seconds=300, oidc_jwks_refetch_seconds=0.2
    )
    async with running(settings) as client:
        tenant, _ = await Api(client).tenant()
        expect(await probe(client, issuer.mint(tenant_id=tenant, roles=["reader"])), 200)
        fetches = issuer.jwks_fetches
        assert fetches == 1  # this issuer serves this app alone
        new = issuer.add_key("RSA")
        await asyncio.sleep(0.3)  # past the refetch interval
        token = issuer.mint(key=new, tenant_id=tenant, roles=["reader"])
        expect(await probe(client, token), 200)
        assert issuer.jwks_fetches == fetches + 1
        # Known now: no more fetches, and the older keys go on working.
        for key in issuer.published:
            token = issuer.mint(key=key, tenant_id=tenant, roles=["reader"])
            expect(await probe(client, token), 200)
        assert issuer.jwks_fetches == fetches + 1


async def test_a_withdrawn_key_is_refused_after_the_cache_ttl(
    make_settings: SettingsFactory, own_issuer: OidcIssuer
) -> None:
    issuer = own_issuer
    ttl = 0.8
    settings = make_settings(
        trust=issuer, oidc_jwks_cache_seconds=ttl, oidc_jwks_refetch_seconds=0.2
    )
    async with running(settings) as client:
        tenant, _ = await Api(client).tenant()
        old, kept = issuer.published
        token_old = issuer.mint(key=old, tenant_id=tenant, roles=["reader"])
        expect(await probe(client, token_old), 200)
        fetches = issuer.jwks_fetches
        issuer.withdraw(old.kid)
        await asyncio.sleep(ttl + 0.2)
        expect(await probe(client, token_old), 401, "invalid_token")
        assert issuer.jwks_fetches == fetches + 1  # one refresh after the TTL, no extra refetch
        expect(await probe(client, issuer.mint(key=kept, tenant_id=tenant, roles=["reader"])), 200)
        # Minted after the withdrawal, with the withdrawn key: still refused.
        expect(await probe(client, issuer.mint(key=old, tenant_id=tenant, roles=["reader"])), 401)


async def test_cached_keys_keep_working_while_the_issuer_fails(
    make_settings: SettingsFactory, own_issuer: OidcIssuer
) -> None:
    issuer = own_issuer
    """An outage (HTTP 500) after the cache expired: tokens signed by known keys still pass,
    and the broken issuer is retried at most once per refetch interval, not on every request."""
    settings = make_settings(
        trust=issuer, oidc_jwks_cache_seconds=0.3, oidc_jwks_refetch_seconds=30
    )
    async with running(settings) as client:
        tenant, _ = await Api(client).tenant()
        expect(await probe(client, issuer.mint(tenant_id=tenant, roles=["reader"])), 200)
        issuer.fail(500)
        await asyncio.sleep(0.4)
        before = issuer.count()
        for key in issuer.published * 3:
            token = issuer.mint(key=key, tenant_id=tenant, roles=["reader"])
            expect(await probe(client, token), 200)
        assert issuer.count() - before <= 1, issuer.requests()
        # Unknown kids during the outage are refused, without hammering the issuer either.
        for i in range(5):
            token = issuer.mint(headers={"kid": f"new-{i}"}, tenant_id=tenant, roles=["reader"])
            expect(await probe(client, token), 401, "invalid_token")
        assert issuer.count() - before <= 1, issuer.requests()
        issuer.recover()
        expect(await probe(client, issuer.mint(tenant_id=tenant, roles=["reader"])), 200)


async def test_cached_keys_keep_working_while_the_issuer_hangs(own_issuer: OidcIssuer) -> None:
    """The verifier itself against a hung issuer (no answer): one bounded attempt per refetch
    interval; verification with cached keys goes on."""
    issuer = own_issuer
    config = OidcConfig(
        issuer=issuer.issuer,
        audience=issuer.audience,
        cache_seconds=0.2,
        refetch_interval_seconds=30,
        http_timeout_seconds=0.5,
    )
    async with httpx.AsyncClient() as http:
        verifier = OidcVerifier(config, http)
        assert (await verifier.verify(issuer.mint(sub="before")))["sub"] == "before"
        issuer.hang(seconds=10)
        await asyncio.sleep(0.3)
        before = issuer.count()
        started = time.monotonic()
        for i in range(10):
            claims = await verifier.verify(issuer.mint(sub=f"during-{i}"))
            assert claims["sub"] == f"during-{i}"
        assert time.monotonic() - started < 3.0  # one 0.5 s timeout, not ten
        assert issuer.count() - before <= 1
        with pytest.raises(Unauthenticated):
            await verifier.verify(issuer.mint(headers={"kid": "unknown"}))
        issuer.recover()


async def test_unknown_kid_burst_refetches_at_most_once_per_interval(
    make_settings: SettingsFactory, own_issuer: OidcIssuer
) -> None:
    issuer = own_issuer
    interval = 1.0
    settings = make_settings(
        trust=issuer, oidc_jwks_cache_seconds=300, oidc_jwks_refetch_seconds=interval
    )
    async with running(settings) as client:
        tenant, _ = await Api(client).tenant()
        good = issuer.mint(tenant_id=tenant, roles=["reader"])

        async def burst(tag: str) -> None:
            tokens = [
                issuer.mint(headers={"kid": f"{tag}-{i}"}, tenant_id=tenant, roles=["reader"])
                for i in range(30)
            ]
            calls = (probe(client, t) for t in [*tokens, good])
            responses = await asyncio.gather(*calls)
            assert [r.status_code for r in responses] == [401] * 30 + [200]

        expect(await probe(client, good), 200)
        fetched_at, fetches = time.monotonic(), issuer.jwks_fetches
        assert fetches == 1
        await burst("within-the-first-interval")
        # The first fetch used this interval's allowance (unless the machine stalled a second).
        allowed = int((time.monotonic() - fetched_at) / interval)
        assert issuer.jwks_fetches - fetches <= allowed

        await asyncio.sleep(interval + 0.1)
        fetches = issuer.jwks_fetches
        started = time.monotonic()
        await burst("first")
        await burst("second")
        elapsed = time.monotonic() - started
        refetches = issuer.jwks_fetches - fetches
        assert 1 <= refetches <= 1 + int(elapsed / interval), (refetches, elapsed)
        only_issuer_paths_fetched(issuer)


# -- tenant and role claims ----------------------------------------------------------------------


async def test_platform_admin_jwt_manages_tenants(
    sec_client: httpx.AsyncClient, issuer: OidcIssuer
) -> None:
    ops = bearer(issuer.mint(sub="ops-1", roles=["platform-admin"]))
    tenant = unique("t")
    expect(await sec_client.post("/v1/tenants", json={"id": tenant, "name": "x"}, headers=ops), 201)
    listed = expect(await sec_client.get("/v1/tenants", headers=ops), 200)
    assert tenant in {t["id"] for t in listed["tenants"]}
    r = await sec_client.post(f"/v1/tenants/{tenant}/keys", json={"role": "admin"}, headers=ops)
    expect(r, 201)
    expect(await sec_client.get("/v1/tasks", headers=ops), 403, "tenant_key_required")
    expect(await sec_client.get("/v1/collections", headers=ops), 403, "forbidden")
    events = expect(await sec_client.get(f"/v1/audit?tenant={tenant}", headers=ops), 200)
    assert {(e["action"], e["actor"]) for e in events["events"]} >= {("tenant.create", "jwt:ops-1")}


async def test_a_tenant_jwt_never_sees_another_tenant(
    sec_client: httpx.AsyncClient, sec_api: Api, issuer: OidcIssuer
) -> None:
    tenant_a, admin_a = await sec_api.tenant()
    tenant_b, admin_b = await sec_api.tenant()
    for tenant, auth in ((tenant_a, admin_a), (tenant_b, admin_b)):
        await sec_api.collection(auth, "shared")
        await sec_api.index(
            auth, "shared", [{"id": "doc1", "title": f"of {tenant}", "tag": tenant}]
        )
    await sec_api.collection(admin_b, "bonly")
    task_b = await sec_api.index(admin_b, "bonly", [{"id": "secret", "title": "b only"}])
    key_b = expect(await sec_client.get("/v1/keys", headers=admin_b), 200)["keys"][0]["id"]

    for role in ("admin", "writer", "reader"):
        auth = bearer(issuer.mint(tenant_id=tenant_a, roles=[role]))
        auth_x = {**auth, "X-Tenant-Id": tenant_b}
        found = expect(await sec_api.search(auth_x, "shared", facets=["tag"]), 200)
        assert [h["document"]["title"] for h in found["hits"]] == [f"of {tenant_a}"]
        assert found["total"] == 1
        assert found["facets"] == {"tag": {tenant_a: 1}}
        names = expect(await sec_client.get("/v1/collections", headers=auth_x), 200)
        assert [c["name"] for c in names["collections"]] == ["shared"]
        for path, code in (
            ("/v1/collections/bonly", "collection_not_found"),
            ("/v1/collections/bonly/documents/secret", "collection_not_found"),
            (f"/v1/tasks/{task_b['id']}", "task_not_found"),
        ):
            expect(await sec_client.get(path, headers=auth_x), 404, code)
        if role == "admin":
            r = await sec_client.delete(f"/v1/keys/{key_b}", headers=auth_x)
            expect(r, 404, "key_not_found")
            keys = expect(await sec_client.get("/v1/keys", headers=auth_x), 200)["keys"]
            assert key_b not in {k["id"] for k in keys}
    # B's data is intact.
    found = expect(await sec_api.search(admin_b, "bonly"), 200)
    assert [h["id"] for h in found["hits"]] == ["secret"]
    assert key_b in {
        k["id"] for k in (await sec_client.get("/v1/keys", headers=admin_b)).json()["keys"]
    }


async def test_tenant_claim_must_name_an_active_tenant(
    sec_client: httpx.AsyncClient, sec_api: Api, issuer: OidcIssuer
) -> None:
    tenant_a, _ = await sec_api.tenant()
    tenant_b, _ = await sec_api.tenant()
    erased, _ = await sec_api.tenant()
    expect(await sec_client.delete(f"/v1/tenants/{erased}", headers=sec_api.admin), 202)
    for tenant_claim in (
        unique("nothere"),
        erased,
        None,
        "",
        [tenant_a],
        [tenant_a, tenant_b],
        {"id": tenant_a},
        123,
    ):
        token = issuer.mint(tenant_id=tenant_claim, roles=["admin"])
        r = await probe(sec_client, token)
        assert r.status_code == 401, (tenant_claim, r.text)
        assert r.json()["code"] == "invalid_token"


async def test_a_token_without_a_known_role_is_forbidden(
    sec_client: httpx.AsyncClient, sec_api: Api, issuer: OidcIssuer
) -> None:
    tenant, _ = await sec_api.tenant()
    for roles in (
        None,
        [],
        "",
        ["superuser"],
        ["ADMIN"],
        ["tenant-token"],
        [["admin"]],
        {"admin": 1},
    ):
        token = issuer.mint(tenant_id=tenant, roles=roles)
        r = await probe(sec_client, token)
        assert r.status_code == 403, (roles, r.text)
        assert r.json()["code"] == "no_role"


async def test_custom_claim_names(make_settings: SettingsFactory, issuer: OidcIssuer) -> None:
    settings = make_settings(
        oidc_tenant_claim="https://tenantsearch.example/tenant", oidc_roles_claim="groups"
    )
    async with running(settings) as client:
        tenant, _ = await Api(client).tenant()
        claims: dict[str, Any] = {
            "https://tenantsearch.example/tenant": tenant,
            "groups": ["writer"],
        }
        expect(await probe(client, issuer.mint(**claims)), 200)
        # The default claim names mean nothing to this deployment.
        expect(await probe(client, issuer.mint(tenant_id=tenant, roles=["admin"])), 403, "no_role")
        token = issuer.mint(tenant_id=tenant, groups=["admin"])
        expect(await probe(client, token), 401, "invalid_token")


async def test_a_jwt_is_refused_when_no_issuer_is_configured(
    plain_client: httpx.AsyncClient, own_issuer: OidcIssuer
) -> None:
    client, issuer = plain_client, own_issuer
    tenant, _ = await Api(client).tenant()
    for roles in (["admin"], ["platform-admin"]):
        token = issuer.mint(tenant_id=tenant, roles=roles)
        expect(await probe(client, token), 401, "invalid_token")
        expect(await client.get("/v1/tenants", headers=bearer(token)), 401, "invalid_token")
    assert issuer.count() == 0
