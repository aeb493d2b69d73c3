"""GET /api/sessions/{id}/messages: pages in both directions, always ascending, each one
a bounded walk of the (session_id, seq) index."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from halobestie.chat.queries import BACKWARD_SQL, FORWARD_SQL, NO_UPPER_BOUND
from tests.chat.helpers import history, make_active_session, messages_url, sent
from tests.conftest import Instance
from tests.factories import Person
from tests.sessions.helpers import make_cast


async def write_history(
    pg: asyncpg.Connection, session_id: UUID, sender: Person, count: int
) -> None:
    """`count` messages straight into Postgres, numbered as sends number them."""
    at = datetime.now(UTC)
    await pg.execute(
        "INSERT INTO chat_messages (session_id, seq, sender_id, sender_role, body,"
        " client_message_id, created_at)"
        " SELECT $1, n, $2, 'customer', 'message ' || n, 'c-' || n, $3"
        " FROM generate_series(1, $4) AS n",
        session_id,
        sender.id,
        at,
        count,
    )
    await pg.execute(
        "UPDATE chat_sessions SET last_message_seq = $2 WHERE id = $1", session_id, count
    )


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in messages]


async def test_pages_forward_backward_and_newest_first_page_all_ascending(
    inst: Instance,
) -> None:
    cast = await make_cast(inst)
    sid = await make_active_session(inst, cast.customer, cast.mitra)
    for n in range(1, 8):
        person = cast.customer if n % 2 else cast.mitra
        await sent(inst, person, sid, f"message {n}", f"c-{n}")
    reader = cast.customer
    assert seqs(await history(inst, reader, sid)) == [1, 2, 3, 4, 5, 6, 7]
    assert seqs(await history(inst, reader, sid, limit=3)) == [5, 6, 7]  # the newest page
    assert seqs(await history(inst, reader, sid, before_seq=5, limit=3)) == [2, 3, 4]
    assert seqs(await history(inst, reader, sid, before_seq=2, limit=3)) == [1]
    assert seqs(await history(inst, reader, sid, before_seq=1)) == []
    assert seqs(await history(inst, reader, sid, after_seq=0, limit=3)) == [1, 2, 3]
    assert seqs(await history(inst, reader, sid, after_seq=3, limit=3)) == [4, 5, 6]
    assert seqs(await history(inst, reader, sid, after_seq=6, limit=3)) == [7]
    assert seqs(await history(inst, reader, sid, after_seq=7)) == []
    assert seqs(await history(inst, reader, sid, after_seq=1, before_seq=5)) == [2, 3, 4]
    assert seqs(await history(inst, reader, sid, after_seq=1, before_seq=5, limit=2)) == [2, 3]
    # Walking back from the newest page, then forward from the oldest, sees everything once.
    back: list[int] = []
    page = await history(inst, reader, sid, limit=2)
    while page:
        back = seqs(page) + back
        page = await history(inst, reader, sid, before_seq=page[0]["seq"], limit=2)
    assert back == [1, 2, 3, 4, 5, 6, 7]
    # Admins read; every party sees the same history.
    assert await history(inst, cast.admin, sid) == await history(inst, cast.mitra, sid)


async def test_the_default_page_is_50_and_the_largest_200(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    cast = await make_cast(inst)
    sid = await make_active_session(inst, cast.customer, cast.mitra)
    await write_history(pg, sid, cast.customer, 250)
    assert seqs(await history(inst, cast.mitra, sid)) == list(range(201, 251))
    assert seqs(await history(inst, cast.mitra, sid, limit=200)) == list(range(51, 251))
    assert seqs(await history(inst, cast.mitra, sid, after_seq=0)) == list(range(1, 51))


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 201},
        {"limit": -1},
        {"limit": "ten"},
        {"limit": "1.5"},
        {"after_seq": -1},
        {"after_seq": "x"},
        {"after_seq": 2**31},
        {"before_seq": 0},
        {"before_seq": "1e3"},
        {"before_seq": 2**63},
    ],
)
async def test_malformed_or_out_of_range_paging_is_422(
    inst: Instance, params: dict[str, Any]
) -> None:
    cast = await make_cast(inst)
    sid = await make_active_session(inst, cast.customer, cast.mitra)
    r = await inst.client.get(messages_url(sid), params=params, headers=cast.customer.headers)
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), r.text


async def test_an_unknown_or_malformed_session_id(inst: Instance) -> None:
    cast = await make_cast(inst)
    r = await inst.client.get(
        messages_url("00000000-0000-0000-0000-000000000000"), headers=cast.admin.headers
    )
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = await inst.client.get(messages_url("not-a-uuid"), headers=cast.admin.headers)
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request")


async def rows_read(pg: asyncpg.Connection, sql: str, *args: Any) -> int:
    """How many index entries Postgres read to answer `sql` (EXPLAIN ANALYZE)."""
    await pg.execute("SET enable_seqscan = off")  # a small table would be scanned whole
    plan = json.loads(await pg.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args))
    await pg.execute("RESET enable_seqscan")
    found: list[int] = []

    def walk(node: dict[str, Any]) -> None:
        if node["Node Type"] in ("Index Scan", "Index Scan Backward", "Index Only Scan"):
            found.append(int(node["Actual Rows"]) + int(node.get("Rows Removed by Filter", 0)))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    assert found, plan
    return sum(found)


async def test_a_page_costs_the_page_not_the_history(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    cast = await make_cast(inst)
    sid = await make_active_session(inst, cast.customer, cast.mitra)
    await write_history(pg, sid, cast.customer, 20_000)
    await pg.execute("ANALYZE chat_messages")
    # The newest page, a page in the middle both ways, a window between two bounds.
    assert await rows_read(pg, BACKWARD_SQL, sid, NO_UPPER_BOUND, 50) == 50
    assert await rows_read(pg, BACKWARD_SQL, sid, 10_000, 50) == 50
    assert await rows_read(pg, FORWARD_SQL, sid, 10_000, NO_UPPER_BOUND, 50) == 50
    assert await rows_read(pg, FORWARD_SQL, sid, 10_000, 10_003, 50) <= 3
