"""Deactivation against the writes that depend on the mitra being active (issue 9 §2).

Exactly one order wins, whatever the interleaving: the write commits first and the
deactivation then closes what it created, or the deactivation commits first and the
write is refused. Never an open chat session, an online flag or a live login for a
deactivated mitra, and the mirror equal to Postgres after each race.

The deterministic tests park one side on a row lock held by the test's own Postgres
connection, so the other side commits inside the window that the random races only hit
some of the time.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import httpx

from halobestie.availability.drift import compute_drift
from halobestie.context import Context
from tests.availability import NO_DIFFERENCES
from tests.conftest import AppFactory, Instance, eventually
from tests.factories import Person, make_user
from tests.failures.helpers import online_mitra
from tests.pairing.support import Inbox, accept, open_ok
from tests.sessions.helpers import history, make_pending_session, pay, post_webhook, webhook_body

ROUNDS = 20
T = TypeVar("T")


async def deactivate(inst: Instance, admin: Person, mitra: Person) -> httpx.Response:
    return await inst.client.patch(
        f"/api/admin/mitras/{mitra.id}", json={"is_active": False}, headers=admin.headers
    )


async def jittered(awaitable: Awaitable[T], most: float = 0.01) -> T:
    """Start `awaitable` up to `most` seconds late, so repeated races land in either order."""
    await asyncio.sleep(random.uniform(0, most))
    return await awaitable


async def assert_nothing_open_for(pg: asyncpg.Connection, mitra: Person) -> None:
    """The invariant: a deactivated mitra has no open session, is offline, has no live
    login, and its load column agrees."""
    row = await pg.fetchrow(
        "SELECT is_active, is_online, open_sessions FROM mitras WHERE id = $1", mitra.id
    )
    assert row is not None
    assert dict(row) == {"is_active": False, "is_online": False, "open_sessions": 0}
    open_ = await pg.fetchval(
        "SELECT count(*) FROM chat_sessions"
        " WHERE mitra_id = $1 AND status IN ('pending_payment', 'active')",
        mitra.id,
    )
    assert open_ == 0
    live = await pg.fetchval(
        "SELECT count(*) FROM auth_sessions WHERE user_id = $1 AND revoked_at IS NULL", mitra.id
    )
    assert live == 0


async def assert_mirror_in_sync(ctx: Context) -> None:
    """`mitra:capacity:*`, `mitras:ranked` and the sets equal to Postgres."""
    drift = await compute_drift(ctx)
    assert drift.as_dict() == {"in_sync": True, "differences": NO_DIFFERENCES}


async def lock_waiters(pg: asyncpg.Connection) -> int:
    count: int = await pg.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted")
    return count


@asynccontextmanager
async def holding(pg: asyncpg.Connection, sql: str, *args: Any) -> AsyncIterator[None]:
    """`sql` (a SELECT ... FOR UPDATE) locked by the test's connection until the block
    ends; whoever needs those rows meanwhile waits."""
    tx = pg.transaction()
    await tx.start()
    try:
        assert await pg.fetch(sql, *args), "nothing to lock"
        yield
    finally:
        await tx.rollback()


async def test_an_accept_racing_a_deactivation_never_leaves_the_mitra_a_session(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    async with make_app(DATABASE_POOL_SIZE=20) as inst:
        admin = await make_user(inst.ctx, "admin")
        outcomes: Counter[tuple[int, str | None]] = Counter()
        for _ in range(ROUNDS):
            customer = await make_user(inst.ctx, "customer")
            mitra = await online_mitra(inst)
            request = await open_ok(inst, customer)
            assert request["offered_to"] == [str(mitra.id)]

            accepted, deactivated = await asyncio.gather(
                jittered(accept(inst, mitra, request["id"])),
                jittered(deactivate(inst, admin, mitra)),
            )

            assert deactivated.status_code == 200, deactivated.text
            outcome = (accepted.status_code, accepted.json().get("error"))
            # 403 account_deactivated: the deactivation had revoked the login before the
            # accept's token check.
            assert outcome in {
                (200, None),
                (403, "mitra_deactivated"),
                (403, "account_deactivated"),
            }
            outcomes[outcome] += 1
            await assert_nothing_open_for(pg, mitra)
            if accepted.status_code == 200:
                session_id = UUID(accepted.json()["session"]["id"])
                assert (await history(pg, session_id))[-1] == (
                    "pending_payment", "cancelled", admin.id, "admin", "mitra_deactivated",
                )  # fmt: skip
            await assert_mirror_in_sync(inst.ctx)
        assert sum(outcomes.values()) == ROUNDS, outcomes


async def test_an_accept_past_its_token_check_when_the_deactivation_commits_is_refused(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    """The reported fault: the accept's token was still live when checked, and the
    deactivation commits before the accept's transaction reaches the mitra."""
    admin = await make_user(inst.ctx, "admin")
    customer = await make_user(inst.ctx, "customer")
    mitra = await online_mitra(inst)
    request = await open_ok(inst, customer)
    request_lock = "SELECT id FROM pairing_requests WHERE id = $1 FOR UPDATE"

    async with holding(pg, request_lock, UUID(request["id"])):
        accepting = asyncio.create_task(accept(inst, mitra, request["id"]))
        await eventually(lambda: lock_waiters(pg))  # past its token check, at the request
        r = await deactivate(inst, admin, mitra)
        assert r.status_code == 200, r.text

    accepted = await accepting
    assert accepted.status_code == 403, accepted.text
    assert accepted.json()["error"] == "mitra_deactivated"
    await assert_nothing_open_for(pg, mitra)
    status = await pg.fetchval(
        "SELECT status FROM pairing_requests WHERE id = $1", UUID(request["id"])
    )
    assert status == "searching"  # still open to the other offered mitras
    await assert_mirror_in_sync(inst.ctx)


