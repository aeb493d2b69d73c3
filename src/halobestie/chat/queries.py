"""Reads of a session's chat: pages of its history.

Visibility as for the session itself (sessions/queries.py): its customer, its mitra and
admins; to anyone else the session does not exist (404, like an unknown id).

Every page is one range scan of the UNIQUE (session_id, seq) index, forward or backward,
stopped by its LIMIT: its cost follows the page size, never the length of the history.
"""

from __future__ import annotations

from typing import Final
from uuid import UUID

from ..auth.tokens import Principal
from ..context import Context
from ..sessions.queries import can_view, not_found
from .models import MESSAGE_COLUMNS, Message

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 200
# Seqs are Postgres `integer`s: a bound from a client is at most this (the API says 422
# above it), and "no upper bound" is one past it, compared as bigint.
MAX_SEQ: Final = 2_147_483_647
NO_UPPER_BOUND: Final = MAX_SEQ + 1

VISIBLE_SQL = "SELECT customer_id, mitra_id FROM chat_sessions WHERE id = $1"
# Forward from after_seq (exclusive), below before_seq (exclusive; NO_UPPER_BOUND if none).
FORWARD_SQL = f"""
SELECT {MESSAGE_COLUMNS} FROM chat_messages
WHERE session_id = $1 AND seq > $2 AND seq < $3::bigint
ORDER BY seq LIMIT $4
"""  # noqa: S608
# Backward from before_seq (exclusive; NO_UPPER_BOUND for the newest page): the page
# nearest to it, read newest first and returned ascending.
BACKWARD_SQL = f"""
SELECT {MESSAGE_COLUMNS} FROM chat_messages
WHERE session_id = $1 AND seq < $2::bigint
ORDER BY seq DESC LIMIT $3
"""  # noqa: S608


async def list_messages(
    ctx: Context,
    session_id: UUID,
    principal: Principal,
    *,
    after_seq: int | None = None,
    before_seq: int | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[Message]:
    """Up to `limit` messages in ascending `seq`:

    * `after_seq` given: the first ones after it (below `before_seq` too, if given);
    * only `before_seq`: the last ones before it;
    * neither: the newest page.

    Bounds are exclusive. Raises NotFound (unknown session, or not the caller's),
    DatabaseUnavailable / DatabaseBusy."""
    upper = NO_UPPER_BOUND if before_seq is None else before_seq
    async with ctx.db.connection() as conn:
        row = await conn.fetchrow(VISIBLE_SQL, session_id)
        if row is None or not can_view(row, principal):
            raise not_found(session_id)
        if after_seq is not None:
            rows = await conn.fetch(FORWARD_SQL, session_id, after_seq, upper, limit)
        else:
            rows = list(reversed(await conn.fetch(BACKWARD_SQL, session_id, upper, limit)))
    return [Message.from_row(r) for r in rows]
