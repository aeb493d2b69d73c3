"""The event log (SPEC §6): every event a user is sent is a row in Postgres, numbered per
user 1, 2, 3, ... with no gap, in commit order; this module owns its tables
(`event_cursors`, `events`, migration 0005) and all their SQL.

Recording (`record`) runs inside the transaction of the change the events announce, as
its last statement: one statement bumps each recipient's counter in `event_cursors`
(`INSERT ... ON CONFLICT DO UPDATE`, users in uuid order) and inserts the events. Why
this gives the guarantees:

* the counter row stays locked until the transaction ends, so the next transaction to
  number an event for that user waits for this one to commit (then continues from its
  number) or roll back (then reuses the numbers): numbers follow commit order, no gap;
* so when seq n of a user is committed, every seq below n of that user is committed too
  and readable by any new snapshot: a socket that receives n before n-1 (two instances'
  deliveries crossing) can read n-1 from here (`read_range`);
* recipients are locked in one global order (uuid), in one statement, so two
  transactions recording for overlapping users (two pairing blasts offering to the same
  mitras) cannot deadlock on the counters;
* rolled back, the change takes its events with it: nothing is sent for it.

Cost per transaction that records: one statement, one counter row written per
recipient and one event row per (recipient, event); counter rows are held for the
commit only. Numbering survives retention: counters are never deleted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from ..clock import iso
from ..context import Context
from ..errors import EventsExpired

# Bump the counters (one row per user, sorted: one lock order for everybody) and insert
# the events numbered below each user's new counter. `back` is how far below the new
# counter an event lies (0 for the user's last event in this batch).
RECORD_SQL = """
WITH bumped AS (
    INSERT INTO event_cursors AS c (user_id, last_seq)
    SELECT u, k FROM unnest($1::uuid[], $2::bigint[]) AS t(u, k) ORDER BY u
    ON CONFLICT (user_id) DO UPDATE SET last_seq = c.last_seq + EXCLUDED.last_seq
    RETURNING user_id, last_seq
)
INSERT INTO events (user_id, seq, type, data, created_at)
SELECT e.u, b.last_seq - e.back, e.type, e.data, $6
FROM unnest($3::uuid[], $4::bigint[], $5::text[], $7::jsonb[]) AS e(u, back, type, data)
JOIN bumped AS b ON b.user_id = e.u
RETURNING user_id, seq, type
"""

POSITION_SQL = """
SELECT (SELECT last_seq FROM event_cursors WHERE user_id = $1) AS last_seq,
       (SELECT seq FROM events WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT 1)
           AS next_seq
"""
RANGE_SQL = """
SELECT seq, type, data::text AS data, created_at FROM events
WHERE user_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4
"""
LAST_SEQS_SQL = """
SELECT user_id, last_seq FROM event_cursors WHERE user_id = ANY($1::uuid[])
"""
# One bounded batch: the oldest rows first, through events_created_at_idx.
DELETE_EXPIRED_SQL = """
DELETE FROM events WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM events WHERE created_at < $1 ORDER BY created_at LIMIT $2))
"""


def frame(type_: str, seq: int, data_json: str) -> str:
    """The socket frame `{"type", "seq", "data"}` of one event (SPEC §6), spliced from its
    data's JSON text: live and replayed frames are built alike."""
    return f'{{"type": {json.dumps(type_)}, "seq": {seq}, "data": {data_json}}}'


@dataclass(frozen=True)
class Recorded:
    """One recorded event of one user: `data_json` is its data as JSON text."""

    user_id: UUID
    seq: int
    type: str
    data_json: str

    @property
    def frame(self) -> str:
        return frame(self.type, self.seq, self.data_json)


# What a change announces: (recipients, type, data); data is JSON-serialisable (UUIDs
# and datetimes become strings).
Pending = tuple[Iterable[UUID], str, dict[str, Any]]


async def record(conn: Any, now: datetime, events: Sequence[Pending]) -> list[Recorded]:
    """Inside the transaction of the change, as its last statement: number and store
    each event for each of its recipients (a recipient named twice in one event gets it
    once). Returns them event by event, recipients in uuid order. Nothing for no
    recipient. Raises what the connection raises (the caller's transaction fails)."""
    return [r for per_event in await record_each(conn, now, events) for r in per_event]


