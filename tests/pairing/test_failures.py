"""The blast under failures: Postgres down -> 503 (the blast writes); Valkey down -> the
blast still works from the Postgres fallback, and the mirror catches up afterwards."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import asyncpg
import httpx

from halobestie.timers import run_due_timers
from tests.conftest import Instance, eventually
from tests.factories import make_user
from tests.failures import helpers
from tests.failures.helpers import fallback_reads, online_mitra, record_statuses
from tests.support.proxy import FaultProxy

from .support import accept, cancel, get_request, offers_of, online_mitras, open_ok, open_request

postgres_fault_app_fixture = helpers.postgres_fault_app_fixture
postgres_proxy_fixture = helpers.postgres_proxy_fixture
valkey_fault_app_fixture = helpers.valkey_fault_app_fixture
valkey_proxy_fixture = helpers.valkey_proxy_fixture


async def test_pairing_answers_503_while_postgres_is_down_and_recovers(
    postgres_fault_app: Instance, postgres_proxy: FaultProxy
) -> None:
    inst = postgres_fault_app
    statuses = record_statuses(inst)
    customer = await make_user(inst.ctx, "customer")
    other_customer = await make_user(inst.ctx, "customer")
    mitra = await online_mitra(inst)
    request = await open_ok(inst, other_customer)

    await postgres_proxy.cut()
    attempts: dict[str, Callable[[], Awaitable[httpx.Response]]] = {
        "open": lambda: open_request(inst, customer),
        "read": lambda: get_request(inst, other_customer, request["id"]),
        "cancel": lambda: cancel(inst, other_customer, request["id"]),
        "accept": lambda: accept(inst, mitra, request["id"]),
        "offers": lambda: inst.client.get("/api/mitra/offers", headers=mitra.headers),
    }
    for name, attempt in attempts.items():
        r = await attempt()
        assert r.status_code == 503, (name, r.text)
        assert r.json()["error"] == "database_unavailable", (name, r.text)

    await postgres_proxy.restore()

    async def accepted() -> bool:
        return (await accept(inst, mitra, request["id"])).status_code == 200

    await eventually(accepted)
    assert not [s for s in statuses if s[1] == 500], statuses


async def test_the_blast_works_from_postgres_while_valkey_is_down(
    valkey_fault_app: Instance, valkey_proxy: FaultProxy, valkey: Any, pg: asyncpg.Connection
) -> None:
    inst = valkey_fault_app
    statuses = record_statuses(inst)
    customer = await make_user(inst.ctx, "customer")
    mitras = await online_mitras(inst, 3)
    busy_customer = await make_user(inst.ctx, "customer")
    full = await online_mitra(inst)
    busy_request = await open_ok(inst, busy_customer, mitra_id=str(full.id))
    assert (await accept(inst, full, busy_request["id"])).status_code == 200
    before = await fallback_reads(inst, "pairing")

    await valkey_proxy.cut()
    request = await open_ok(inst, customer)

    assert sorted(request["offered_to"]) == sorted(str(m.id) for m in mitras)
    assert await fallback_reads(inst, "pairing") > before
    assert [o["request_id"] for o in await offers_of(inst, mitras[0])] == [request["id"]]
    r = await accept(inst, mitras[0], request["id"])
    assert r.status_code == 200, r.text
    r = await accept(inst, mitras[1], request["id"])
    assert r.status_code == 409 and r.json()["error"] == "already_taken", r.text
    # Expiry needs Postgres only.
    other = await make_user(inst.ctx, "customer")
    doomed = await open_ok(inst, other, mitra_id=str(mitras[2].id))
    inst.clock.advance(31)
    assert await run_due_timers(inst.ctx, inst.clock.now()) == 1
    assert (await get_request(inst, other, doomed["id"])).json()["pairing_request"][
        "status"
    ] == "expired"

    await valkey_proxy.restore()
    # The capacity the mirror missed is healed by the reseed after reconnect.
    await eventually(lambda: inst.ctx.mirror.trusted and inst.ctx.mirror.reachable)
    assert await valkey.get(f"mitra:capacity:{mitras[0].id}") == "1"
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM chat_sessions WHERE mitra_id = $1", UUID(str(mitras[0].id))
        )
        == 1
    )
    assert not [s for s in statuses if s[1] >= 500], statuses
