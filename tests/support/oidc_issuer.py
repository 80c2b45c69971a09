"""A real OIDC-style issuer on a free loopback port, for identity tests.

It serves ``/.well-known/openid-configuration`` and ``/jwks`` from a ``ThreadingHTTPServer`` in a
background thread, holds RSA and EC private keys (``cryptography``) and mints tokens with PyJWT.
Tests can rotate keys (publish a new one, withdraw an old one), make the issuer fail (HTTP 500) or
hang (no answer until a bounded delay passed), and count the requests it received per path, which
is how they prove "at most one refetch per interval" and "nothing named by the token was fetched".

The same class doubles as an attacker's server: start a second one, point ``jku``/``x5u`` at it,
and assert it was never asked anything.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, cast

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms

KeyKind = Literal["RSA", "EC"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
Failure = Literal["none", "error", "hang"]

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/jwks"
DEFAULT_AUDIENCE = "tenantsearch-api"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(dict(value), separators=(",", ":")).encode("utf-8"))


def forge(
    header: Mapping[str, Any],
    claims: Mapping[str, Any],
    sign: Callable[[bytes], bytes] | None = None,
) -> str:
    """A compact JWS built by hand (PyJWT refuses to make most attack tokens): ``sign`` gets the
    signing input and returns the signature; None leaves the signature empty."""
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
    signature = sign(signing_input.encode("ascii")) if sign is not None else b""
    return f"{signing_input}.{b64url(signature)}"


def hs256_signer(secret: bytes) -> Callable[[bytes], bytes]:
    def sign(data: bytes) -> bytes:
        return hmac.new(secret, data, hashlib.sha256).digest()

    return sign


@dataclass(frozen=True)
class SigningKey:
    kid: str
    kind: KeyKind
    private_key: PrivateKey

    @property
    def algorithm(self) -> str:
        return "RS256" if self.kind == "RSA" else "ES256"

    def public_jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = dict(RSAAlgorithm.to_jwk(public, as_dict=True))
        else:
            jwk = dict(ECAlgorithm.to_jwk(public, as_dict=True))
        jwk.update(kid=self.kid, use="sig", alg=self.algorithm)
        return jwk

    def sign(self, data: bytes) -> bytes:
        """A JWS signature of ``data`` with this key (for tokens built by :func:`forge`)."""
        algorithm = get_default_algorithms()[self.algorithm]
        return algorithm.sign(data, self.private_key)

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_der(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def self_signed_certificate_der(self) -> bytes:
        """A self-signed X.509 certificate for this key (what an ``x5c`` attack would carry)."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(self.private_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.DER)


def generate_key(kind: KeyKind = "RSA", kid: str | None = None) -> SigningKey:
    private: PrivateKey
    if kind == "RSA":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    kid = kid or f"{kind.lower()}-{uuid.uuid4().hex[:12]}"
    return SigningKey(kid=kid, kind=kind, private_key=private)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    issuer: OidcIssuer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        issuer = cast(_Server, self.server).issuer
        path = self.path.split("?", 1)[0]
        status, body = issuer._answer(path)
        if status == 0:  # hung up: answer nothing at all
            self.close_connection = True
            return
        payload = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = True

    do_POST = do_GET  # noqa: N815 - an attacker's endpoint may be asked anything


