"""A mitra's load on its Postgres row: open sessions and last activity.

`mitras.open_sessions` (its open sessions, `concepts.py`) and
`mitras.last_active_at` (the latest start or end of one of its chat sessions) feed the
pairing blast's ranking (`ranked.py`) without grouping session history per request. They
are written inside the transaction of every session change, so they are never behind the
sessions they describe; `chat_sessions` stays the truth they are counted from.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from ..concepts import open_session

# The count is a scan of `chat_sessions_open_by_mitra_idx` (this mitra's open sessions
# only); the row lock it takes is the one `pairing/accept.py` takes for its capacity check.
RECORD_SQL = f"""
UPDATE mitras SET
    open_sessions = (SELECT count(*) FROM chat_sessions
                     WHERE mitra_id = $1 AND {open_session()}),
    last_active_at = GREATEST(last_active_at, $2)
WHERE id = $1
"""  # noqa: S608


async def record_session_change(
    conn: asyncpg.Connection, mitra_id: UUID, active_at: datetime | None
) -> None:
    """Inside the caller's transaction, after it changed one of this mitra's sessions:
    recount its open sessions; `active_at` (a session started or ended then; None for a
    change that is neither, e.g. payment) moves `last_active_at`, never backwards."""
    await conn.execute(RECORD_SQL, mitra_id, active_at)
