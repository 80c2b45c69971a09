"""API key secrets: their format, generation and hashing.

A key reads ``ts_<id>_<secret>``: ``id`` (16 lowercase base32 characters) finds the stored record,
``secret`` (32 random bytes, base64url) proves possession. Only SHA-256 of the secret is stored.
A fast hash is enough here, unlike for passwords: the secret has 256 bits of entropy, so there is
nothing to brute-force, and verification stays cheap on every request. Comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "ts_"
KEY_RE = re.compile(r"^ts_([a-z2-7]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class NewKey:
    id: str
    secret: str
    secret_hash: str

    @property
    def token(self) -> str:
        return f"{PREFIX}{self.id}_{self.secret}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def generate_key() -> NewKey:
    key_id = base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()
    secret = secrets.token_urlsafe(32)
    return NewKey(id=key_id, secret=secret, secret_hash=hash_secret(secret))


def parse_token(token: str) -> tuple[str, str] | None:
    """``(key id, secret)`` of a well-formed key, else None."""
    match = KEY_RE.match(token)
    return (match.group(1), match.group(2)) if match else None


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
