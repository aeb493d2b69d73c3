"""`seq` is gapless, unrepeated and in commit order per session, whatever the number of
senders and instances; retries are stored once. Real concurrency: two app instances on
the same Postgres and Valkey, both parties sending at once, each send racing its retry."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import httpx

from tests.chat.helpers import history, make_active_session, send
from tests.conftest import AppFactory
from tests.factories import make_user

PER_PARTY = 50
# Hundreds of requests at once on one session row, 10 pooled connections per instance: on a
# loaded 2-core machine a request can wait past the tests' 2 s for a connection (each
# send also records its events in its transaction, events/log.py). What is tested here is
# the numbering, not that bound.
BOUNDS = {"DATABASE_TIMEOUT_SECONDS": 6}


async def test_two_parties_on_two_instances_get_seqs_one_to_n_with_no_gap_or_repeat(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    async with make_app(**BOUNDS) as first, make_app(**BOUNDS) as second:
        customer = await make_user(first.ctx, "customer")
        mitra = await make_user(first.ctx, "mitra")
        sid = await make_active_session(first, customer, mitra)

        # Each message sent twice at once (a client retrying over a flaky link), the
        # customer through one instance and the mitra through the other, all concurrently.
        sends = [
            send(inst.client, person, sid, f"{person.user.role} {n}", f"{person.user.role}-{n}")
            for inst, person in ((first, customer), (second, mitra))
            for n in range(PER_PARTY)
            for _ in range(2)
        ]
        responses: list[httpx.Response] = await asyncio.gather(*sends)

        assert Counter(r.status_code for r in responses) == {201: 2 * PER_PARTY, 200: 2 * PER_PARTY}
        by_id: dict[str, set[str]] = {}
        for r in responses:
            message = r.json()["message"]
            by_id.setdefault(message["client_message_id"], set()).add(message["id"])
        assert len(by_id) == 2 * PER_PARTY
        assert all(len(ids) == 1 for ids in by_id.values())  # a retry got the same message

        stored = await pg.fetch(
            "SELECT seq, client_message_id FROM chat_messages WHERE session_id = $1 ORDER BY seq",
            sid,
        )
        assert [row["seq"] for row in stored] == list(range(1, 2 * PER_PARTY + 1))
        assert sorted(row["client_message_id"] for row in stored) == sorted(by_id)
        assert (
            await pg.fetchval("SELECT last_message_seq FROM chat_sessions WHERE id = $1", sid)
            == 2 * PER_PARTY
        )
        # Each sender's messages are all there, and both instances read the same history.
        page = await history(first, customer, sid, limit=200)
        assert page == await history(second, mitra, sid, limit=200)
        assert [m["seq"] for m in page] == list(range(1, 2 * PER_PARTY + 1))


async def test_sends_numbered_while_the_session_ends_stop_at_the_end(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    """The end and the sends take the same row lock: every send committed before the end
    is numbered without gap, every one after it is 409, none is lost half-way."""
    async with make_app(**BOUNDS) as first, make_app(**BOUNDS) as second:
        customer = await make_user(first.ctx, "customer")
        mitra = await make_user(first.ctx, "mitra")
        sid = await make_active_session(first, customer, mitra)
        sends = [send(first.client, customer, sid, f"c {n}", f"c-{n}") for n in range(30)]
        end = second.client.post(f"/api/sessions/{sid}/end", headers=mitra.headers)
        *responses, ended = await asyncio.gather(*sends, end)
        assert ended.status_code == 200, ended.text
        codes = Counter(r.status_code for r in responses)
        assert set(codes) <= {201, 409}, codes
        stored = await pg.fetchval(
            "SELECT array_agg(seq ORDER BY seq) FROM chat_messages WHERE session_id = $1", sid
        )
        assert list(stored or []) == list(range(1, codes[201] + 1))
