"""The typing relay: `{"type": "typing", "data": {"session_id": ...}}` from a client's
socket reaches the session's other party as `typing` `{session_id, user_id}`.

Never stored (a hint with no value a second later), at most one per second per sender
(per instance: each instance keeps its own gate, and a user's sockets normally live on
one), and silently dropped unless the sender is a party of a session that is `active`:
a stranger learns nothing about the session from it. Checking the session costs one
primary-key read, made only for the frames the gate lets through; Postgres being down
or busy drops the frame (typing is best effort).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from ..auth.tokens import Principal
from ..context import Context, Slot
from ..errors import ServiceUnavailable
from ..events.bus import bus
from ..logs import get_logger
from ..sessions.queries import is_party

log = get_logger(__name__)

INTERVAL = timedelta(seconds=1)
# Senders remembered before the gate forgets those quiet for INTERVAL (bounded memory).
PRUNE_ABOVE = 10_000
SESSION_SQL = "SELECT customer_id, mitra_id, status FROM chat_sessions WHERE id = $1"


class TypingGate:
    """At most one typing frame per INTERVAL per sender, on this instance."""

    def __init__(self) -> None:
        self._last: dict[UUID, datetime] = {}

    def allow(self, sender_id: UUID, now: datetime) -> bool:
        last = self._last.get(sender_id)
        if last is not None and last <= now < last + INTERVAL:
            return False
        self._last[sender_id] = now
        if len(self._last) > PRUNE_ABOVE:
            self._last = {u: t for u, t in self._last.items() if now - t < INTERVAL}
        return True


GATE: Slot[TypingGate] = Slot("typing gate", lambda _ctx: TypingGate())


def _session_id(data: Any) -> UUID | None:
    if isinstance(data, dict) and isinstance(data.get("session_id"), str):
        try:
            return UUID(data["session_id"])
        except ValueError:
            return None
    return None


async def relay_typing(ctx: Context, principal: Principal, data: Any) -> str | None:
    """Handle one client `typing` frame's `data`. Returns an error detail for a malformed
    frame (the socket answers it with an `error` event), else None: relayed, or dropped
    as the module docstring says."""
    session_id = _session_id(data)
    if session_id is None:
        return 'typing needs {"data": {"session_id": "<chat session id>"}}'
    if principal.role not in ("customer", "mitra"):
        return None
    if not ctx.get(GATE).allow(principal.user_id, ctx.clock.now()):
        return None
    try:
        async with ctx.db.connection() as conn:
            row = await conn.fetchrow(SESSION_SQL, session_id)
    except ServiceUnavailable as exc:
        log.info("typing_dropped", error=exc.code)
        return None
    if row is None or row["status"] != "active" or not is_party(row, principal):
        return None
    other = row["mitra_id"] if principal.role == "customer" else row["customer_id"]
    await bus(ctx).publish(
        [other], "typing", {"session_id": str(session_id), "user_id": str(principal.user_id)}
    )
    return None
