"""Logins and refreshes racing what revokes them (issue 9 §2): a login racing the mitra's
deactivation, a refresh racing a logout or a deactivation. Whatever the order, no token
that either side hands out stays usable once the revocation has answered."""

from __future__ import annotations

import asyncio
import random
from uuid import UUID, uuid4

import asyncpg
import httpx

from tests.conftest import AppFactory, Instance, eventually
from tests.factories import PASSWORD, Person, make_user

ROUNDS = 20


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def late(delay: float) -> None:
    await asyncio.sleep(random.uniform(0, delay))


async def login(inst: Instance, person: Person, delay: float = 0.0) -> httpx.Response:
    await late(delay)
    return await inst.client.post(
        "/api/auth/login", json={"email": person.user.email, "password": PASSWORD}
    )


async def refresh(inst: Instance, refresh_token: str, delay: float = 0.0) -> httpx.Response:
    await late(delay)
    return await inst.client.post("/api/auth/refresh", json={"refresh_token": refresh_token})


async def deactivate(
    inst: Instance, admin: Person, mitra: Person, delay: float = 0.0
) -> httpx.Response:
    await late(delay)
    return await inst.client.patch(
        f"/api/admin/mitras/{mitra.id}", json={"is_active": False}, headers=admin.headers
    )


async def assert_unusable(inst: Instance, answer: httpx.Response) -> None:
    """A login or refresh answer: if it handed out tokens, neither works any more."""
    if answer.status_code != 200:
        assert answer.status_code in (401, 403), answer.text
        return
    pair = answer.json()
    # Any endpoint that checks the login: an unknown session is 404 to a live token; a
    # login its mitra's deactivation ended is 403 account_deactivated, as login says.
    r = await inst.client.get(f"/api/sessions/{uuid4()}", headers=bearer(pair["access_token"]))
    refused = {(401, "invalid_token"), (403, "account_deactivated")}
    assert (r.status_code, r.json()["error"]) in refused, r.text
    r = await refresh(inst, pair["refresh_token"])
    assert r.status_code in (401, 403), r.text


async def live_logins(pg: asyncpg.Connection, user_id: UUID) -> int:
    count: int = await pg.fetchval(
        "SELECT count(*) FROM auth_sessions WHERE user_id = $1 AND revoked_at IS NULL", user_id
    )
    return count


async def test_a_login_that_read_the_mitra_active_before_its_deactivation_gets_no_live_session(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    """The login has checked the mitra and the password; its auth session row waits (on
    the test's lock of the user row, which its foreign key needs) while the deactivation
    runs. The login's tokens must be dead once both have answered."""
    admin = await make_user(inst.ctx, "admin")
    mitra = await make_user(inst.ctx, "mitra")
    await pg.execute(
        "UPDATE auth_sessions SET revoked_at = now() WHERE user_id = $1", mitra.id
    )  # only the racing login counts

    async def waiters() -> int:
        count: int = await pg.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted")
        return count

    locker = await asyncpg.connect(inst.ctx.settings.database_url)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("SELECT id FROM users WHERE id = $1 FOR UPDATE", mitra.id)
        logging_in = asyncio.create_task(login(inst, mitra))
        await eventually(waiters)
        deactivating = asyncio.create_task(deactivate(inst, admin, mitra))

        async def deactivation_done_or_waiting() -> bool:
            return deactivating.done() or await waiters() >= 2

        await eventually(deactivation_done_or_waiting)
        await tx.rollback()
    finally:
        await locker.close()

    answer, deactivated = await logging_in, await deactivating
    assert deactivated.status_code == 200, deactivated.text
    await assert_unusable(inst, answer)
    assert await live_logins(pg, mitra.id) == 0


async def test_logins_racing_a_deactivation_never_leave_a_live_session(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    async with make_app(DATABASE_POOL_SIZE=20) as inst:
        admin = await make_user(inst.ctx, "admin")
        for _ in range(ROUNDS):
            mitra = await make_user(inst.ctx, "mitra")
            # The password check takes tens of milliseconds: the deactivation lands in it.
            *logins, deactivated = await asyncio.gather(
                login(inst, mitra),
                login(inst, mitra, 0.05),
                deactivate(inst, admin, mitra, 0.05),
            )
            assert deactivated.status_code == 200, deactivated.text
            for answer in logins:
                await assert_unusable(inst, answer)
            assert await live_logins(pg, mitra.id) == 0


async def test_a_refresh_racing_a_logout_leaves_no_usable_token(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    async with make_app(DATABASE_POOL_SIZE=20) as inst:
        customer = await make_user(inst.ctx, "customer")
        for _ in range(ROUNDS):
            r = await login(inst, customer)
            assert r.status_code == 200, r.text
            pair = r.json()
            refreshed, logged_out = await asyncio.gather(
                refresh(inst, pair["refresh_token"], 0.005),
                _logout(inst, pair["access_token"]),
            )
            assert logged_out.status_code == 204, logged_out.text
            await assert_unusable(inst, refreshed)
            r = await refresh(inst, pair["refresh_token"])
            assert r.status_code == 401, r.text
        assert await live_logins(pg, customer.id) == 1  # make_user's own login only


async def _logout(inst: Instance, access_token: str) -> httpx.Response:
    await late(0.005)
    return await inst.client.post("/api/auth/logout", headers=bearer(access_token))


async def test_a_refresh_racing_a_deactivation_leaves_no_usable_token(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    async with make_app(DATABASE_POOL_SIZE=20) as inst:
        admin = await make_user(inst.ctx, "admin")
        for _ in range(ROUNDS):
            mitra = await make_user(inst.ctx, "mitra")
            refreshed, deactivated = await asyncio.gather(
                refresh(inst, mitra.refresh_token, 0.005),
                deactivate(inst, admin, mitra, 0.005),
            )
            assert deactivated.status_code == 200, deactivated.text
            await assert_unusable(inst, refreshed)
            assert await live_logins(pg, mitra.id) == 0
