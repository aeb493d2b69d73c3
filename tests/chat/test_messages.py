"""POST /api/sessions/{id}/messages: who may send, when, what is stored, what is told."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from halobestie.clock import iso
from halobestie.events.bus import bus
from tests.chat.helpers import (
    Inbox,
    history,
    make_active_session,
    messages_url,
    send,
    sent,
    session_payload,
)
from tests.conftest import Instance
from tests.sessions.helpers import make_cast, make_pending_session, url


async def test_a_party_sends_and_gets_the_stored_message_numbered_from_one(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    cast = await make_cast(inst)
    sid = await make_active_session(inst, cast.customer, cast.mitra)
    inst.clock.advance(3)
    r = await send(inst.client, cast.customer, sid, "  hello there \n", "c-1")
    assert r.status_code == 201, r.text
    message = r.json()["message"]
    assert message == {
        "id": message["id"],
        "session_id": str(sid),
        "seq": 1,
        "sender_id": str(cast.customer.id),
        "sender_role": "customer",
        "body": "hello there",  # trimmed
        "client_message_id": "c-1",
        "created_at": iso(inst.clock.now()),
    }
    reply = await sent(inst, cast.mitra, sid, "hi!", "m-1")
    assert (reply["seq"], reply["sender_role"]) == (2, "mitra")
    assert await pg.fetchval("SELECT count(*) FROM chat_messages") == 2
    session = await session_payload(inst, cast.admin, sid)
    assert (session["last_message_seq"], session["customer_read_seq"]) == (2, 0)


async def test_the_same_client_message_id_again_answers_200_with_the_first_message(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    cast = await make_cast(inst)
    sid = await make_active_session(inst, cast.customer, cast.mitra)
    first = await sent(inst, cast.customer, sid, "once", "same-id")
    inst.clock.advance(10)
    # A retry (same body or not: the id is the key) gets the stored message back.
    for body in ("once", "a different body"):
        r = await send(inst.client, cast.customer, sid, body, "same-id")
        assert r.status_code == 200, r.text
        assert r.json()["message"] == first
    # The key is per sender: the mitra may use the same id for a message of its own.
    other = await sent(inst, cast.mitra, sid, "mine", "same-id")
    assert other["seq"] == 2
    assert await pg.fetchval("SELECT count(*) FROM chat_messages") == 2
    # A retry still finds its message after the session ended (a lost response).
    r = await inst.client.post(url(sid, "end"), headers=cast.customer.headers)
    assert r.status_code == 200, r.text
    r = await send(inst.client, cast.customer, sid, "once", "same-id")
    assert (r.status_code, r.json()["message"]) == (200, first)


async def test_only_an_active_session_takes_messages(inst: Instance) -> None:
    cast = await make_cast(inst)
    pending = await make_pending_session(inst, cast.customer, cast.mitra)
    r = await send(inst.client, cast.customer, pending, "too early", "c-1")
    assert (r.status_code, r.json()["error"]) == (409, "invalid_state")
    sid = await make_active_session(inst, cast.other_customer, cast.other_mitra)
    await sent(inst, cast.other_customer, sid, "before the end", "c-1")
    r = await inst.client.post(url(sid, "end"), headers=cast.other_mitra.headers)
    assert r.json()["session"]["status"] == "ended"
    for person in (cast.other_customer, cast.other_mitra):
        r = await send(inst.client, person, sid, "too late", "c-2")
        assert (r.status_code, r.json()["error"]) == (409, "invalid_state"), r.text
    # The history stays readable to both parties and admins.
    for person in (cast.other_customer, cast.other_mitra, cast.admin):
        assert [m["body"] for m in await history(inst, person, sid)] == ["before the end"]


async def test_strangers_get_404_and_admins_403_when_sending(inst: Instance) -> None:
    cast = await make_cast(inst)
    sid = await make_active_session(inst, cast.customer, cast.mitra)
    for stranger in (cast.other_customer, cast.other_mitra):
        r = await send(inst.client, stranger, sid, "hi", "x")
        assert (r.status_code, r.json()["error"]) == (404, "not_found"), r.text
        r = await inst.client.get(messages_url(sid), headers=stranger.headers)
        assert (r.status_code, r.json()["error"]) == (404, "not_found"), r.text
    r = await send(inst.client, cast.admin, sid, "hi", "x")
    assert (r.status_code, r.json()["error"]) == (403, "forbidden")
    r = await send(inst.client, cast.customer, "00000000-0000-0000-0000-000000000000", "hi", "x")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = await inst.client.post(messages_url(sid), json={"client_message_id": "x", "body": "hi"})
    assert (r.status_code, r.json()["error"]) == (401, "invalid_token")


BAD_BODIES: list[Any] = [
    {"client_message_id": "c", "body": ""},
    {"client_message_id": "c", "body": " \n\t "},  # empty once trimmed
    {"client_message_id": "c", "body": "x" * 4001},
    {"client_message_id": "c", "body": "nul \u0000 inside"},
    {"client_message_id": "c", "body": "lone \ud800 surrogate"},
    {"client_message_id": "", "body": "hi"},
    {"client_message_id": "c" * 65, "body": "hi"},
    {"client_message_id": "c\u0000", "body": "hi"},
    {"client_message_id": 7, "body": "hi"},
    {"client_message_id": "c", "body": 7},
    {"client_message_id": "c"},
    {"body": "hi"},
    {"client_message_id": "c", "body": "hi", "extra": 1},
    ["c", "hi"],
    "hi",
]


@pytest.mark.parametrize("payload", BAD_BODIES)
async def test_bad_bodies_are_422_invalid_request_and_store_nothing(
    inst: Instance, pg: asyncpg.Connection, payload: Any
) -> None:
    cast = await make_cast(inst)
    sid = await make_active_session(inst, cast.customer, cast.mitra)
    # Escaped JSON (ensure_ascii), so a lone surrogate travels as the text `\ud800`.
    raw = json.dumps(payload).encode()
    headers = {**cast.customer.headers, "content-type": "application/json"}
    r = await inst.client.post(messages_url(sid), content=raw, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request"
    assert await pg.fetchval("SELECT count(*) FROM chat_messages") == 0


async def test_bodies_at_the_limits_are_stored(inst: Instance) -> None:
    cast = await make_cast(inst)
    sid = await make_active_session(inst, cast.customer, cast.mitra)
    longest = "ü" * 4000  # characters, not bytes
    message = await sent(inst, cast.customer, sid, f"  {longest}  ", "k" * 64)
    assert (message["body"], message["client_message_id"]) == (longest, "k" * 64)
    message = await sent(inst, cast.customer, sid, "x", "🙂")
    assert message["body"] == "x" and message["seq"] == 2
    r = await inst.client.post(
        messages_url(sid), content=b"{not json", headers=cast.customer.headers
    )
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request")


async def test_message_created_reaches_both_parties_and_nobody_else(inst: Instance) -> None:
    cast = await make_cast(inst)
    sid = await make_active_session(inst, cast.customer, cast.mitra)
    inboxes = {p.id: Inbox() for p in (cast.customer, cast.mitra, cast.other_customer)}
    for user_id, inbox in inboxes.items():
        bus(inst.ctx).attach(user_id, inbox)
    message = await sent(inst, cast.mitra, sid, "hello", "m-1")
    r = await send(inst.client, cast.mitra, sid, "hello", "m-1")  # a retry tells nobody
    assert r.status_code == 200
    expected = [{"session_id": str(sid), "message": message}]
    assert inboxes[cast.customer.id].of("message.created") == expected
    assert inboxes[cast.mitra.id].of("message.created") == expected
    assert inboxes[cast.other_customer.id].events == []
