"""The ranked index (`mitras:ranked`): who the pairing blast may offer, kept by every
write path and the seed, against the real servers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

import asyncpg

from halobestie.availability.ranked import BAND, epoch_ms
from halobestie.availability.scripts import scripts
from halobestie.availability.sweeps import run_auto_offline
from halobestie.timers import run_due_timers
from tests.availability import NO_DIFFERENCES
from tests.conftest import AppFactory, Instance
from tests.factories import PASSWORD, Person, make_user
from tests.failures.helpers import heartbeat, online_mitra
from tests.pairing.support import accept, open_ok
from tests.sessions.helpers import pay, url

RANKED = "mitras:ranked"


async def _ranked(valkey: Any) -> dict[str, tuple[int, int]]:
    """mitra id -> (load band, idle-since ms)."""
    entries = await valkey.zrange(RANKED, 0, -1, withscores=True)
    return {m: divmod(int(score), BAND) for m, score in entries}


async def _drift(inst: Instance) -> dict[str, Any]:
    admin = await make_user(inst.ctx, "admin")
    r = await inst.client.get("/api/admin/availability/drift", headers=admin.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _status(inst: Instance, mitra: Person, action: str) -> None:
    r = await inst.client.post(f"/api/mitra/status/{action}", headers=mitra.headers)
    assert r.status_code == 200, r.text


async def _set_active(inst: Instance, admin: Person, mitra: Person, active: bool) -> None:
    r = await inst.client.patch(
        f"/api/admin/mitras/{mitra.id}", json={"is_active": active}, headers=admin.headers
    )
    assert r.status_code == 200, r.text


async def test_going_online_offline_and_deactivation_move_a_mitra_in_and_out(
    inst: Instance, valkey: Any
) -> None:
    mitra = await online_mitra(inst)
    admin = await make_user(inst.ctx, "admin")
    key = str(mitra.id)
    assert await _ranked(valkey) == {key: (0, 0)}  # never active: the idlest of all

    await _status(inst, mitra, "offline")
    assert await _ranked(valkey) == {}
    await _status(inst, mitra, "online")
    assert await _ranked(valkey) == {key: (0, 0)}

    await _set_active(inst, admin, mitra, False)
    assert await _ranked(valkey) == {}
    await _set_active(inst, admin, mitra, True)
    assert await _ranked(valkey) == {}  # reactivated is not online
    r = await inst.client.post("/api/auth/login", json=_login(mitra))
    assert r.status_code == 200, r.text
    relogged = {"Authorization": f"Bearer {r.json()['access_token']}"}
    r = await inst.client.post("/api/mitra/status/online", headers=relogged)
    assert r.status_code == 200, r.text
    assert await _ranked(valkey) == {key: (0, 0)}
    assert (await _drift(inst))["differences"] == NO_DIFFERENCES


def _login(person: Person) -> dict[str, str]:
    return {"email": person.user.email, "password": PASSWORD}


async def test_every_session_transition_moves_the_load_band_and_idle_since(
    make_app: AppFactory, valkey: Any, pg: asyncpg.Connection
) -> None:
    async with make_app(MITRA_MAX_CONCURRENT_SESSIONS=2, PAIRING_FANOUT=1) as inst:
        mitra = await online_mitra(inst)
        customer = await make_user(inst.ctx, "customer")
        other = await make_user(inst.ctx, "customer")
        key = str(mitra.id)
        t0 = inst.clock.now()

        # Accepted: one open session (band 1), active since the accept.
        request = await open_ok(inst, customer)
        assert request["offered_to"] == [key]
        inst.clock.advance(1)
        r = await accept(inst, mitra, request["id"])
        assert r.status_code == 200, r.text
        session_id = UUID(r.json()["session"]["id"])
        assert await _ranked(valkey) == {key: (1, epoch_ms(inst.clock.now()))}

        # Paid: neither a start nor an end; still band 1, same idle-since.
        accepted_at = epoch_ms(inst.clock.now())
        inst.clock.advance(1)
        await pay(inst, session_id)
        assert await _ranked(valkey) == {key: (1, accepted_at)}

        # A second accept fills the mitra up (limit 2): it leaves the index.
        second = await open_ok(inst, other)
        r = await accept(inst, mitra, second["id"])
        assert r.status_code == 200, r.text
        second_id = UUID(r.json()["session"]["id"])
        assert await _ranked(valkey) == {}

        # Ended by the customer: back in band 1, idle since the end.
        inst.clock.advance(5)
        r = await inst.client.post(url(session_id, "end"), headers=customer.headers)
        assert r.status_code == 200, r.text
        assert await _ranked(valkey) == {key: (1, epoch_ms(inst.clock.now()))}

        # Payment timeout cancels the other: band 0.
        inst.clock.advance(601)
        assert await run_due_timers(inst.ctx, inst.clock.now()) >= 1
        assert await pg.fetchval("SELECT status FROM chat_sessions WHERE id = $1", second_id) == (
            "cancelled"
        )
        assert await _ranked(valkey) == {key: (0, epoch_ms(inst.clock.now()))}
        row = await pg.fetchrow(
            "SELECT open_sessions, last_active_at FROM mitras WHERE id = $1", mitra.id
        )
        assert row is not None
        assert row["open_sessions"] == 0 and row["last_active_at"] > t0
        assert (await _drift(inst))["differences"] == NO_DIFFERENCES


async def test_a_silent_mitra_is_skipped_loses_its_turn_and_leaves_when_swept(
    make_app: AppFactory, valkey: Any
) -> None:
    async with make_app(PAIRING_FANOUT=2, HEARTBEAT_STALE_SECONDS=60) as inst:
        silent = await online_mitra(inst)
        alive = await online_mitra(inst)
        customer = await make_user(inst.ctx, "customer")
        inst.clock.advance(61)
        assert (await heartbeat(inst, alive)).status_code == 200

        request = await open_ok(inst, customer)

        assert request["offered_to"] == [str(alive.id)]
        ranked = await _ranked(valkey)
        now_ms = epoch_ms(inst.clock.now())
        assert ranked == {str(silent.id): (0, now_ms), str(alive.id): (0, now_ms)}
        # Skipping is no write to Postgres: the drift report does not call it drift.
        assert (await _drift(inst))["in_sync"] is True
        await run_auto_offline(inst.ctx, inst.clock.now())
        assert set(await _ranked(valkey)) == {str(alive.id)}


async def test_offers_rotate_through_the_pool_instead_of_herding(
    make_app: AppFactory, valkey: Any
) -> None:
    async with make_app(PAIRING_FANOUT=2) as inst:
        mitras = [await online_mitra(inst) for _ in range(6)]
        customers = [await make_user(inst.ctx, "customer") for _ in range(3)]
        offered: list[str] = []
        for customer in customers:
            inst.clock.advance(1)
            offered += (await open_ok(inst, customer))["offered_to"]
        assert sorted(offered) == sorted(str(m.id) for m in mitras)
        # Every turn taken is ahead of Postgres, which is not drift.
        assert (await _drift(inst))["in_sync"] is True


async def test_postgres_has_the_last_word_over_a_lagging_index(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    async with make_app(PAIRING_FANOUT=1) as inst:
        gone, ready = await online_mitra(inst), await online_mitra(inst)
        customer = await make_user(inst.ctx, "customer")
        # Postgres changes behind the mirror's back (a write whose mirror step was lost).
        await pg.execute("UPDATE mitras SET is_online = false WHERE id = $1", gone.id)
        await pg.execute(
            "UPDATE mitras SET last_active_at = $2 WHERE id = $1",
            ready.id,
            inst.clock.now() - timedelta(minutes=1),
        )
        # `gone` ranks first in Valkey (never active): refused by Postgres, tried again.
        request = await open_ok(inst, customer)
        assert request["offered_to"] == [str(ready.id)]


async def test_a_reseed_after_valkey_lost_everything_rebuilds_the_index(
    inst: Instance, valkey: Any
) -> None:
    mitras = [await online_mitra(inst) for _ in range(3)]
    customer = await make_user(inst.ctx, "customer")
    request = await open_ok(inst, customer)
    r = await accept(inst, mitras[0], request["id"])
    assert r.status_code == 200, r.text
    before = await _ranked(valkey)
    assert set(before) == {str(m.id) for m in mitras[1:]}

    await valkey.flushall()
    admin = await make_user(inst.ctx, "admin")
    r = await inst.client.post("/api/admin/availability/reseed", headers=admin.headers)
    assert r.status_code == 200, r.text
    assert r.json()["ranked"] == 2
    # The turns taken by the offer lived only in Valkey: rebuilt from Postgres' truth.
    assert await _ranked(valkey) == {m: (0, 0) for m in before}
    assert (await _drift(inst))["differences"] == NO_DIFFERENCES


async def test_the_seeds_temporary_index_expires_and_the_live_one_does_not(
    inst: Instance, valkey: Any
) -> None:
    await online_mitra(inst)
    admin = await make_user(inst.ctx, "admin")
    r = await inst.client.post("/api/admin/availability/reseed", headers=admin.headers)
    assert r.status_code == 200, r.text
    assert await valkey.ttl(RANKED) == -1  # persistent
    # What a seed killed between building and swapping would leave: a key that expires.
    await scripts(inst.ctx).merge_ranked(
        keys=[RANKED, "mitras:seed-tmp:ranked:orphan"], args=["x", "1"]
    )
    assert 0 < await valkey.ttl("mitras:seed-tmp:ranked:orphan") <= 600
