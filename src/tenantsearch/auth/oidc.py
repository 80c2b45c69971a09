"""JWT bearer tokens from an OIDC issuer: discovery, a cached JWKS, and strict verification.

Verification follows the rules an attacker would probe:

- The algorithm comes from the key found by ``kid`` (and must be in the configured allow-list),
  never from the token's header: a token signed HS256 with an RSA public key as the secret is
  refused, as is ``alg: none``. Symmetric keys in a JWKS are ignored.
- ``jku``, ``jwk``, ``x5u`` and ``x5c`` headers are never read, so no URL or key from the token is
  ever fetched or trusted. ``kid`` is only a dictionary key.
- ``exp``, ``iss`` and ``aud`` are required; ``nbf`` and ``iat`` (not in the future) are checked;
  all with a small leeway. ``typ``, when the token sets it, must be a JWT access token type.
- The JWKS is cached for ``cache_seconds``. An unknown ``kid`` triggers at most one refetch per
  ``refetch_interval_seconds``. When the JWKS cannot be fetched, the cached keys keep working,
  and the issuer is tried again at most once per ``refetch_interval_seconds``.

PyJWT does the signature and claim checks; this module owns key selection and caching.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import structlog
from jwt import PyJWK

from tenantsearch.errors import Unauthenticated

log = structlog.get_logger(__name__)

ASYMMETRIC_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})
ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/at+jwt"})
MAX_TOKEN_LENGTH = 16 * 1024


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    audience: str
    algorithms: Sequence[str] = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
    jwks_file: Path | None = None
    cache_seconds: float = 300.0
    refetch_interval_seconds: float = 30.0
    leeway_seconds: float = 30.0
    http_timeout_seconds: float = 5.0


class OidcVerifier:
    def __init__(self, config: OidcConfig, http: httpx.AsyncClient) -> None:
        self._config = config
        self._http = http
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._jwks_uri: str | None = None
        self._lock = asyncio.Lock()

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's verified claims, or :class:`Unauthenticated`."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("the token is not valid", code="invalid_token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("the token is not valid", code="invalid_token") from exc
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYP):
            raise Unauthenticated("the token type is not accepted", code="invalid_token")
        key = await self._key_for(header.get("kid"))
        algorithm = key.algorithm_name
        if algorithm not in self._config.algorithms:
            raise Unauthenticated("the token's key algorithm is not accepted", code="invalid_token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self._config.audience,
                issuer=self._config.issuer,
                leeway=self._config.leeway_seconds,
                options={"require": ["exp", "iss", "aud"], "verify_iat": True},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("the token has expired", code="expired_token") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("the token is not valid", code="invalid_token") from exc
        return claims

    async def _key_for(self, kid: Any) -> PyJWK:
        if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
            raise Unauthenticated("the token is not valid", code="invalid_token")
        now = time.monotonic()
        # After a failed attempt, a stale cache is retried once per refetch interval, not on
        # every request: an issuer outage must not turn each request into a fetch (and a wait).
        last_failed = self._attempted_at > self._fetched_at
        if now - self._fetched_at > self._config.cache_seconds and (
            not last_failed or now - self._attempted_at > self._config.refetch_interval_seconds
        ):
            await self._refresh(now)
        key = self._pick(kid)
        if key is None and now - self._attempted_at > self._config.refetch_interval_seconds:
            await self._refresh(now)  # a new signing key may have been published
            key = self._pick(kid)
        if key is None:
            raise Unauthenticated("the token's signing key is not known", code="invalid_token")
        return key

    def _pick(self, kid: str | None) -> PyJWK | None:
        if kid is None:
            # Without a kid, only an issuer with a single key is unambiguous.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self, now: float) -> None:
        async with self._lock:
            if self._attempted_at >= now:  # another request refreshed meanwhile
                return
            self._attempted_at = time.monotonic()
            try:
                raw = await self._load_jwks()
                keys = self._parse(raw)
            except (httpx.HTTPError, ValueError, OSError, orjson.JSONDecodeError) as exc:
                # Keep serving with the keys we have: an issuer outage must not log everybody out.
                log.warning("jwks_refresh_failed", error=type(exc).__name__, kept=len(self._keys))
                return
            self._keys = keys
            self._fetched_at = time.monotonic()
            log.info("jwks_refreshed", keys=len(keys))

    async def _load_jwks(self) -> Any:
        if self._config.jwks_file is not None:
            return orjson.loads(await asyncio.to_thread(self._config.jwks_file.read_bytes))
        if self._jwks_uri is None:
            url = self._config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            discovery = await self._get_json(url)
            if not isinstance(discovery, Mapping) or discovery.get("issuer") != self._config.issuer:
                raise ValueError("the discovery document names another issuer")
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
                raise ValueError("the discovery document has no jwks_uri")
            self._jwks_uri = jwks_uri
        return await self._get_json(self._jwks_uri)

    async def _get_json(self, url: str) -> Any:
        response = await self._http.get(url, timeout=self._config.http_timeout_seconds)
        response.raise_for_status()
        return orjson.loads(response.content)

    def _parse(self, raw: Any) -> dict[str, PyJWK]:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("keys"), list):
            raise ValueError("not a JWKS document")  # noqa: TRY004 - caught with fetch errors
        keys: dict[str, PyJWK] = {}
        for index, data in enumerate(raw["keys"]):
            if not isinstance(data, dict) or data.get("kty") not in ASYMMETRIC_KEY_TYPES:
                continue
            if data.get("use", "sig") != "sig":
                continue
            try:
                key = PyJWK(data)
            except jwt.PyJWTError:
                continue
            keys[str(data.get("kid", f"#{index}"))] = key
        return keys
