"""The console's admin API views against real servers: overview, mitra list, session
events, the page itself; each with Valkey and with its Postgres fallback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import pytest

from halobestie.console.queries import overview
from tests.conftest import Instance
from tests.factories import Person, make_user
from tests.failures import helpers
from tests.sessions.helpers import make_pending_session, pay, url
from tests.support.proxy import FaultProxy

valkey_proxy_fixture = helpers.valkey_proxy_fixture
valkey_fault_app_fixture = helpers.valkey_fault_app_fixture
postgres_proxy_fixture = helpers.postgres_proxy_fixture
postgres_fault_app_fixture = helpers.postgres_fault_app_fixture

STALE_AFTER = 60  # HEARTBEAT_STALE_SECONDS' default


@dataclass
class Pool:
    """One mitra in each state, plus the people around them."""

    admin: Person
    customer: Person
    available: Person
    busy_active: Person
    busy_pending: Person
    stale: Person
    deactivated: Person
    offline: Person
    active_session: UUID
    pending_session: UUID

    @property
    def mitras(self) -> list[Person]:
        return [
            self.available, self.busy_active, self.busy_pending,
            self.stale, self.deactivated, self.offline,
        ]  # fmt: skip


async def online(inst: Instance, mitra: Person) -> None:
    r = await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
    assert r.status_code == 200, r.text


async def build_pool(inst: Instance) -> Pool:
    ctx = inst.ctx
    admin = await make_user(ctx, "admin")
    customer = await make_user(ctx, "customer")
    mitras = [await make_user(ctx, "mitra") for _ in range(6)]
    available, busy_active, busy_pending, stale, deactivated, offline = mitras
    await online(inst, stale)
    inst.clock.advance(STALE_AFTER + 1)  # its heartbeat is now too old
    for mitra in (available, busy_active, busy_pending):
        await online(inst, mitra)
    active_session = await make_pending_session(inst, customer, busy_active)
    await pay(inst, active_session)
    pending_session = await make_pending_session(inst, customer, busy_pending)
    ended = await make_pending_session(inst, customer, available)
    await pay(inst, ended, "ref-ended")
    r = await inst.client.post(url(ended, "end"), headers=customer.headers)
    assert r.status_code == 200, r.text
    r = await inst.client.patch(
        f"/api/admin/mitras/{deactivated.id}", json={"is_active": False}, headers=admin.headers
    )
    assert r.status_code == 200, r.text
    return Pool(
        admin, customer, available, busy_active, busy_pending, stale, deactivated, offline,
        active_session, pending_session,
    )  # fmt: skip


async def get(inst: Instance, admin: Person, path: str, **params: Any) -> Any:
    r = await inst.client.get(path, params=params, headers=admin.headers)
    assert r.status_code == 200, r.text
    return r.json()


EXPECTED_COUNTS = {"online": 4, "available": 1, "busy": 2, "stale": 1, "deactivated": 1}


# --- overview -------------------------------------------------------------------------------


async def test_overview_counts_every_state_sessions_beacon_and_health(inst: Instance) -> None:
    pool = await build_pool(inst)
    view = await get(inst, pool.admin, "/api/admin/overview")
    assert view["mitras"] == {**EXPECTED_COUNTS, "source": "valkey"}
    sessions = view["sessions"]
    assert (sessions["pending_payment"], sessions["active"], sessions["ended"]) == (1, 1, 1)
    assert (sessions["expired"], sessions["cancelled"], sessions["rerouted"]) == (0, 0, 0)
    assert sessions["truncated"] is False
    assert view["beacon"]["state"] == "available" and view["beacon"]["available_count"] == 1
    health = view["health"]
    assert health["postgres"] == "ok" and health["valkey"] == "ok"
    assert health["fallback"] is False and health["mirror_trusted"] is True
    assert view["last_event_id"] >= 5  # 3 accepts, 2 payments, 1 end
    assert view["history"] == []  # nobody watched this instance yet


async def test_overview_falls_back_to_postgres_with_the_same_counts_when_valkey_is_cut(
    valkey_fault_app: Instance, valkey_proxy: FaultProxy
) -> None:
    inst = valkey_fault_app
    pool = await build_pool(inst)
    await valkey_proxy.cut()
    view = await get(inst, pool.admin, "/api/admin/overview")
    assert view["mitras"] == {**EXPECTED_COUNTS, "source": "postgres"}
    health = view["health"]
    assert health["fallback"] is True and health["valkey"] == "degraded"
    assert health["valkey_reachable"] is False and health["postgres"] == "ok"
    assert view["beacon"]["state"] == "available"
    page = await get(inst, pool.admin, "/api/admin/mitra-states")
    assert page["heartbeats_from"] == "postgres"
    assert {m["id"]: m["state"] for m in page["mitras"]} == states(pool)


async def test_overview_during_a_postgres_outage_reads_valkey_and_says_so(
    postgres_fault_app: Instance, postgres_proxy: FaultProxy
) -> None:
    inst = postgres_fault_app
    await build_pool(inst)
    await postgres_proxy.cut()
    view = await overview(inst.ctx, inst.clock.now())  # what the feed pushes
    assert view.health.postgres == "unavailable" and view.health.fallback is False
    assert view.sessions is None and view.last_event_id is None
    assert view.mitras.model_dump() == {**EXPECTED_COUNTS, "source": "valkey"}


# --- the mitra list -------------------------------------------------------------------------


def states(pool: Pool) -> dict[str, str]:
    return {
        str(pool.available.id): "available",
        str(pool.busy_active.id): "busy",
        str(pool.busy_pending.id): "busy",
        str(pool.stale.id): "stale",
        str(pool.deactivated.id): "deactivated",
        str(pool.offline.id): "offline",
    }


async def test_mitra_list_pages_in_id_order_with_state_load_heartbeat_and_time_left(
    inst: Instance,
) -> None:
    pool = await build_pool(inst)
    seen: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(3):
        params = {"limit": 4} | ({"after": after} if after else {})
        page = await get(inst, pool.admin, "/api/admin/mitra-states", **params)
        seen += page["mitras"]
        after = page["next_after"]
        if after is None:
            break
    assert after is None and len(seen) == 6
    ids = [m["id"] for m in seen]
    assert ids == sorted(ids, key=UUID) and len(set(ids)) == 6
    rows = {m["id"]: m for m in seen}
    assert {i: m["state"] for i, m in rows.items()} == states(pool)
    assert page["heartbeats_from"] == "valkey"

    busy = rows[str(pool.busy_active.id)]
    assert (busy["open_sessions"], busy["capacity"]) == (1, 1)
    [session] = busy["sessions"]
    assert session["id"] == str(pool.active_session) and session["status"] == "active"
    assert session["seconds_left"] == 30 * 60  # booked 30 minutes, no time has passed
    [pending] = rows[str(pool.busy_pending.id)]["sessions"]
    assert pending["status"] == "pending_payment"
    assert pending["seconds_left"] == inst.ctx.settings.payment_timeout_seconds
    assert rows[str(pool.available.id)]["heartbeat_age_seconds"] == 0
    assert rows[str(pool.stale.id)]["heartbeat_age_seconds"] == STALE_AFTER + 1
    assert rows[str(pool.offline.id)]["last_heartbeat_at"] is None
    assert rows[str(pool.available.id)]["sessions"] == []  # its session ended


@pytest.mark.parametrize(
    "filter_", ["online", "available", "busy", "stale", "offline", "deactivated"]
)
async def test_mitra_list_filters_on_state(inst: Instance, filter_: str) -> None:
    pool = await build_pool(inst)
    want = {
        i for i, s in states(pool).items()
        if s == filter_ or (filter_ == "online" and s in ("available", "busy", "stale"))
    }  # fmt: skip
    got: set[str] = set()
    after: str | None = None
    while True:  # pages of one: the cursor carries a derived filter across pages too
        params = {"filter": filter_, "limit": 1} | ({"after": after} if after else {})
        page = await get(inst, pool.admin, "/api/admin/mitra-states", **params)
        got |= {m["id"] for m in page["mitras"]}
        after = page["next_after"]
        if after is None:
            break
    assert got == want


# --- session events -------------------------------------------------------------------------


async def test_session_events_are_newest_first_and_after_id_returns_only_newer(
    inst: Instance,
) -> None:
    pool = await build_pool(inst)
    events = (await get(inst, pool.admin, "/api/admin/session-events"))["events"]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids, reverse=True) and len(ids) == 6
    newest = events[0]
    assert (newest["from_status"], newest["to_status"]) == ("active", "ended")
    assert newest["actor_role"] == "customer" and newest["mitra_id"] == str(pool.available.id)
    later = await get(inst, pool.admin, "/api/admin/session-events", after_id=ids[2])
    assert [e["id"] for e in later["events"]] == ids[:2]
    one = await get(inst, pool.admin, "/api/admin/session-events", limit=1)
    assert [e["id"] for e in one["events"]] == ids[:1]


# --- who may ask, and bad input -------------------------------------------------------------

PATHS = ["/api/admin/overview", "/api/admin/mitra-states", "/api/admin/session-events"]


@pytest.mark.parametrize("path", PATHS)
async def test_console_views_are_for_admins_only(inst: Instance, path: str) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    customer = await make_user(inst.ctx, "customer")
    assert_error(await inst.client.get(path), 401, "invalid_token")
    for person in (mitra, customer):
        assert_error(await inst.client.get(path, headers=person.headers), 403, "forbidden")


@pytest.mark.parametrize(
    "query",
    [
        {"filter": "sleeping"},
        {"limit": 0},
        {"limit": 201},
        {"limit": "ten"},
        {"after": "not-a-uuid"},
    ],
)
async def test_mitra_list_refuses_bad_queries(inst: Instance, query: dict[str, Any]) -> None:
    admin = await make_user(inst.ctx, "admin")
    r = await inst.client.get("/api/admin/mitra-states", params=query, headers=admin.headers)
    assert_error(r, 422, "invalid_request")


@pytest.mark.parametrize("query", [{"after_id": -1}, {"limit": 0}, {"limit": 500}])
async def test_session_events_refuse_bad_queries(inst: Instance, query: dict[str, Any]) -> None:
    admin = await make_user(inst.ctx, "admin")
    r = await inst.client.get("/api/admin/session-events", params=query, headers=admin.headers)
    assert_error(r, 422, "invalid_request")


async def test_session_events_refuse_an_after_id_past_a_bigint_naming_it(inst: Instance) -> None:
    # Checked by the route, not left to Postgres (a DataError and a detail naming nothing).
    admin = await make_user(inst.ctx, "admin")
    for after_id in (2**63, 10**30):
        r = await inst.client.get(
            "/api/admin/session-events", params={"after_id": after_id}, headers=admin.headers
        )
        assert_error(r, 422, "invalid_request")
        assert "after_id" in r.json()["detail"], r.text
    r = await inst.client.get(
        "/api/admin/session-events", params={"after_id": 2**63 - 1}, headers=admin.headers
    )
    assert r.status_code == 200 and r.json()["events"] == [], r.text


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"] == code, r.text


# --- the page -------------------------------------------------------------------------------


async def test_the_console_page_and_its_assets_are_served_by_the_app(inst: Instance) -> None:
    r = await inst.client.get("/admin")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert '<script src="/admin/static/console.js"' in r.text
    for asset, kind in (("console.js", "javascript"), ("console.css", "text/css")):
        r = await inst.client.get(f"/admin/static/{asset}")
        assert r.status_code == 200 and kind in r.headers["content-type"], asset
    r = await inst.client.get("/admin/")
    assert r.status_code == 308 and r.headers["location"] == "/admin"
    assert (await inst.client.get("/admin/static/nothing.js")).status_code == 404