async def test_a_deactivation_that_waited_for_an_accept_cancels_the_session_it_created(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    """The other order: the accept holds the mitra's row when the deactivation arrives.
    The deactivation waits, then finds the new session and cancels it, in its own
    transaction, with the reason in the session's history."""
    admin = await make_user(inst.ctx, "admin")
    customer = await make_user(inst.ctx, "customer")
    mitra = await online_mitra(inst)
    inbox = Inbox().attach(inst, customer, mitra)
    request = await open_ok(inst, customer)
    # The accept's last step deletes the request's expiry timer: parked there, it holds
    # the mitra's row and its uncommitted session.
    timer_lock = "SELECT id FROM timers WHERE kind = 'offer_expiry' AND ref_id = $1 FOR UPDATE"

    async with holding(pg, timer_lock, UUID(request["id"])):
        accepting = asyncio.create_task(accept(inst, mitra, request["id"]))
        await eventually(lambda: lock_waiters(pg))
        deactivating = asyncio.create_task(deactivate(inst, admin, mitra))
        await eventually(async_equals(lambda: lock_waiters(pg), 2))

    accepted, deactivated = await accepting, await deactivating
    assert accepted.status_code == 200, accepted.text
    assert deactivated.status_code == 200, deactivated.text
    assert deactivated.json()["mitra"]["active_sessions"] == 0
    session_id = UUID(accepted.json()["session"]["id"])
    assert await history(pg, session_id) == [
        (None, "pending_payment", mitra.id, "mitra", "offer accepted"),
        ("pending_payment", "cancelled", admin.id, "admin", "mitra_deactivated"),
    ]
    timers = await pg.fetchval("SELECT count(*) FROM timers WHERE ref_id = $1", session_id)
    assert timers == 0
    await assert_nothing_open_for(pg, mitra)
    assert await valkey.get(f"mitra:capacity:{mitra.id}") == "0"
    assert await valkey.zscore("mitras:ranked", str(mitra.id)) is None
    await assert_mirror_in_sync(inst.ctx)
    statuses = [e["session"]["status"] for e in inbox.of(customer, "session.updated")]
    assert statuses[-1] == "cancelled"


def async_equals(read: Any, want: int) -> Any:
    async def check() -> bool:
        return bool(await read() == want)

    return check


async def test_deactivation_cancels_unpaid_and_ends_paid_sessions_of_the_mitra(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    async with make_app(MITRA_MAX_CONCURRENT_SESSIONS=2) as inst:
        admin = await make_user(inst.ctx, "admin")
        paying = await make_user(inst.ctx, "customer")
        waiting = await make_user(inst.ctx, "customer")
        mitra, bystander = await online_mitra(inst), await online_mitra(inst)
        inbox = Inbox().attach(inst, paying, waiting)
        paid = await make_pending_session(inst, paying, mitra)
        await pay(inst, paid)
        unpaid = await make_pending_session(inst, waiting, mitra)
        untouched = await make_pending_session(inst, waiting, bystander)

        r = await deactivate(inst, admin, mitra)

        assert r.status_code == 200, r.text
        assert (await history(pg, paid))[-1] == (
            "active", "ended", admin.id, "admin", "mitra_deactivated",
        )  # fmt: skip
        assert (await history(pg, unpaid))[-1] == (
            "pending_payment", "cancelled", admin.id, "admin", "mitra_deactivated",
        )  # fmt: skip
        left = await pg.fetchval(
            "SELECT count(*) FROM timers WHERE ref_id = ANY($1::uuid[])", [paid, unpaid]
        )
        assert left == 0
        assert await pg.fetchval("SELECT status FROM chat_sessions WHERE id = $1", untouched) == (
            "pending_payment"
        )
        await assert_nothing_open_for(pg, mitra)
        await assert_mirror_in_sync(inst.ctx)
        assert inbox.of(paying, "session.updated")[-1]["session"]["status"] == "ended"
        assert inbox.of(waiting, "session.updated")[-1]["session"]["status"] == "cancelled"
        # Paying for the cancelled session afterwards is refused, as for any closed one.
        late = await post_webhook(inst, webhook_body(unpaid, "late-ref"))
        assert (late.status_code, late.json()["error"]) == (409, "invalid_state")


async def test_session_writes_racing_a_deactivation_end_in_one_order_without_deadlock(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    """Payment, ending by either party, and the deactivation, all at once on one mitra:
    each answers (no deadlock, no 5xx) and nothing stays open."""
    async with make_app(MITRA_MAX_CONCURRENT_SESSIONS=3, DATABASE_POOL_SIZE=20) as inst:
        admin = await make_user(inst.ctx, "admin")
        for round_ in range(ROUNDS // 2):
            customers = [await make_user(inst.ctx, "customer") for _ in range(3)]
            mitra = await online_mitra(inst)
            to_pay, to_end_by_customer, to_end_by_mitra = [
                await make_pending_session(inst, c, mitra) for c in customers
            ]
            await pay(inst, to_end_by_customer, f"ref-{round_}-a")

            answers = await asyncio.gather(
                jittered(post_webhook(inst, webhook_body(to_pay, f"ref-{round_}-b"))),
                jittered(
                    inst.client.post(
                        f"/api/sessions/{to_end_by_customer}/end", headers=customers[1].headers
                    )
                ),
                jittered(
                    inst.client.post(f"/api/sessions/{to_end_by_mitra}/end", headers=mitra.headers)
                ),
                jittered(deactivate(inst, admin, mitra)),
            )

            webhook, by_customer, by_mitra, deactivated = answers
            assert deactivated.status_code == 200, deactivated.text
            assert webhook.status_code in (200, 409), webhook.text
            assert by_customer.status_code == 200, by_customer.text
            assert by_mitra.status_code in (200, 403), by_mitra.text
            await assert_nothing_open_for(pg, mitra)
            await assert_mirror_in_sync(inst.ctx)


async def test_going_online_racing_a_deactivation_leaves_the_mitra_offline(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    async with make_app(DATABASE_POOL_SIZE=20) as inst:
        admin = await make_user(inst.ctx, "admin")
        for _ in range(ROUNDS):
            mitra = await make_user(inst.ctx, "mitra")
            online, deactivated = await asyncio.gather(
                jittered(inst.client.post("/api/mitra/status/online", headers=mitra.headers)),
                jittered(deactivate(inst, admin, mitra)),
            )
            assert deactivated.status_code == 200, deactivated.text
            outcome = (online.status_code, online.json().get("error"))
            # Whether the login check or do_go_online saw the deactivation, the status
            # route's word is mitra_deactivated (SPEC §4).
            assert outcome in {(200, None), (403, "mitra_deactivated")}
            await assert_nothing_open_for(pg, mitra)
            await assert_mirror_in_sync(inst.ctx)
