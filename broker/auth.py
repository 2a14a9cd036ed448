"""Bearer tokens: random, shown once, stored as SHA-256, compared in constant time.

Tokens carry 256 bits of randomness, so a plain SHA-256 (not a slow password
hash) is enough to make a stolen database useless for logging in.
"""

import hashlib
import hmac
import secrets

TOKEN_PREFIX = "m2kt_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def parse_bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None when absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token or len(token) > 512:
        return None
    return token
