"""JWT access tokens (HS256 pinned: a token naming another algorithm is refused) and
opaque refresh tokens (`<auth session id>.<secret>`, stored as a SHA-256 hash)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
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


def decode_access_token(secret: str, token: str, now: datetime) -> Principal:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            # Time claims are judged by our clock below, never by PyJWT's wall clock (which
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
    # Expiry is checked against our clock (tests control time), not the wall clock.
    if int(claims["exp"]) <= int(now.timestamp()):
        raise InvalidToken("access token expired; refresh it")
    if claims["typ"] != "access" or claims["role"] not in ROLES:
        raise InvalidToken("not an access token")
    try:
        return Principal(UUID(claims["sub"]), UUID(claims["sid"]), claims["role"])
    except (ValueError, TypeError):
        raise InvalidToken("access token has malformed ids") from None


def new_refresh_token(session_id: UUID) -> tuple[str, str]:
    """(token for the client, hash for the database)."""
    secret = secrets.token_urlsafe(32)
    token = f"{session_id}.{secret}"
    return token, hash_refresh_token(token)


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
