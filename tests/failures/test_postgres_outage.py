"""Postgres goes away under a running app (a proxy in front of it is cut): the Valkey hot
paths keep answering, the rest answers 503 database_unavailable (never 500), and it all
comes back by itself when Postgres does, without restarting the app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest

from halobestie.availability.sweeps import run_auto_offline
from halobestie.errors import DatabaseUnavailable
from tests.conftest import Instance, eventually
from tests.factories import PASSWORD, Person, make_user
from tests.support.proxy import FaultProxy

from . import helpers
from .helpers import (
    availability_of,
    beacon,
    heartbeat,
    online_mitra,
    record_statuses,
    state_of,
)

# The shared fixtures (requested by their short names).
postgres_fault_app_fixture = helpers.postgres_fault_app_fixture
postgres_proxy_fixture = helpers.postgres_proxy_fixture


@dataclass
class Cast:
    admin: Person
    customer: Person
    mitra: Person  # online, keeps pinging
    offline: Person
    deactivated: Person


async def build_cast(inst: Instance) -> Cast:
    admin = await make_user(inst.ctx, "admin")
    customer = await make_user(inst.ctx, "customer")
    mitra = await online_mitra(inst)
    offline = await make_user(inst.ctx, "mitra")
    deactivated = await online_mitra(inst)
    r = await inst.client.patch(
        f"/api/admin/mitras/{deactivated.id}", json={"is_active": False}, headers=admin.headers
    )
    assert r.status_code == 200, r.text
    return Cast(admin, customer, mitra, offline, deactivated)


Request = Callable[[], Awaitable[httpx.Response]]


def postgres_needed(inst: Instance, cast: Cast) -> dict[str, Request]:
    """Requests that cannot be answered without Postgres."""
    client = inst.client
    return {
        "login": lambda: client.post(
            "/api/auth/login", json={"email": cast.customer.user.email, "password": PASSWORD}
        ),
        "go online": lambda: client.post("/api/mitra/status/online", headers=cast.mitra.headers),
        "admin list": lambda: client.get("/api/admin/mitras", headers=cast.admin.headers),
        "mitra status": lambda: client.get("/api/mitra/status", headers=cast.mitra.headers),
    }


async def test_valkey_paths_answer_and_postgres_paths_say_503_during_a_postgres_outage(
    postgres_fault_app: Instance, postgres_proxy: FaultProxy, valkey: Any
) -> None:
    inst = postgres_fault_app
    statuses = record_statuses(inst)
    cast = await build_cast(inst)

    await postgres_proxy.cut()
    inst.clock.advance(30)
    # The hot paths live on Valkey alone.
    r = await heartbeat(inst, cast.mitra)
    assert r.status_code == 200, r.text
    await valkey.delete(inst.ctx.keys.snapshot)  # computed now, from Valkey, not cached
    assert state_of(await beacon(inst)) == ("available", 1)
    assert await availability_of(inst, cast.customer, cast.mitra.id) == {
        "reachable": True,
        "available": True,
    }
    assert await availability_of(inst, cast.customer, cast.deactivated.id) == {
        "reachable": False,
        "available": False,
    }
    # A deactivated mitra is still refused by the Valkey guard.
    r = await heartbeat(inst, cast.deactivated)
    assert r.status_code == 403 and r.json()["error"] == "mitra_deactivated", r.text

    for name, request in postgres_needed(inst, cast).items():
        r = await request()
        assert r.status_code == 503, (name, r.status_code, r.text)
        assert r.json()["error"] == "database_unavailable", (name, r.text)
    r = await inst.client.get("/readyz")
    assert r.status_code == 503 and r.json()["postgres"] == "unavailable", r.text
    assert r.json()["valkey"] == "ok"
    assert not [s for s in statuses if s[1] == 500], statuses

    await postgres_proxy.restore()
    # Same app, no restart: each of them works again within a few polls.
    for request in postgres_needed(inst, cast).values():
        await eventually(partial(_ok, request))
    r = await inst.client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"postgres": "ok", "valkey": "ok"}, r.text
    r = await inst.client.get("/api/mitra/status", headers=cast.mitra.headers)
    assert r.json()["is_online"] is True, r.text
    assert not [s for s in statuses if s[1] == 500], statuses


async def test_offline_mitra_availability_answers_from_valkey_during_a_postgres_outage(
    postgres_fault_app: Instance, postgres_proxy: FaultProxy
) -> None:
    """An offline mitra is simply absent from Valkey's sets; telling it apart from an
    unknown id needs Postgres. While Postgres is down, "not reachable" is the answer the
    customer needs (not a 503); an unknown id is a 404 again once Postgres is back."""
    inst = postgres_fault_app
    cast = await build_cast(inst)
    await postgres_proxy.cut()
    assert await availability_of(inst, cast.customer, cast.offline.id) == {
        "reachable": False,
        "available": False,
    }
    await postgres_proxy.restore()
    unknown = "00000000-0000-4000-8000-000000000000"

    async def unknown_is_404() -> bool:
        r = await inst.client.get(
            f"/api/mitras/{unknown}/availability", headers=cast.customer.headers
        )
        return r.status_code == 404

    await eventually(unknown_is_404)


async def test_auto_offline_sweep_leaves_valkey_alone_while_postgres_is_down(
    postgres_fault_app: Instance, postgres_proxy: FaultProxy, valkey: Any
) -> None:
    inst = postgres_fault_app
    alive = await online_mitra(inst)
    silent = await online_mitra(inst)
    await postgres_proxy.cut()
    inst.clock.advance(70)  # HEARTBEAT_STALE_SECONDS is 60
    assert (await heartbeat(inst, alive)).status_code == 200
    before = await _mirror_dump(inst, valkey)
    assert set(before[inst.ctx.keys.online]) == {str(alive.id), str(silent.id)}

    with pytest.raises(DatabaseUnavailable):
        await run_auto_offline(inst.ctx, inst.clock.now())
    assert await _mirror_dump(inst, valkey) == before  # Postgres first: nothing mirrored

    await postgres_proxy.restore()

    async def sweep_runs() -> bool:
        try:
            return (await run_auto_offline(inst.ctx, inst.clock.now())).affected == 1
        except DatabaseUnavailable:
            return False

    await eventually(sweep_runs)
    assert set(await valkey.smembers(inst.ctx.keys.online)) == {str(alive.id)}
    assert await valkey.get(inst.ctx.keys.heartbeat(silent.id)) is None


async def _ok(request: Request) -> bool:
    return (await request()).status_code == 200


async def _mirror_dump(inst: Instance, valkey: Any) -> dict[str, Any]:
    """Every mirror key and its value (sets sorted), as an operator would snapshot it."""
    dump: dict[str, Any] = {}
    for key in sorted(await valkey.keys("mitra*")):
        kind = await valkey.type(key)
        if kind == "set":
            dump[key] = sorted(await valkey.smembers(key))
        elif kind == "zset":
            dump[key] = await valkey.zrange(key, 0, -1, withscores=True)
        else:
            dump[key] = await valkey.get(key)
    return dump
