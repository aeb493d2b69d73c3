"""Writes of auth: registration, login, refresh rotation, logout, admin-made users."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

import asyncpg

from ..aftercommit import run_after_commit
from ..context import Context
from ..db import Database
from ..errors import AccountDeactivated, EmailTaken, InvalidCredentials, InvalidToken
from ..logs import get_logger
from .passwords import hash_password, verify_password
from .queries import User
from .sockets import end_sockets
from .throttle import count_failure, forget_failures, hashing, refuse_if_throttled
from .tokens import (
    Principal,
    hash_refresh_token,
    issue_access_token,
    new_refresh_token,
    same_hash,
    split_refresh_token,
    successor_refresh_token,
)

log = get_logger(__name__)


@dataclass(frozen=True)
class Login:
    user: User
    access_token: str
    refresh_token: str
    expires_in: int

    def public(self) -> dict[str, Any]:
        return {
            "user": self.user.public(),
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
        }


class HasDb(Protocol):
    """All that user creation needs, so the CLI can call it without a Valkey client."""

    @property
    def db(self) -> Database: ...


async def do_create_user(
    ctx: HasDb,
    *,
    email: str,
    password: str,
    display_name: str,
    role: str,
    password_hash: str | None = None,
) -> User:
    """Create a user (and its mitras row when role is mitra). EmailTaken on a clash,
    case-insensitively. `password_hash`: `password` already hashed (registration hashes
    within its hashing slot, throttle.py)."""
    if password_hash is None:
        password_hash = await hash_password(password)
    try:
        async with ctx.db.transaction() as conn:
            row = await conn.fetchrow(
                "INSERT INTO users (email, password_hash, display_name, role)"
                " VALUES ($1, $2, $3, $4) RETURNING id, email, display_name, role",
                email,
                password_hash,
                display_name,
                role,
            )
            if role == "mitra":
                await conn.execute("INSERT INTO mitras (id) VALUES ($1)", row["id"])
    except asyncpg.UniqueViolationError:
        raise EmailTaken(f"an account with email {email!r} already exists") from None
    return User(**dict(row))


# A mitra's login is checked under the lock its deactivation takes (FOR SHARE conflicts
# with the deactivation's UPDATE of the row): either the deactivation committed first and
# the login is refused, or it waits for this login to commit and revokes the new auth
# session with the others. Checked before the password, a deactivation landing during
# the ~50 ms hash left a live login for a deactivated mitra (issue 9).
MITRA_ACTIVE_SQL = "SELECT is_active FROM mitras WHERE id = $1 FOR SHARE"


async def do_open_session(ctx: Context, user: User, now: datetime) -> Login:
    """A new auth session (login) for `user`. AccountDeactivated for a deactivated mitra."""
    async with ctx.db.transaction() as conn:
        if user.role == "mitra" and not await conn.fetchval(MITRA_ACTIVE_SQL, user.id):
            raise AccountDeactivated("this mitra account is deactivated; contact an admin")
        session_id: UUID = await conn.fetchval("SELECT gen_random_uuid()")
        refresh, refresh_hash = new_refresh_token(session_id)
        await conn.execute(
            "INSERT INTO auth_sessions (id, user_id, refresh_token_hash, created_at, expires_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            session_id,
            user.id,
            refresh_hash,
            now,
            now + timedelta(seconds=ctx.settings.refresh_token_ttl_seconds),
        )
    return _login(ctx, user, session_id, refresh, now)


def _login(ctx: Context, user: User, session_id: UUID, refresh: str, now: datetime) -> Login:
    ttl = ctx.settings.access_token_ttl_seconds
    access = issue_access_token(
        ctx.settings.jwt_secret, Principal(user.id, session_id, user.role), now, ttl
    )
    return Login(user, access, refresh, ttl)


async def do_register_customer(
    ctx: Context, *, email: str, password: str, display_name: str, now: datetime
) -> Login:
    async with hashing(ctx):  # HashingOverloaded (503) when every slot is taken
        password_hash = await hash_password(password)
    user = await do_create_user(
        ctx,
        email=email,
        password=password,
        display_name=display_name,
        role="customer",
        password_hash=password_hash,
    )
    return await do_open_session(ctx, user, now)


async def do_login(ctx: Context, *, email: str, password: str, now: datetime) -> Login:
    """InvalidCredentials (401) for a wrong email or password, AccountDeactivated (403);
    TooManyAttempts (429) past LOGIN_FAILURE_LIMIT failures for this email, checked before
    anything else; HashingOverloaded (503) when every hashing slot is taken (throttle.py)."""
    failures = await refuse_if_throttled(ctx, email)
    # The slot is taken before the user is read (~1 ms more per slot): a burst past the
    # slots is refused before it touches Postgres, instead of queueing for the pool first.
    async with hashing(ctx):
        async with ctx.db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT id, email, display_name, role, password_hash"
                " FROM users WHERE lower(email) = lower($1)",
                email,
            )
        ok = await verify_password(row["password_hash"] if row else None, password)
    if row is None or not ok:
        # Unknown emails count too: the answer must not tell which emails exist.
        await count_failure(ctx, email)
        raise InvalidCredentials("email or password is wrong")
    if failures:
        await forget_failures(ctx, email)
    user = User(row["id"], row["email"], row["display_name"], row["role"])
    return await do_open_session(ctx, user, now)  # refuses a deactivated mitra


async def do_refresh_session(ctx: Context, *, refresh_token: str, now: datetime) -> Login:
    """Rotation: the presented token is replaced by its successor (`tokens.successor_
    refresh_token`). The replaced token presented again within REFRESH_REUSE_LEEWAY_SECONDS
    of that rotation (racing tabs, a retry after a lost response) answers with the same
    pair the rotation issued; any other stale token, or that one later, is taken as theft
    and ends the whole auth session. InvalidToken (401) for a revoked, expired, unknown or
    reused token; AccountDeactivated (403) for a deactivated mitra."""
    session_id = split_refresh_token(refresh_token)
    presented = hash_refresh_token(refresh_token)
    secret = ctx.settings.jwt_secret
    new_token, new_hash = successor_refresh_token(secret, refresh_token, session_id)
    async with ctx.db.transaction() as conn:
        # Logout and deactivation revoke by UPDATE of this row, so they and a refresh are
        # serialised on its lock: a revocation that commits first is seen here (FOR UPDATE
        # reads the row's newest version); one that comes after revokes the rotated pair
        # too. `m.is_active` is only the snapshot's: the revocation is what counts.
        row = await conn.fetchrow(
            "SELECT s.refresh_token_hash, s.refreshed_at, s.expires_at, s.revoked_at,"
            " u.id, u.email, u.display_name, u.role, m.is_active"
            " FROM auth_sessions s JOIN users u ON u.id = s.user_id"
            " LEFT JOIN mitras m ON m.id = u.id WHERE s.id = $1 FOR UPDATE OF s",
            session_id,
        )
        # Deactivated first: a deactivated mitra hears the same 403 from every door
        # (refresh, login, endpoints that check the login, its socket's close reason).
        if row is not None and row["is_active"] is False:
            raise AccountDeactivated("this mitra account is deactivated; contact an admin")
        if row is None or row["revoked_at"] is not None:
            raise InvalidToken("refresh token revoked or unknown; log in again")
        if row["expires_at"] <= now:
            raise InvalidToken("refresh token expired; log in again")
        user = User(row["id"], row["email"], row["display_name"], row["role"])
        if same_hash(row["refresh_token_hash"], presented):
            await conn.execute(
                "UPDATE auth_sessions SET refresh_token_hash = $2, refreshed_at = $3 WHERE id = $1",
                session_id,
                new_hash,
                now,
            )
            return _login(ctx, user, session_id, new_token, now)
        rotated_at: datetime | None = row["refreshed_at"]
        # Capped by the access token's lifetime: past it, the pair cannot be served again.
        leeway = min(
            ctx.settings.refresh_reuse_leeway_seconds, ctx.settings.access_token_ttl_seconds - 1
        )
        if (
            rotated_at is not None
            and now - rotated_at <= timedelta(seconds=leeway)
            # The current hash is the successor of the presented token: it is the one
            # the latest rotation replaced, not an older one nor a guess.
            and same_hash(row["refresh_token_hash"], new_hash)
        ):
            log.info("refresh_token_replay_within_leeway", auth_session=str(session_id))
            # Issued as of the rotation, so the access token is the same bytes too.
            login = _login(ctx, user, session_id, new_token, rotated_at)
            elapsed = int(now.timestamp()) - int(rotated_at.timestamp())
            return replace(login, expires_in=login.expires_in - elapsed)
        await conn.execute(
            "UPDATE auth_sessions SET revoked_at = $2, revoked_reason = 'refresh_reuse'"
            " WHERE id = $1",
            session_id,
            now,
        )
    # Raised after the transaction, so the revocation commits; its sockets close too.
    log.warning("refresh_token_reuse", auth_session=str(session_id))
    await run_after_commit(ctx, [end_sockets(ctx, user.id, session_id, "refresh_reuse")])
    raise InvalidToken("refresh token already used; this login has been ended")


async def do_logout(ctx: Context, principal: Principal, now: datetime) -> None:
    """Revoke this login; after the commit its open sockets close, on every instance, with
    1008 `logged_out` (auth/sockets.py). The user's other logins keep theirs."""
    async with ctx.db.connection() as conn:
        await conn.execute(
            "UPDATE auth_sessions SET revoked_at = $3, revoked_reason = 'logout'"
            " WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
            principal.session_id,
            principal.user_id,
            now,
        )
    # Also when it was already revoked: ending sockets twice is harmless.
    await run_after_commit(
        ctx, [end_sockets(ctx, principal.user_id, principal.session_id, "logout")]
    )


async def do_ensure_admin(ctx: HasDb, *, email: str, password: str) -> tuple[User, bool]:
    """Idempotent create-admin: (user, created). An existing admin gets the new password;
    an existing non-admin with that email is refused."""
    async with ctx.db.connection() as conn:
        row = await conn.fetchrow(USER_BY_EMAIL, email)
    if row is None:
        name = email.split("@", 1)[0][:80] or "admin"
        user = await do_create_user(
            ctx, email=email, password=password, display_name=name, role="admin"
        )
        return user, True
    if row["role"] != "admin":
        raise EmailTaken(f"{email!r} belongs to a {row['role']}, not an admin")
    password_hash = await hash_password(password)
    async with ctx.db.connection() as conn:
        await conn.execute(
            "UPDATE users SET password_hash = $2 WHERE id = $1", row["id"], password_hash
        )
    return User(row["id"], row["email"], row["display_name"], row["role"]), False


USER_BY_EMAIL = "SELECT id, email, display_name, role FROM users WHERE lower(email) = lower($1)"
