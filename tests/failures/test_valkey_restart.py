"""Valkey restarts EMPTY under a running app (a crashed cache, a failover without
persistence). Until the mirror is re-seeded, every answer comes from Postgres, never from
the empty server; the re-seed happens by itself; then Valkey answers again.

These tests run their own EmbeddedValkey in tmp_path: killing the shared server would pull
it from under the other tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import valkey.asyncio as valkey_async
from valkey.exceptions import ValkeyError

from halobestie.availability.beacon import beacon_local
from halobestie.devservers.valkey import EmbeddedValkey
from tests.conftest import AppFactory, Instance, eventually
from tests.factories import Person, make_user

from .helpers import (
    availability_of,
    beacon,
    dashboard,
    fallback_reads,
    heartbeat,
    online_mitra,
    record_statuses,
    state_of,
)


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    with EmbeddedValkey(tmp_path / "valkey") as server:
        yield server


@pytest.fixture
async def own_raw(own_valkey: EmbeddedValkey) -> AsyncIterator[Any]:
    """An operator's client on the private server (reconnects by itself after a restart)."""
    client = valkey_async.Valkey.from_url(own_valkey.url, decode_responses=True)
    yield client
    await client.aclose()


@dataclass
class World:
    inst: Instance
    admin: Person
    customer: Person
    mitra: Person


@pytest.fixture
async def world(make_app: AppFactory, own_valkey: EmbeddedValkey) -> AsyncIterator[World]:
    async with make_app(VALKEY_URL=own_valkey.url) as inst:
        admin = await make_user(inst.ctx, "admin")
        customer = await make_user(inst.ctx, "customer")
        mitra = await online_mitra(inst)
        assert (await heartbeat(inst, mitra)).status_code == 200
        assert inst.ctx.mirror.trusted
        assert (await dashboard(inst, admin))["source"] == "valkey"
        yield World(inst, admin, customer, mitra)


async def mirror_is_back(world: World, raw: Any) -> bool:
    """Trusted again and visibly re-seeded, as an operator would check it."""
    keys = world.inst.ctx.keys
    return (
        world.inst.ctx.mirror.trusted
        and set(await raw.smembers(keys.online)) == {str(world.mitra.id)}
        and await raw.get(keys.heartbeat(world.mitra.id)) is not None
    )


async def test_restart_while_idle_next_reads_come_from_postgres_until_reseeded(
    world: World, own_valkey: EmbeddedValkey, own_raw: Any
) -> None:
    inst, statuses = world.inst, record_statuses(world.inst)
    beacon_fallbacks = await fallback_reads(inst, "beacon")

    own_valkey.restart_empty()  # nothing in flight: the app learns of it on its next command
    assert await own_raw.dbsize() == 0

    # The empty server would say "offline"; the first read notices the new server
    # (run_id) and answers from Postgres instead.
    assert state_of(await beacon(inst)) == ("available", 1)
    assert await fallback_reads(inst, "beacon") == beacon_fallbacks + 1
    assert await availability_of(inst, world.customer, world.mitra.id) == {
        "reachable": True,
        "available": True,
    }
    r = await heartbeat(inst, world.mitra)  # the empty server would say 409 not_online
    assert r.status_code == 200, r.text

    # No operator: the mirror is rebuilt from Postgres and trusted again.
    await eventually(lambda: mirror_is_back(world, own_raw))
    board = await dashboard(inst, world.admin)
    assert (board["source"], board["online_count"], board["available_count"]) == ("valkey", 1, 1)
    settled = await fallback_reads(inst)
    assert state_of(await beacon(inst)) == ("available", 1)
    assert await availability_of(inst, world.customer, world.mitra.id) == {
        "reachable": True,
        "available": True,
    }
    assert await fallback_reads(inst) == settled  # Valkey answers again
    r = await inst.client.get("/api/admin/availability/drift", headers=world.admin.headers)
    assert r.status_code == 200 and r.json()["in_sync"] is True, r.text
    assert not [s for s in statuses if s[1] >= 500], statuses


async def test_restart_under_load_never_answers_from_the_empty_server(
    world: World, own_valkey: EmbeddedValkey, own_raw: Any
) -> None:
    """Requests keep coming while the server dies and comes back empty: every single
    answer must be the true one (an empty mirror would say offline / not reachable /
    409 not_online)."""
    inst, statuses = world.inst, record_statuses(world.inst)
    wrong: list[str] = []
    done = asyncio.Event()
    rounds = 0

    async def drop_snapshot() -> None:
        # A cached snapshot would hide the engine; the server may be down right now.
        try:
            await own_raw.delete(inst.ctx.keys.snapshot)
        except (OSError, ValkeyError):
            pass

    async def load() -> None:
        nonlocal rounds
        while not done.is_set():
            beacon_local(inst.ctx).fallback = None  # every poll reaches the engine
            await drop_snapshot()
            answer = state_of(await beacon(inst))
            if answer != ("available", 1):
                wrong.append(f"beacon {answer}")
            got = await availability_of(inst, world.customer, world.mitra.id)
            if got != {"reachable": True, "available": True}:
                wrong.append(f"availability {got}")
            r = await heartbeat(inst, world.mitra)
            if r.status_code != 200:
                wrong.append(f"heartbeat {r.status_code} {r.text}")
            rounds += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(load())
    try:
        await eventually(lambda: rounds >= 3)
        fallbacks = await fallback_reads(inst)
        # restart_empty(), in two steps so that requests surely run while it is down
        # and while it comes back.
        own_valkey.kill()
        down = rounds
        await eventually(lambda: rounds >= down + 3)
        await asyncio.to_thread(own_valkey.start)
        await eventually(lambda: mirror_is_back(world, own_raw))
        after = rounds
        await eventually(lambda: rounds >= after + 3)
    finally:
        done.set()
        await task
    assert not wrong, wrong
    assert await fallback_reads(inst) > fallbacks  # the answers while down: from Postgres
    board = await dashboard(inst, world.admin)
    assert (board["source"], board["online_count"], board["available_count"]) == ("valkey", 1, 1)
    assert not [s for s in statuses if s[1] >= 500], statuses
