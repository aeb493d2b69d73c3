"""Every session transition tells both parties (`session.updated`), after commit."""

from __future__ import annotations

import json
from typing import Any

from halobestie.events.bus import bus
from halobestie.timers import run_due_timers
from tests.conftest import Instance
from tests.sessions.helpers import make_cast, make_pending_session, minutes, pay, url


class Inbox:
    """A socket as the event bus sees one: it records what it is sent."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def send_text(self, data: str) -> None:
        self.events.append(json.loads(data))

    def statuses(self) -> list[str]:
        return [
            e["data"]["session"]["status"] for e in self.events if e["type"] == "session.updated"
        ]


async def test_both_parties_hear_of_every_transition_and_strangers_of_none(
    inst: Instance,
) -> None:
    cast = await make_cast(inst)
    inboxes = {p.id: Inbox() for p in (cast.customer, cast.mitra, cast.other_customer)}
    for user_id, inbox in inboxes.items():
        bus(inst.ctx).attach(user_id, inbox)
    first = await make_pending_session(inst, cast.customer, cast.mitra, minutes=5)
    await pay(inst, first)
    r = await inst.client.post(
        url(first, "extend"), json={"minutes": 5}, headers=cast.customer.headers
    )
    assert r.status_code == 200
    await run_due_timers(inst.ctx, inst.clock.now() + minutes(10))  # expires
    second = await make_pending_session(inst, cast.customer, cast.mitra)
    await inst.client.post(url(second, "end"), headers=cast.mitra.headers)  # cancelled
    await inst.client.post(url(second, "end"), headers=cast.mitra.headers)  # no change

    expected = ["pending_payment", "active", "active", "expired", "pending_payment", "cancelled"]
    assert inboxes[cast.customer.id].statuses() == expected
    assert inboxes[cast.mitra.id].statuses() == expected
    assert inboxes[cast.other_customer.id].events == []
    extended = inboxes[cast.customer.id].events[2]["data"]["session"]
    assert extended["id"] == str(first) and extended["ends_at"] is not None
