"""The chat when a server goes away: Postgres down is a retryable 503 for sends, history
and cursors (never a 500, nothing half-stored), and back by itself; Valkey down costs
only cross-instance delivery (sends work, events reach this instance's sockets)."""

from __future__ import annotations

import asyncpg

from halobestie.events.bus import bus
from tests.chat.helpers import (
    Inbox,
    history,
    make_active_session,
    messages_url,
    read_url,
    send,
    sent,
)
from tests.conftest import Instance
from tests.failures import helpers
from tests.failures.helpers import record_statuses
from tests.sessions.helpers import make_cast
from tests.support.proxy import FaultProxy

postgres_fault_app_fixture = helpers.postgres_fault_app_fixture
postgres_proxy_fixture = helpers.postgres_proxy_fixture
valkey_fault_app_fixture = helpers.valkey_fault_app_fixture
valkey_proxy_fixture = helpers.valkey_proxy_fixture


async def test_sends_history_and_cursors_answer_503_while_postgres_is_down(
    postgres_fault_app: Instance, postgres_proxy: FaultProxy, pg: asyncpg.Connection
) -> None:
    inst = postgres_fault_app
    statuses = record_statuses(inst)
    cast = await make_cast(inst)
    sid = await make_active_session(inst, cast.customer, cast.mitra)
    await sent(inst, cast.customer, sid, "before", "c-1")

    await postgres_proxy.cut()
    for r in (
        await send(inst.client, cast.customer, sid, "during", "c-2"),
        await inst.client.get(messages_url(sid), headers=cast.mitra.headers),
        await inst.client.post(read_url(sid), json={"seq": 1}, headers=cast.mitra.headers),
    ):
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "database_unavailable"
        assert r.headers["retry-after"] == "1"

    await postgres_proxy.restore()
    # The client retries with the same client_message_id: stored once, numbered next.
    message = await sent(inst, cast.customer, sid, "during", "c-2")
    assert message["seq"] == 2
    assert [m["body"] for m in await history(inst, cast.mitra, sid)] == ["before", "during"]
    assert await pg.fetchval("SELECT count(*) FROM chat_messages") == 2
    assert not [s for s in statuses if s[1] >= 500 and s[1] != 503], statuses


async def test_sends_work_while_valkey_is_down_and_events_reach_local_sockets(
    valkey_fault_app: Instance, valkey_proxy: FaultProxy
) -> None:
    inst = valkey_fault_app
    cast = await make_cast(inst)
    sid = await make_active_session(inst, cast.customer, cast.mitra)
    inbox = Inbox()
    bus(inst.ctx).attach(cast.mitra.id, inbox)

    await valkey_proxy.cut()
    for n in range(3):
        r = await send(inst.client, cast.customer, sid, f"while Valkey is down {n}", f"c-{n}")
        assert r.status_code == 201, r.text
    r = await inst.client.post(read_url(sid), json={"seq": 3}, headers=cast.mitra.headers)
    assert r.status_code == 200, r.text
    assert [m["message"]["seq"] for m in inbox.of("message.created")] == [1, 2, 3]
    assert [m["seq"] for m in await history(inst, cast.customer, sid)] == [1, 2, 3]