class OidcIssuer:
    """An OIDC issuer at ``http://127.0.0.1:<port>`` (the issuer URL is the base URL)."""

    def __init__(self, *, audience: str = DEFAULT_AUDIENCE, keys: tuple[KeyKind, ...] = ()) -> None:
        self.audience = audience
        self._lock = threading.Lock()
        self._published: dict[str, SigningKey] = {}
        self._all: dict[str, SigningKey] = {}
        self._raw: list[dict[str, Any]] = []
        self._requests: Counter[str] = Counter()
        self._failure: Failure = "none"
        self._failure_status = 500
        self._hang_seconds = 0.0
        self._released = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.issuer = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"oidc-issuer-{self.port}",
            daemon=True,
        )
        self._started = False
        for kind in keys:
            self.add_key(kind)

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def jwks_url(self) -> str:
        return self.url + JWKS_PATH

    def start(self) -> OidcIssuer:
        self._thread.start()
        self._started = True
        return self

    def close(self) -> None:
        self._released.set()  # wake any hung handler
        if self._started:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> OidcIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keys -----------------------------------------------------------------------------------

    def add_key(
        self, kind: KeyKind = "RSA", *, kid: str | None = None, publish: bool = True
    ) -> SigningKey:
        """A new signing key; ``publish`` puts it in the JWKS right away."""
        key = generate_key(kind, kid)
        with self._lock:
            self._all[key.kid] = key
            if publish:
                self._published[key.kid] = key
        return key

    def publish(self, key: SigningKey) -> None:
        with self._lock:
            self._all[key.kid] = key
            self._published[key.kid] = key

    def publish_jwk(self, jwk: Mapping[str, Any]) -> None:
        """Add an arbitrary JWKS entry (a symmetric key, an encryption key...)."""
        with self._lock:
            self._raw.append(dict(jwk))

    def withdraw(self, kid: str) -> None:
        """Remove a key from the JWKS (it can still sign, as a leaked or retired key would)."""
        with self._lock:
            del self._published[kid]

    def key(self, kid: str | None = None) -> SigningKey:
        """A key by kid, or the first published one."""
        with self._lock:
            if kid is not None:
                return self._all[kid]
            return next(iter(self._published.values()))

    @property
    def published(self) -> list[SigningKey]:
        with self._lock:
            return list(self._published.values())

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [k.public_jwk() for k in self._published.values()] + self._raw}

    # -- failures -------------------------------------------------------------------------------

    def fail(self, status: int = 500) -> None:
        """Answer every request with ``status`` until :meth:`recover`."""
        with self._lock:
            self._failure, self._failure_status = "error", status

    def hang(self, seconds: float = 30.0) -> None:
        """Accept connections but answer nothing for ``seconds`` (bounded; close() releases)."""
        with self._lock:
            self._failure, self._hang_seconds = "hang", seconds
            self._released.clear()

    def recover(self) -> None:
        with self._lock:
            self._failure = "none"
        self._released.set()

    # -- request accounting ---------------------------------------------------------------------

    def count(self, path: str | None = None) -> int:
        """Requests received for ``path`` (every path when None), failed ones included."""
        with self._lock:
            if path is None:
                return sum(self._requests.values())
            return self._requests[path]

    @property
    def jwks_fetches(self) -> int:
        return self.count(JWKS_PATH)

    def requests(self) -> dict[str, int]:
        with self._lock:
            return dict(self._requests)

    def reset_counts(self) -> None:
        with self._lock:
            self._requests.clear()

    def _answer(self, path: str) -> tuple[int, Any]:
        with self._lock:
            self._requests[path] += 1
            failure, status, hang_for = self._failure, self._failure_status, self._hang_seconds
        if failure == "hang":
            self._released.wait(timeout=hang_for)
            return 0, None
        if failure == "error":
            return status, {"error": "server_error"}
        if path == DISCOVERY_PATH:
            return 200, {
                "issuer": self.issuer,
                "jwks_uri": self.jwks_url,
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }
        if path == JWKS_PATH:
            return 200, self.jwks()
        return 404, {"error": "not_found"}

    # -- tokens ---------------------------------------------------------------------------------

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Valid claims for this issuer and audience; an override of None drops that claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": f"user-{uuid.uuid4().hex[:8]}",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def mint(
        self,
        *,
        key: SigningKey | None = None,
        headers: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A token signed by ``key`` (default: the first published key) with :meth:`claims`.
        A header given as None is left out (``typ`` None: no ``typ`` at all)."""
        key = key or self.key()
        header: dict[str, Any] = {"kid": key.kid}
        header.update(headers or {})
        header = {k: v for k, v in header.items() if v is not None or k == "typ"}
        return jwt.encode(
            self.claims(**claims), key.private_key, algorithm=key.algorithm, headers=header
        )
