"""Admin management of mitras (SPEC §4 admin rows, §1 deactivation flow)."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest

from halobestie.clock import iso
from tests.conftest import Instance
from tests.factories import PASSWORD, Person, make_chat_session, make_user

MITRA_KEYS = {"id", "email", "display_name", "is_active", "is_online"}
LIST_KEYS = MITRA_KEYS | {"last_heartbeat_at", "active_sessions"}


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == code, body


async def create_mitra(
    inst: Instance, admin: Person, email: str = "new.mitra@example.com"
) -> httpx.Response:
    body = {"email": email, "password": "mitra password 1", "display_name": "New Mitra"}
    return await inst.client.post("/api/admin/mitras", json=body, headers=admin.headers)


async def set_active(inst: Instance, admin: Person, mitra_id: Any, active: bool) -> httpx.Response:
    return await inst.client.patch(
        f"/api/admin/mitras/{mitra_id}", json={"is_active": active}, headers=admin.headers
    )


async def list_mitras(inst: Instance, admin: Person) -> dict[str, dict[str, Any]]:
    r = await inst.client.get("/api/admin/mitras", headers=admin.headers)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"mitras"}
    return {m["id"]: m for m in r.json()["mitras"]}


async def go_online(inst: Instance, mitra: Person) -> None:
    r = await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
    assert r.status_code == 200, r.text


# --- create -------------------------------------------------------------------------------


async def test_admin_creates_a_mitra_that_can_log_in(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    admin = await make_user(inst.ctx, "admin")
    r = await create_mitra(inst, admin)
    assert r.status_code == 201, r.text
    assert set(r.json()) == {"mitra"}
    mitra = r.json()["mitra"]
    assert set(mitra) == MITRA_KEYS
    assert mitra["email"] == "new.mitra@example.com"
    assert mitra["display_name"] == "New Mitra"
    assert (mitra["is_active"], mitra["is_online"]) == (True, False)
    row = await pg.fetchrow(
        "SELECT u.role, m.is_active, m.is_online FROM users u JOIN mitras m ON m.id = u.id"
        " WHERE u.id = $1",
        UUID(mitra["id"]),
    )
    assert row is not None
    assert dict(row) == {"role": "mitra", "is_active": True, "is_online": False}
    login = await inst.client.post(
        "/api/auth/login", json={"email": "new.mitra@example.com", "password": "mitra password 1"}
    )
    assert login.status_code == 200, login.text
    assert login.json()["user"]["role"] == "mitra"
    assert await valkey.sismember("mitras:online", mitra["id"]) == 0
    assert mitra["id"] in await list_mitras(inst, admin)


@pytest.mark.parametrize("email", ["taken@example.com", "TAKEN@Example.com"])
async def test_admin_create_mitra_refuses_a_taken_email(
    inst: Instance, pg: asyncpg.Connection, email: str
) -> None:
    admin = await make_user(inst.ctx, "admin")
    await make_user(inst.ctx, "customer", email="taken@example.com")
    assert_error(await create_mitra(inst, admin, email), 409, "email_taken")
    assert await pg.fetchval("SELECT count(*) FROM mitras") == 0


# --- list ---------------------------------------------------------------------------------


async def test_admin_list_shows_status_heartbeat_and_active_sessions(inst: Instance) -> None:
    admin = await make_user(inst.ctx, "admin")
    customer = await make_user(inst.ctx, "customer")
    busy = await make_user(inst.ctx, "mitra")
    idle = await make_user(inst.ctx, "mitra")
    await go_online(inst, busy)
    online_at = inst.clock.now()
    await make_chat_session(inst.ctx, customer, busy, "active")
    await make_chat_session(inst.ctx, customer, busy, "pending_payment")
    await make_chat_session(inst.ctx, customer, busy, "ended")
    await make_chat_session(inst.ctx, customer, idle, "cancelled")

    mitras = await list_mitras(inst, admin)
    assert set(mitras) == {str(busy.id), str(idle.id)}  # customers and admins are not mitras
    for view in mitras.values():
        assert set(view) == LIST_KEYS
    assert mitras[str(busy.id)] | {"id": None} == {
        "id": None,
        "email": busy.user.email,
        "display_name": busy.user.display_name,
        "is_online": True,
        "is_active": True,
        "last_heartbeat_at": iso(online_at),
        "active_sessions": 2,
    }
    idle_view = mitras[str(idle.id)]
    assert (idle_view["is_online"], idle_view["last_heartbeat_at"]) == (False, None)
    assert idle_view["active_sessions"] == 0


async def test_admin_list_shows_the_newer_valkey_heartbeat(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    admin = await make_user(inst.ctx, "admin")
    mitra = await make_user(inst.ctx, "mitra")
    await go_online(inst, mitra)
    online_at = inst.clock.now()
    inst.clock.advance(15)
    r = await inst.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)
    assert r.status_code == 200, r.text
    # Postgres still has the go-online time (the write-back sweep has not run) ...
    stored = await pg.fetchval("SELECT last_heartbeat_at FROM mitras WHERE id = $1", mitra.id)
    assert iso(stored) == iso(online_at)
    # ... but the admin sees the heartbeat that Valkey holds.
    view = (await list_mitras(inst, admin))[str(mitra.id)]
    assert view["last_heartbeat_at"] == iso(inst.clock.now())


# --- deactivate / reactivate --------------------------------------------------------------


async def test_deactivating_a_mitra_revokes_its_logins_and_updates_the_mirror(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    admin = await make_user(inst.ctx, "admin")
    mitra = await make_user(inst.ctx, "mitra")
    bystander = await make_user(inst.ctx, "mitra")
    second = await inst.client.post(
        "/api/auth/login", json={"email": mitra.user.email, "password": PASSWORD}
    )
    await go_online(inst, mitra)
    await go_online(inst, bystander)
    assert await valkey.exists(f"mitra:heartbeat:{mitra.id}") == 1

    r = await set_active(inst, admin, mitra.id, False)
    assert r.status_code == 200, r.text
    view = r.json()["mitra"]
    assert set(view) >= MITRA_KEYS
    assert (view["id"], view["is_active"], view["is_online"]) == (str(mitra.id), False, False)

    row = await pg.fetchrow("SELECT is_active, is_online FROM mitras WHERE id = $1", mitra.id)
    assert row is not None
    assert dict(row) == {"is_active": False, "is_online": False}
    live = await pg.fetchval(
        "SELECT count(*) FROM auth_sessions WHERE user_id = $1 AND revoked_at IS NULL", mitra.id
    )
    assert live == 0
    assert await valkey.sismember("mitras:deactivated", str(mitra.id)) == 1
    assert await valkey.sismember("mitras:online", str(mitra.id)) == 0
    assert await valkey.exists(f"mitra:heartbeat:{mitra.id}") == 0

    # Every door that looks at the login refuses it with 403: the mitra's status routes
    # say mitra_deactivated (SPEC §4, as the heartbeat does), the others account_deactivated.
    for token in (mitra.token, second.json()["access_token"]):
        auth = {"Authorization": f"Bearer {token}"}
        r = await inst.client.get("/api/mitra/status", headers=auth)
        assert_error(r, 403, "mitra_deactivated")
        for route in ("/api/mitra/status/online", "/api/mitra/status/offline"):
            assert_error(await inst.client.post(route, headers=auth), 403, "mitra_deactivated")
        r = await inst.client.get("/api/mitra/offers", headers=auth)
        assert_error(r, 403, "account_deactivated")
    for refresh_token in (mitra.refresh_token, second.json()["refresh_token"]):
        r = await inst.client.post("/api/auth/refresh", json={"refresh_token": refresh_token})
        assert_error(r, 403, "account_deactivated")
    # The hot path trusts the token's signature but still refuses a deactivated mitra.
    r = await inst.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)
    assert_error(r, 403, "mitra_deactivated")

    # Nobody else was touched.
    assert await valkey.sismember("mitras:online", str(bystander.id)) == 1
    r = await inst.client.get("/api/mitra/status", headers=bystander.headers)
    assert r.status_code == 200 and r.json()["is_online"] is True


async def test_reactivating_a_mitra_lets_it_log_in_again_but_leaves_it_offline(
    inst: Instance, valkey: Any
) -> None:
    admin = await make_user(inst.ctx, "admin")
    mitra = await make_user(inst.ctx, "mitra")
    await go_online(inst, mitra)
    assert (await set_active(inst, admin, mitra.id, False)).status_code == 200
    assert (await set_active(inst, admin, mitra.id, False)).status_code == 200  # idempotent

    r = await set_active(inst, admin, mitra.id, True)
    assert r.status_code == 200, r.text
    assert (r.json()["mitra"]["is_active"], r.json()["mitra"]["is_online"]) == (True, False)
    assert await valkey.sismember("mitras:deactivated", str(mitra.id)) == 0
    assert await valkey.sismember("mitras:online", str(mitra.id)) == 0

    login = await inst.client.post(
        "/api/auth/login", json={"email": mitra.user.email, "password": PASSWORD}
    )
    assert login.status_code == 200, login.text
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    assert (await inst.client.post("/api/mitra/status/online", headers=headers)).status_code == 200
    assert await valkey.sismember("mitras:online", str(mitra.id)) == 1
    r = await inst.client.post("/api/mitra/status/heartbeat", headers=headers)
    assert r.status_code == 200, r.text
    # The old, revoked login stays dead after reactivation.
    r = await inst.client.get("/api/mitra/status", headers=mitra.headers)
    assert_error(r, 401, "invalid_token")


async def test_patching_an_unknown_mitra_is_404(inst: Instance, valkey: Any) -> None:
    admin = await make_user(inst.ctx, "admin")
    customer = await make_user(inst.ctx, "customer")
    for unknown in (uuid4(), customer.id, admin.id):  # users that are not mitras too
        for active in (True, False):
            assert_error(await set_active(inst, admin, unknown, active), 404, "not_found")
    assert await valkey.scard("mitras:deactivated") == 0


@pytest.mark.parametrize(
    "bad_id", ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g", "%20", "null"]
)
async def test_patching_a_malformed_mitra_id_is_422(inst: Instance, bad_id: str) -> None:
    admin = await make_user(inst.ctx, "admin")
    assert_error(await set_active(inst, admin, bad_id, False), 422, "invalid_request")


# --- roles --------------------------------------------------------------------------------

ADMIN_ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/admin/mitras", None),
    ("POST", "/api/admin/mitras", {"email": "x@example.com", "password": "12345678",
                                   "display_name": "X"}),
    ("PATCH", "/api/admin/mitras/{mitra_id}", {"is_active": False}),
    ("GET", "/api/admin/dashboard", None),
    ("POST", "/api/admin/availability/reseed", None),
    ("GET", "/api/admin/availability/drift", None),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ENDPOINTS)
@pytest.mark.parametrize("role", ["customer", "mitra"])
async def test_admin_endpoints_refuse_customers_and_mitras(
    inst: Instance,
    pg: asyncpg.Connection,
    role: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    caller = mitra if role == "mitra" else await make_user(inst.ctx, role)
    url = path.format(mitra_id=mitra.id)
    r = await inst.client.request(method, url, json=body, headers=caller.headers)
    assert_error(r, 403, "forbidden")
    assert_error(await inst.client.request(method, url, json=body), 401, "invalid_token")
    # Nothing happened on the caller's behalf.
    assert await pg.fetchval("SELECT count(*) FROM mitras") == 1
    assert await pg.fetchval("SELECT bool_and(is_active) FROM mitras") is True


async def test_each_of_two_racing_patches_answers_the_state_its_own_change_left(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    """Two admins set opposite states at once: whichever commits last wins in Postgres,
    and each answer shows the mitra as its own change left it, never the other's."""
    admin = await make_user(inst.ctx, "admin")
    mitra = await make_user(inst.ctx, "mitra")
    for _ in range(8):
        off, on = await asyncio.gather(
            set_active(inst, admin, mitra.id, False), set_active(inst, admin, mitra.id, True)
        )
        assert off.status_code == 200 and on.status_code == 200, (off.text, on.text)
        assert off.json()["mitra"]["is_active"] is False, off.text
        assert on.json()["mitra"]["is_active"] is True, on.text
        final = await pg.fetchval("SELECT is_active FROM mitras WHERE id = $1", mitra.id)
        assert final in (True, False)
