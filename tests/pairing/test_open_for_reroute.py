"""`open_pairing_request` as the sessions' reroute calls it: inside the caller's
transaction, with mitras excluded and the rerouted session recorded; nothing is
published before the caller commits."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import pytest

from halobestie.aftercommit import run_after_commit
from halobestie.errors import NoMitraAvailable
from halobestie.events.announce import record_effects
from halobestie.pairing.actions import open_pairing_request
from halobestie.pairing.models import OfferedRequest
from tests.conftest import Instance
from tests.factories import Person, make_chat_session, make_user

from .support import Inbox, online_mitras


async def _open(
    inst: Instance, customer: Person, exclude: set[UUID], rerouted_from: UUID | None, **kw: Any
) -> tuple[OfferedRequest, list[Any]]:
    async with inst.ctx.db.transaction() as conn:
        opened, effects = await open_pairing_request(
            inst.ctx,
            conn,
            customer_id=customer.id,
            duration_minutes=kw.get("duration_minutes", 30),
            preferred_mitra_id=kw.get("preferred_mitra_id"),
            exclude=exclude,
            rerouted_from=rerouted_from,
            now=inst.clock.now(),
        )
        await record_effects(conn, inst.clock.now(), effects)  # as the callers do
    return opened, effects


async def test_excluded_mitras_are_not_offered_and_the_reroute_is_recorded(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    customer = await make_user(inst.ctx, "customer")
    previous, *others = await online_mitras(inst, 3)
    session_id = await make_chat_session(inst.ctx, customer, previous, "rerouted")
    inbox = Inbox().attach(inst, previous, *others)

    request, effects = await _open(inst, customer, {previous.id}, session_id)

    assert sorted(request.offered_to) == sorted(m.id for m in others)
    assert (
        await pg.fetchval(
            "SELECT rerouted_from FROM pairing_requests WHERE id = $1", request.request.id
        )
        == session_id
    )
    # The offers are the caller's to publish, after its commit.
    assert all(inbox.of(m, "pairing.offer") == [] for m in others)
    await run_after_commit(inst.ctx, effects)
    assert all(len(inbox.of(m, "pairing.offer")) == 1 for m in others)
    assert inbox.of(previous, "pairing.offer") == []


async def test_nobody_left_after_exclusion_raises_and_writes_nothing(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    customer = await make_user(inst.ctx, "customer")
    [only] = await online_mitras(inst, 1)

    with pytest.raises(NoMitraAvailable):
        await _open(inst, customer, {only.id}, None)
    with pytest.raises(NoMitraAvailable):
        await _open(inst, customer, {only.id}, None, preferred_mitra_id=only.id)

    assert await pg.fetchval("SELECT count(*) FROM pairing_requests") == 0
