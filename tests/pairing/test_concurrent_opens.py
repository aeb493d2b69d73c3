"""Many customers opening at once: two instances never herd on the same mitras, and a
burst is answered from Postgres too while Valkey is down."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx

from tests.conftest import AppFactory
from tests.factories import make_user
from tests.failures import helpers
from tests.failures.helpers import online_mitra, record_statuses
from tests.support.proxy import FaultProxy

from .support import open_request

valkey_fault_app_fixture = helpers.valkey_fault_app_fixture
valkey_proxy_fixture = helpers.valkey_proxy_fixture


def _offered(responses: list[httpx.Response]) -> list[str]:
    offered: list[str] = []
    for r in responses:
        assert r.status_code == 201, r.text
        offered += r.json()["pairing_request"]["offered_to"]
    return offered


async def test_two_instances_opening_at_once_offer_each_mitra_once(
    make_app: AppFactory,
) -> None:
    async with make_app(PAIRING_FANOUT=2) as a, make_app(PAIRING_FANOUT=2) as b:
        mitras = [await online_mitra(a) for _ in range(20)]
        customers = [await make_user(a.ctx, "customer") for _ in range(10)]

        responses = await asyncio.gather(
            *(open_request(a if n % 2 else b, customer) for n, customer in enumerate(customers))
        )

        offered = _offered(list(responses))
        # Each pick takes its mitras' turns atomically in Valkey: with 20 mitras and 10
        # requests of 2, everyone is offered exactly once, whichever instance asked.
        assert Counter(offered) == Counter({str(m.id): 1 for m in mitras})


async def test_a_burst_of_fifty_is_answered_from_postgres_while_valkey_is_down(
    valkey_fault_app: Any, valkey_proxy: FaultProxy
) -> None:
    inst = valkey_fault_app
    statuses = record_statuses(inst)
    mitras = {str((await online_mitra(inst)).id) for _ in range(60)}
    customers = [await make_user(inst.ctx, "customer") for _ in range(50)]
    await valkey_proxy.cut()

    responses = await asyncio.gather(*(open_request(inst, c) for c in customers))

    offered = _offered(list(responses))
    assert set(offered) <= mitras
    assert all(len(r.json()["pairing_request"]["offered_to"]) == 5 for r in responses)
    assert not [s for s in statuses if s[1] >= 500], statuses
