"""Sockets end with their login (SPEC §6): a logout closes that login's open sockets, a
deactivation every socket of the mitra, on whichever instance they are, with 1008 and a
reason saying why (`logged_out`, `account_deactivated`; `login_revoked` for a login ended
by refresh-token reuse).

Two paths, so the bound holds through a Valkey outage:

* **Push** (`end_sockets`, an after-commit effect of the logout or the deactivation): the
  instance that committed ends its own sockets at once, then publishes a control message
  on the event bus's channel that every other instance acts on (well under 1 s).
* **Re-check** (`LoginWatch`): every WS_LOGIN_RECHECK_SECONDS each instance asks Postgres,
  in one query for all its open sockets, which of their logins were revoked, and ends
  those. With pub/sub down, a remote socket closes within that interval (plus the query);
  with Postgres down too, the socket's access-token expiry is the last bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from uuid import UUID

from ..aftercommit import AfterCommit
from ..context import Context
from ..events.bus import bus
from ..logs import get_logger

log = get_logger(__name__)

LOGGED_OUT = "logged_out"
ACCOUNT_DEACTIVATED = "account_deactivated"
LOGIN_REVOKED = "login_revoked"

# auth_sessions.revoked_reason -> the close reason a client sees.
REASONS = {"logout": LOGGED_OUT, "mitra_deactivated": ACCOUNT_DEACTIVATED}
DETAILS = {
    LOGGED_OUT: "this login was logged out; log in again",
    ACCOUNT_DEACTIVATED: "this mitra account is deactivated; contact an admin",
    LOGIN_REVOKED: "this login was ended; log in again",
}


def close_reason(revoked_reason: str | None) -> str:
    """The socket close reason (`<code>: <detail>`, under 123 bytes) for a revocation."""
    code = REASONS.get(revoked_reason or "", LOGIN_REVOKED)
    return f"{code}: {DETAILS[code]}"


def end_sockets(ctx: Context, user_id: UUID, login: UUID | None, revoked: str) -> AfterCommit:
    """The after-commit effect ending the sockets of `login` (None: every login of the
    user) on every instance; `revoked` is the auth_sessions.revoked_reason written."""

    async def end_sockets() -> None:
        await bus(ctx).end_sockets(user_id, login, close_reason(revoked))

    return end_sockets


REVOKED_SQL = (
    "SELECT id, user_id, revoked_reason FROM auth_sessions"
    " WHERE id = ANY($1::uuid[]) AND revoked_at IS NOT NULL"
)


async def recheck_logins(ctx: Context) -> int:
    """One query for all of this instance's open sockets' logins; ends those revoked.
    Returns how many sockets were ended. Raises what the database raises."""
    logins = bus(ctx).open_logins()
    if not logins:
        return 0
    async with ctx.db.connection() as conn:
        rows = await conn.fetch(REVOKED_SQL, list(logins))
    ended = 0
    for row in rows:
        reason = close_reason(row["revoked_reason"])
        ended += bus(ctx).end_local(str(row["user_id"]), str(row["id"]), reason)
    if ended:
        log.info("ws_logins_rechecked", ended=ended)
    return ended


class LoginWatch:
    """The periodic re-check of one instance's sockets (module docstring)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ws-login-recheck")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        interval = self.ctx.settings.ws_login_recheck_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await recheck_logins(self.ctx)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Postgres down: the token's expiry still bounds it
                log.warning("ws_login_recheck_failed", error=repr(exc))