async def record_each(conn: Any, now: datetime, events: Sequence[Pending]) -> list[list[Recorded]]:
    """`record`, its result split per event given (same order)."""
    per_user: dict[UUID, list[tuple[int, str, str]]] = {}
    for index, (users, type_, data) in enumerate(events):
        text = json.dumps(data, default=str)
        for user in dict.fromkeys(users):
            per_user.setdefault(user, []).append((index, type_, text))
    result: list[list[Recorded]] = [[] for _ in events]
    if not per_user:
        return result
    users = sorted(per_user)
    e_users: list[UUID] = []
    backs: list[int] = []
    types: list[str] = []
    datas: list[str] = []
    for user in users:
        items = per_user[user]
        for i, (_, type_, text) in enumerate(items):
            e_users.append(user)
            backs.append(len(items) - 1 - i)
            types.append(type_)
            datas.append(text)
    counts = [len(per_user[u]) for u in users]
    rows = await conn.fetch(RECORD_SQL, users, counts, e_users, backs, types, now, datas)
    last: dict[UUID, int] = {}
    for r in rows:
        last[r["user_id"]] = max(last.get(r["user_id"], 0), r["seq"])
    for user in users:
        items = per_user[user]
        first = last[user] - len(items) + 1
        for i, (index, type_, text) in enumerate(items):
            result[index].append(Recorded(user, first + i, type_, text))
    return result


@dataclass(frozen=True)
class Position:
    """Where a user's log stands: `last_seq` (0 before the first event) and whether the
    events after some `after` are all still retained."""

    last_seq: int
    retained: bool


async def position(conn: Any, user_id: UUID, after: int) -> Position:
    """The user's last seq, and whether every event with seq > `after` is still kept
    (False when `after` is below the oldest kept event, or above the last one: either
    way the client must resync)."""
    row = await conn.fetchrow(POSITION_SQL, user_id, after)
    last = int(row["last_seq"] or 0)
    if after > last:
        return Position(last, False)
    if after == last:
        return Position(last, True)
    return Position(last, row["next_seq"] == after + 1)


@dataclass(frozen=True)
class Stored:
    seq: int
    type: str
    data_json: str
    created_at: datetime

    @property
    def frame(self) -> str:
        return frame(self.type, self.seq, self.data_json)


async def read_range(conn: Any, user_id: UUID, after: int, upto: int, limit: int) -> list[Stored]:
    """The user's events with `after` < seq <= `upto`, ascending, at most `limit`
    (primary-key range scan). Fewer than asked when some expired."""
    rows = await conn.fetch(RANGE_SQL, user_id, after, upto, limit)
    return [Stored(r["seq"], r["type"], r["data"], r["created_at"]) for r in rows]


async def last_seqs(conn: Any, user_ids: Sequence[UUID]) -> dict[UUID, int]:
    """Each user's last seq (users without an event are absent): one query."""
    rows = await conn.fetch(LAST_SEQS_SQL, list(user_ids))
    return {r["user_id"]: int(r["last_seq"]) for r in rows}


async def delete_expired(conn: Any, before: datetime, batch: int) -> int:
    """Delete at most `batch` events created before `before`; returns how many."""
    status = await conn.execute(DELETE_EXPIRED_SQL, before, batch)
    return int(status.split()[-1])


@dataclass(frozen=True)
class Page:
    """`GET /api/events`: events after a position, and where the log stands."""

    events: list[Stored]
    last_seq: int

    def public(self) -> dict[str, Any]:
        return {
            "events": [
                {
                    "seq": e.seq,
                    "type": e.type,
                    "data": json.loads(e.data_json),
                    "created_at": iso(e.created_at),
                }
                for e in self.events
            ],
            "last_seq": self.last_seq,
        }


async def list_events(ctx: Context, user_id: UUID, *, after: int, limit: int) -> Page:
    """The user's events with seq > `after`, at most `limit`, ascending, and the user's
    last seq, read in one snapshot (REPEATABLE READ). Raises EventsExpired when events
    after `after` are no longer kept (or `after` is beyond the last seq);
    DatabaseUnavailable / DatabaseBusy."""
    async with ctx.db.transaction("repeatable_read") as conn:
        where = await position(conn, user_id, after)
        if not where.retained:
            if after > where.last_seq:
                detail = f"after={after} is beyond the last event ({where.last_seq})"
            else:
                detail = f"events after {after} are no longer kept"
            raise EventsExpired(f"{detail}; refetch the state and continue from last_seq")
        events = await read_range(conn, user_id, after, where.last_seq, limit)
    return Page(events, where.last_seq)
