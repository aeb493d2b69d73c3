"""Writes of a session's chat: sending a message, moving a read cursor.

Ordering (SPEC §5: `seq` 1, 2, 3, ... per session, no gap, no repeat, in commit order,
whatever the number of senders and instances): a send locks its session's row, takes the
next number from `chat_sessions.last_message_seq` and inserts the message, in one
transaction. The row lock is held until commit, so the senders of one session commit one
after the other, each numbered one above the last committed; a send that fails after
taking its number rolls the number back with it. Postgres alone keeps this (no Valkey,
no process memory), so it holds across instances and restarts. Cost: one session's
sends are serial, each holding the row for three short statements and the commit (about
a millisecond on a local Postgres); different sessions never wait for each other.

Idempotency: `(session_id, sender_id, client_message_id)` is unique. The lookup of an
earlier send with the same id runs under the same lock (in a statement of its own, see
EARLIER_SQL), so a retry racing its original waits for it and then finds it: 200 with
the stored message, nothing stored twice.

Events (`message.created` to both parties, `message.read` to the other party) are
recorded in the same transaction, as its last statement, and delivered after commit
(events/announce.py): never sent for a rolled-back write, never lost for a committed one.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from ..aftercommit import AfterCommit, run_after_commit
from ..auth.tokens import Principal
from ..context import Context
from ..errors import InvalidRequest, InvalidState
from ..events.announce import announce, record_effects
from ..sessions.queries import is_party, not_found
from .models import MESSAGE_COLUMNS, Message, ReadCursor

LOCK_FOR_SEND_SQL = """
SELECT customer_id, mitra_id, status FROM chat_sessions WHERE id = $1 FOR NO KEY UPDATE
"""
# The sender's earlier message of this client_message_id (the UNIQUE index answers it).
# A statement of its own, after the lock: under READ COMMITTED it sees what the sender
# before us committed. Joined into the locking SELECT it would not: Postgres re-reads
# only the locked row once the lock is granted, the rest of the statement keeps the
# snapshot from before the wait (a retry racing its original then inserted a duplicate).
EARLIER_SQL = f"""
SELECT {MESSAGE_COLUMNS} FROM chat_messages
WHERE session_id = $1 AND sender_id = $2 AND client_message_id = $3
"""  # noqa: S608

# Next number and the message, in one statement (the row is already locked).
INSERT_SQL = f"""
WITH counter AS (
    UPDATE chat_sessions SET last_message_seq = last_message_seq + 1
    WHERE id = $1 RETURNING last_message_seq
)
INSERT INTO chat_messages
    (session_id, seq, sender_id, sender_role, body, client_message_id, created_at)
SELECT $1, last_message_seq, $2, $3, $4, $5, $6 FROM counter
RETURNING {MESSAGE_COLUMNS}
"""  # noqa: S608

LOCK_FOR_READ_SQL = """
SELECT customer_id, mitra_id, last_message_seq, customer_read_seq, mitra_read_seq
FROM chat_sessions WHERE id = $1 FOR NO KEY UPDATE
"""
MOVE_CURSOR_SQL = {
    "customer": "UPDATE chat_sessions SET customer_read_seq = $2 WHERE id = $1",
    "mitra": "UPDATE chat_sessions SET mitra_read_seq = $2 WHERE id = $1",
}


async def do_send_message(
    ctx: Context,
    *,
    session_id: UUID,
    principal: Principal,
    client_message_id: str,
    body: str,
    now: datetime,
) -> tuple[Message, bool]:
    """Send `body` (already validated: 1-4000 characters, trimmed, storable) as the
    principal, a party of the session. Returns the message and whether it is new: False
    when this sender already sent `client_message_id` in this session (the stored
    message, whatever the body of the retry and the session's state since).

    Raises NotFound (unknown session or not a party), InvalidState (the session is not
    `active`), DatabaseUnavailable / DatabaseBusy."""
    async with ctx.db.transaction() as conn:
        row = await conn.fetchrow(LOCK_FOR_SEND_SQL, session_id)
        if row is None or not is_party(row, principal):
            raise not_found(session_id)  # never reveal someone else's session
        earlier = await conn.fetchrow(EARLIER_SQL, session_id, principal.user_id, client_message_id)
        if earlier is not None:
            return Message.from_row(earlier), False
        if row["status"] != "active":
            raise InvalidState(
                f"chat session {session_id} is {row['status']}; messages can be sent only"
                " while it is active"
            )
        inserted = await conn.fetchrow(
            INSERT_SQL, session_id, principal.user_id, principal.role, body,
            client_message_id, now,
        )  # fmt: skip
        message = Message.from_row(inserted)
        data = {"session_id": str(session_id), "message": message.model_dump()}
        parties = [row["customer_id"], row["mitra_id"]]
        effects: list[AfterCommit] = [announce(ctx, parties, "message.created", data)]
        await record_effects(conn, now, effects)  # the last statement (events/log.py)
    await run_after_commit(ctx, effects)
    return message, True


async def do_mark_read(
    ctx: Context, *, session_id: UUID, principal: Principal, seq: int, now: datetime
) -> ReadCursor:
    """The principal, a party of the session, has read up to `seq`. The cursor never
    moves back: a lower `seq` leaves it where it is (and says where). Allowed in any
    status, so the end of a conversation can still be marked read.

    Raises NotFound (unknown session or not a party), InvalidRequest (`seq` above the
    session's last message), DatabaseUnavailable / DatabaseBusy."""
    role = principal.role
    async with ctx.db.transaction() as conn:
        row = await conn.fetchrow(LOCK_FOR_READ_SQL, session_id)
        if row is None or not is_party(row, principal):
            raise not_found(session_id)
        last = row["last_message_seq"]
        if seq > last:
            raise InvalidRequest(
                f"seq: {seq} is above the last message of chat session {session_id} ({last})"
            )
        current: int = row[f"{role}_read_seq"]
        cursor = ReadCursor(user_id=str(principal.user_id), seq=max(seq, current))
        effects: list[AfterCommit] = []
        if seq > current:
            await conn.execute(MOVE_CURSOR_SQL[role], session_id, seq)
            other = row["mitra_id"] if role == "customer" else row["customer_id"]
            data = {"session_id": str(session_id), **cursor.model_dump()}
            effects.append(announce(ctx, [other], "message.read", data))
            await record_effects(conn, now, effects)
    await run_after_commit(ctx, effects)
    return cursor
