"""/readyz against a Postgres that accepts and never answers (frozen, or partitioned): the
probe answers 503 within the statement bound, long before the check's own query timeout,
so a load balancer reads a reason instead of its own probe timeout; once Postgres answers
again the probe says ready, with no restart."""

from __future__ import annotations

import asyncio

from tests.conftest import AppFactory, Servers, eventually
from tests.failures.helpers import postgres_proxy_fixture, postgres_url_via
from tests.support.proxy import FaultProxy

postgres_proxy = postgres_proxy_fixture


async def test_readyz_answers_503_while_postgres_hangs_and_200_once_it_answers(
    make_app: AppFactory, clean: Servers, postgres_proxy: FaultProxy
) -> None:
    # The check's query may hang for 30 s (DATABASE_TIMEOUT_SECONDS); the probe's bound is
    # the statement bound, 1 s here: an answer within 15 s can only come from the bound.
    async with make_app(
        DATABASE_URL=postgres_url_via(clean, postgres_proxy),
        DATABASE_TIMEOUT_SECONDS=30,
        DATABASE_STATEMENT_TIMEOUT_SECONDS=1,
    ) as inst:
        try:
            r = await inst.client.get("/readyz")
            assert r.status_code == 200, r.text
            await postgres_proxy.blackhole()
            probes = await asyncio.wait_for(
                asyncio.gather(*(inst.client.get("/readyz") for _ in range(3))), 15
            )
            for r in probes:
                assert r.status_code == 503, r.text
                assert r.json() == {"postgres": "unavailable", "valkey": "ok"}
            r = await asyncio.wait_for(inst.client.head("/readyz"), 15)
            assert r.status_code == 503
            assert postgres_proxy.mode == "blackhole"  # answered while Postgres still hangs
        finally:
            await postgres_proxy.restore()

        async def ready() -> bool:
            return (await inst.client.get("/readyz")).status_code == 200

        await eventually(ready, within=30)
