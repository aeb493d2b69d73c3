"""JWT access tokens (HS256 pinned: a token naming another algorithm is refused) and
opaque refresh tokens (`<auth session id>.<secret>`, stored as a SHA-256 hash; a login's
first secret is random, each rotation's is derived from the token it replaces)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from uuid import UUID

import jwt

from ..errors import InvalidToken

ALGORITHM = "HS256"
ROLES = ("customer", "mitra", "admin")


@dataclass(frozen=True)
class Principal:
    """Who is calling, as the access token says."""

    user_id: UUID
    session_id: UUID
    role: str
    expires_at: int = 0  # epoch seconds, from the token's `exp`; 0 when not from a token


def issue_access_token(secret: str, principal: Principal, now: datetime, ttl_seconds: int) -> str:
    claims = {
        "sub": str(principal.user_id),
        "sid": str(principal.session_id),
        "role": principal.role,
        "typ": "access",
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=ttl_seconds)).timestamp()),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


@lru_cache(maxsize=16_384)
def _verified(secret: str, token: str) -> Principal:
    """PyJWT's verdict on one token, remembered: a mitra sends the same token with every
    heartbeat for its whole lifetime, and PyJWT costs ~26 us a check, an eighth of the
    heartbeat (benchmarks/). Only successes are cached (an exception is not), keyed by
    the exact token and secret, so a cached answer is the one PyJWT gave; expiry is
    still judged on every call, against our clock."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            # Time claims are judged by our clock, never by PyJWT's wall clock (which
            # would refuse tokens from an instance whose clock runs a little ahead).
            options={
                "require": ["sub", "sid", "role", "exp", "typ"],
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"access token rejected: {exc}") from None
    if claims["typ"] != "access" or claims["role"] not in ROLES:
        raise InvalidToken("not an access token")
    try:
        expires = int(claims["exp"])
        return Principal(UUID(claims["sub"]), UUID(claims["sid"]), claims["role"], expires)
    except (ValueError, TypeError):
        raise InvalidToken("access token has malformed ids") from None


def decode_access_token(secret: str, token: str, now: datetime) -> Principal:
    principal = _verified(secret, token)
    if principal.expires_at <= int(now.timestamp()):
        raise InvalidToken("access token expired; refresh it")
    return principal


def new_refresh_token(session_id: UUID) -> tuple[str, str]:
    """(token for the client, hash for the database)."""
    secret = secrets.token_urlsafe(32)
    token = f"{session_id}.{secret}"
    return token, hash_refresh_token(token)


def successor_refresh_token(secret: str, token: str, session_id: UUID) -> tuple[str, str]:
    """(token, hash) that a rotation of `token` issues: HMAC-SHA256 of the presented token
    under a key derived from JWT_SECRET, so it is as unguessable as a random secret to
    anyone without that key, yet re-derivable. That is what lets a replay within
    REFRESH_REUSE_LEEWAY_SECONDS answer with the very pair the rotation issued, and prove
    it is the *immediate* predecessor, with nothing but the hash stored."""
    key = hmac.new(secret.encode(), b"halobestie/refresh-successor/v1", hashlib.sha256).digest()
    digest = hmac.new(key, token.encode(), hashlib.sha256).digest()
    successor = f"{session_id}.{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"
    return successor, hash_refresh_token(successor)


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def split_refresh_token(token: str) -> UUID:
    session, _, secret = token.partition(".")
    try:
        session_id = UUID(session)
    except ValueError:
        raise InvalidToken("malformed refresh token") from None
    if not secret:
        raise InvalidToken("malformed refresh token")
    return session_id


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
