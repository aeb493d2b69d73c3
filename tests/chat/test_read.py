"""POST /api/sessions/{id}/read: each party's read cursor, never backwards, in every
session payload, and `message.read` to the other party."""

from __future__ import annotations

from typing import Any

import pytest

from halobestie.events.bus import bus
from tests.chat.helpers import Inbox, make_active_session, read_url, sent, session_payload
from tests.conftest import Instance
from tests.sessions.helpers import make_cast, make_pending_session, url


def cursors(session: dict[str, Any]) -> tuple[int, int, int]:
    return session["last_message_seq"], session["customer_read_seq"], session["mitra_read_seq"]


async def test_cursors_move_forward_only_and_show_in_the_session(inst: Instance) -> None:
    cast = await make_cast(inst)
    sid = await make_active_session(inst, cast.customer, cast.mitra)
    assert cursors(await session_payload(inst, cast.customer, sid)) == (0, 0, 0)
    for n in range(1, 5):
        await sent(inst, cast.mitra, sid, f"m{n}", f"m-{n}")
    c, m = cast.customer, cast.mitra

    r = await inst.client.post(read_url(sid), json={"seq": 3}, headers=c.headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"read": {"user_id": str(c.id), "seq": 3}}
    r = await inst.client.post(read_url(sid), json={"seq": 1}, headers=c.headers)  # backwards
    assert r.json() == {"read": {"user_id": str(c.id), "seq": 3}}
    r = await inst.client.post(read_url(sid), json={"seq": 0}, headers=c.headers)
    assert r.json() == {"read": {"user_id": str(c.id), "seq": 3}}
    r = await inst.client.post(read_url(sid), json={"seq": 4}, headers=m.headers)
    assert r.json() == {"read": {"user_id": str(m.id), "seq": 4}}
    assert cursors(await session_payload(inst, cast.admin, sid)) == (4, 3, 4)

    # Above the last message: 422, nothing moves.
    r = await inst.client.post(read_url(sid), json={"seq": 5}, headers=c.headers)
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), r.text
    assert cursors(await session_payload(inst, c, sid)) == (4, 3, 4)

    # After the session closes, the end of the conversation can still be marked read.
    r = await inst.client.post(url(sid, "end"), headers=m.headers)
    assert r.status_code == 200
    assert cursors(r.json()["session"]) == (4, 3, 4)
    r = await inst.client.post(read_url(sid), json={"seq": 4}, headers=c.headers)
    assert r.json() == {"read": {"user_id": str(c.id), "seq": 4}}


async def test_message_read_goes_to_the_other_party_only_when_the_cursor_moves(
    inst: Instance,
) -> None:
    cast = await make_cast(inst)
    sid = await make_active_session(inst, cast.customer, cast.mitra)
    await sent(inst, cast.customer, sid, "one", "c-1")
    await sent(inst, cast.customer, sid, "two", "c-2")
    inboxes = {p.id: Inbox() for p in (cast.customer, cast.mitra, cast.other_mitra)}
    for user_id, inbox in inboxes.items():
        bus(inst.ctx).attach(user_id, inbox)
    for seq in (2, 1, 2):
        r = await inst.client.post(read_url(sid), json={"seq": seq}, headers=cast.mitra.headers)
        assert r.status_code == 200, r.text
    assert inboxes[cast.customer.id].of("message.read") == [
        {"session_id": str(sid), "user_id": str(cast.mitra.id), "seq": 2}
    ]
    assert inboxes[cast.mitra.id].events == []
    assert inboxes[cast.other_mitra.id].events == []


async def test_who_may_move_a_cursor(inst: Instance) -> None:
    cast = await make_cast(inst)
    sid = await make_active_session(inst, cast.customer, cast.mitra)
    for stranger in (cast.other_customer, cast.other_mitra):
        r = await inst.client.post(read_url(sid), json={"seq": 0}, headers=stranger.headers)
        assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = await inst.client.post(read_url(sid), json={"seq": 0}, headers=cast.admin.headers)
    assert (r.status_code, r.json()["error"]) == (403, "forbidden")
    pending = await make_pending_session(inst, cast.other_customer, cast.other_mitra)
    r = await inst.client.post(
        read_url(pending), json={"seq": 0}, headers=cast.other_customer.headers
    )
    assert r.json() == {"read": {"user_id": str(cast.other_customer.id), "seq": 0}}


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"seq": -1},
        {"seq": "1"},
        {"seq": 1.0},
        {"seq": None},
        {"seq": 2**31},
        {"seq": 1, "x": 1},
    ],
)
async def test_bad_read_bodies_are_422(inst: Instance, payload: Any) -> None:
    cast = await make_cast(inst)
    sid = await make_active_session(inst, cast.customer, cast.mitra)
    await sent(inst, cast.customer, sid, "one", "c-1")
    r = await inst.client.post(read_url(sid), json=payload, headers=cast.mitra.headers)
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), r.text
