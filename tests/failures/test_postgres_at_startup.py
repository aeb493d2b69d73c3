"""Postgres unreachable when an instance starts (a compose file starting both at once, a
reboot, a box so loaded that one connect outlasts DATABASE_TIMEOUT_SECONDS): startup
retries for DATABASE_STARTUP_WAIT_SECONDS and serves once Postgres answers; with no wait
it fails with the connect error. Through a real proxy in front of the test Postgres."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from tests.conftest import AppFactory, Servers, eventually
from tests.factories import make_user
from tests.failures.helpers import postgres_proxy_fixture, postgres_url_via
from tests.support.proxy import FaultProxy

postgres_proxy = postgres_proxy_fixture


async def _serves_once_restored(
    make_app: AppFactory,
    clean: Servers,
    proxy: FaultProxy,
    retried: Callable[[], bool] | None = None,
    **overrides: object,
) -> None:
    """Starts an app against the faulted proxy, checks it is still starting 1.5 s later
    (or once `retried()` is true, within 30 s), restores the proxy and checks the app then
    starts and serves Postgres-backed routes."""
    served = asyncio.Event()

    async def run() -> None:
        async with make_app(DATABASE_URL=postgres_url_via(clean, proxy), **overrides) as inst:
            mitra = await make_user(inst.ctx, "mitra")
            r = await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
            assert r.status_code == 200, r.text
            r = await inst.client.get("/api/availability")
            assert r.status_code == 200 and r.json()["available_count"] == 1, r.text
            assert inst.ctx.mirror.trusted  # startup went on to seed the mirror
            served.set()

    task = asyncio.create_task(run())
    try:
        if retried is None:
            await asyncio.sleep(1.5)
        else:
            await eventually(lambda: task.done() or retried(), within=30)
        assert not task.done(), task.exception() if task.done() else None
        await proxy.restore()
        await asyncio.wait_for(task, 25)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert served.is_set()


async def test_startup_waits_for_a_refusing_postgres_and_serves_once_it_answers(
    make_app: AppFactory, clean: Servers, postgres_proxy: FaultProxy
) -> None:
    await postgres_proxy.cut()  # connection refused, like a server not yet listening
    await _serves_once_restored(make_app, clean, postgres_proxy)


async def test_startup_waits_out_connects_that_time_out(
    make_app: AppFactory, clean: Servers, postgres_proxy: FaultProxy
) -> None:
    """Each connect outlasts DATABASE_TIMEOUT_SECONDS (accepted, never answered: the
    shape of an overloaded box); startup keeps trying instead of exiting. The proxy is
    restored once a second connect came (the pool opens one connection at a time, so the
    first one timed out), not after a fixed time under a shorter timeout: the app then
    serves with the suite's timeouts, not with bounds a loaded box would trip."""
    await postgres_proxy.blackhole()

    def second_connect() -> bool:
        return postgres_proxy.connections_accepted >= 2

    await _serves_once_restored(make_app, clean, postgres_proxy, retried=second_connect)
    assert postgres_proxy.connections_accepted >= 2  # the first attempt did time out


async def test_with_no_startup_wait_an_unreachable_postgres_fails_startup(
    make_app: AppFactory, clean: Servers, postgres_proxy: FaultProxy
) -> None:
    await postgres_proxy.cut()
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(OSError):  # ConnectionRefusedError, as asyncpg raised it
        async with make_app(
            DATABASE_URL=postgres_url_via(clean, postgres_proxy),
            DATABASE_STARTUP_WAIT_SECONDS=0,
        ):
            pass
    assert loop.time() - began < 10
