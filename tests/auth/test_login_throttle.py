"""The login throttle (auth/throttle.py): a bound on concurrent password hashes per
instance (503 `overloaded` past it, at once) and a per-email failed-login rate limit in
Valkey (429 `too_many_attempts` with Retry-After, the right password included), which
fails open when Valkey is down."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from halobestie.auth.throttle import HASH_GATE
from tests.conftest import AppFactory, Servers, eventually
from tests.factories import PASSWORD, make_user
from tests.failures.helpers import valkey_proxy_fixture, valkey_url_via
from tests.support.proxy import FaultProxy

__all__ = ["valkey_proxy_fixture"]

WRONG = "not the password at all"


async def login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/api/auth/login", json={"email": email, "password": password})


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"] == code, r.text


# --- concurrent hashes ------------------------------------------------------------------


async def test_logins_past_the_hashing_slots_and_their_queue_get_503_overloaded_at_once(
    make_app: AppFactory,
) -> None:
    async with make_app(LOGIN_MAX_CONCURRENT_HASHES=1) as inst:
        ana = await make_user(inst.ctx, "customer")
        gate = inst.ctx.get(HASH_GATE)
        queued: list[asyncio.Task[httpx.Response]] = []
        async with gate.slot():  # the one slot, held as by a long hash
            try:
                for _ in range(gate.max_waiting):  # fill the waiting room
                    queued.append(asyncio.create_task(login(inst.client, ana.user.email, PASSWORD)))
                full = gate.max_waiting
                await eventually(
                    lambda: gate.waiting == full or any(t.done() for t in queued), within=20
                )
                assert gate.waiting == full, [t.result().text for t in queued if t.done()]
                refused = await asyncio.wait_for(login(inst.client, ana.user.email, PASSWORD), 10)
                assert_error(refused, 503, "overloaded")
                assert refused.headers["Retry-After"] == "1"
                r = await asyncio.wait_for(
                    inst.client.post(
                        "/api/auth/register",
                        json={"email": "new@example.com", "password": WRONG, "display_name": "N"},
                    ),
                    10,
                )
                assert_error(r, 503, "overloaded")
            except BaseException:
                for task in queued:
                    task.cancel()
                raise
        # The slot freed: the waiting logins were served one by one, none dropped.
        served = await asyncio.wait_for(asyncio.gather(*queued), 60)
        assert [r.status_code for r in served] == [200] * len(queued), [r.text for r in served]
        assert gate.waiting == 0


# --- failed logins per email ------------------------------------------------------------


async def test_failures_past_the_limit_refuse_every_login_for_that_email_with_429(
    make_app: AppFactory, valkey: Any
) -> None:
    async with make_app(LOGIN_FAILURE_LIMIT=3, LOGIN_FAILURE_WINDOW_SECONDS=60) as inst:
        ana = await make_user(inst.ctx, "customer")
        bob = await make_user(inst.ctx, "customer")
        for _ in range(3):
            assert_error(
                await login(inst.client, ana.user.email, WRONG), 401, "invalid_credentials"
            )
        for password in (WRONG, PASSWORD):
            r = await login(inst.client, ana.user.email.upper(), password)
            assert_error(r, 429, "too_many_attempts")
            assert 1 <= int(r.headers["Retry-After"]) <= 60, r.headers
        # Another account is not affected.
        assert (await login(inst.client, bob.user.email, PASSWORD)).status_code == 200
        # The window is the key's TTL: ended early here instead of waiting 60 s.
        key = inst.ctx.keys.login_failures(ana.user.email)
        assert ana.user.email not in key
        assert 0 < await valkey.pttl(key) <= 60_000
        await valkey.pexpire(key, 1)

        async def logs_in() -> bool:
            r = await login(inst.client, ana.user.email, PASSWORD)
            return r.status_code == 200

        await eventually(logs_in, within=10)


async def test_unknown_emails_are_limited_like_known_ones(make_app: AppFactory) -> None:
    async with make_app(LOGIN_FAILURE_LIMIT=2) as inst:
        for _ in range(2):
            r = await login(inst.client, "nobody@example.com", WRONG)
            assert_error(r, 401, "invalid_credentials")
        assert_error(
            await login(inst.client, "nobody@example.com", WRONG), 429, "too_many_attempts"
        )


async def test_a_right_password_under_the_limit_starts_the_count_again(
    make_app: AppFactory,
) -> None:
    async with make_app(LOGIN_FAILURE_LIMIT=3) as inst:
        ana = await make_user(inst.ctx, "customer")
        for _ in range(2):
            assert_error(
                await login(inst.client, ana.user.email, WRONG), 401, "invalid_credentials"
            )
        assert (await login(inst.client, ana.user.email, PASSWORD)).status_code == 200
        for _ in range(2):
            assert_error(
                await login(inst.client, ana.user.email, WRONG), 401, "invalid_credentials"
            )
        assert (await login(inst.client, ana.user.email, PASSWORD)).status_code == 200


async def test_with_valkey_down_logins_still_work_unlimited(
    make_app: AppFactory, clean: Servers, valkey_proxy: FaultProxy
) -> None:
    async with make_app(
        VALKEY_URL=valkey_url_via(clean, valkey_proxy), LOGIN_FAILURE_LIMIT=1
    ) as inst:
        try:
            ana = await make_user(inst.ctx, "customer")
            await valkey_proxy.cut()
            for _ in range(3):  # past the limit of 1: not counted, not refused
                assert_error(
                    await login(inst.client, ana.user.email, WRONG), 401, "invalid_credentials"
                )
            r = await login(inst.client, ana.user.email, PASSWORD)
            assert r.status_code == 200, r.text
        finally:
            await valkey_proxy.restore()
