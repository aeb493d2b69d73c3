"""Garbage and wrong callers on the pairing endpoints: a JSON 4xx, never a 500."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import Instance
from tests.factories import make_user
from tests.failures.helpers import online_mitra

from .support import open_ok, open_request


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "detail"}, r.text
    assert r.json()["error"] == code, r.text


@pytest.mark.parametrize(
    "body",
    [
        {"duration_minutes": 0},
        {"duration_minutes": 241},
        {"duration_minutes": -5},
        {"duration_minutes": "5"},
        {"duration_minutes": 5.0},
        {"duration_minutes": 5.5},
        {"duration_minutes": True},
        {"duration_minutes": None},
        {},
        {"duration_minutes": 5, "extra": 1},
        {"duration_minutes": 5, "mitra_id": "not-a-uuid"},
        {"duration_minutes": 5, "mitra_id": 5},
        {"duration_minutes": 5, "mitra_id": ""},
        {"duration_minutes": 5, "mitra_id": ["00000000-0000-4000-8000-000000000000"]},
    ],
    ids=repr,
)
async def test_bad_pairing_bodies_are_422(
    inst: Instance, pg: asyncpg.Connection, body: dict[str, Any]
) -> None:
    customer = await make_user(inst.ctx, "customer")
    await online_mitra(inst)

    r = await inst.client.post("/api/pairing/requests", json=body, headers=customer.headers)

    assert_error(r, 422, "invalid_request")
    assert await pg.fetchval("SELECT count(*) FROM pairing_requests") == 0


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'"x"', b"null"])
async def test_non_object_bodies_are_422(inst: Instance, raw: bytes) -> None:
    customer = await make_user(inst.ctx, "customer")

    r = await inst.client.post(
        "/api/pairing/requests",
        content=raw,
        headers={**customer.headers, "content-type": "application/json"},
    )

    assert_error(r, 422, "invalid_request")


async def test_duration_bounds_are_accepted(inst: Instance) -> None:
    for minutes in (1, 240):
        customer = await make_user(inst.ctx, "customer")
        await online_mitra(inst)
        request = await open_ok(inst, customer, duration_minutes=minutes)
        assert request["duration_minutes"] == minutes


@pytest.mark.parametrize("bad_id", ["nope", "123", "00000000-0000-4000-8000-00000000000g"])
async def test_malformed_ids_in_paths_are_422(inst: Instance, bad_id: str) -> None:
    customer = await make_user(inst.ctx, "customer")
    mitra = await make_user(inst.ctx, "mitra")
    path = f"/api/pairing/requests/{bad_id}"

    assert_error(await inst.client.get(path, headers=customer.headers), 422, "invalid_request")
    assert_error(await inst.client.delete(path, headers=customer.headers), 422, "invalid_request")
    assert_error(
        await inst.client.post(f"{path}/accept", headers=mitra.headers), 422, "invalid_request"
    )


async def test_wrong_roles_are_403_and_missing_tokens_401(inst: Instance) -> None:
    customer = await make_user(inst.ctx, "customer")
    mitra = await online_mitra(inst)
    admin = await make_user(inst.ctx, "admin")
    request = await open_ok(inst, customer)
    path = f"/api/pairing/requests/{request['id']}"
    calls = {
        "open": ("POST", "/api/pairing/requests", {"duration_minutes": 5}),
        "read": ("GET", path, None),
        "cancel": ("DELETE", path, None),
        "accept": ("POST", f"{path}/accept", None),
        "offers": ("GET", "/api/mitra/offers", None),
    }
    allowed = {
        "open": customer,
        "read": customer,
        "cancel": customer,
        "accept": mitra,
        "offers": mitra,
    }

    for name, (method, url, body) in calls.items():
        for person in (customer, mitra, admin):
            if person is allowed[name]:
                continue
            r = await inst.client.request(method, url, json=body, headers=person.headers)
            assert r.status_code == 403, (name, person.user.role, r.text)
            assert r.json()["error"] == "forbidden", (name, r.text)
        r = await inst.client.request(method, url, json=body)
        assert_error(r, 401, "invalid_token")
    # Nothing above changed the request.
    r = await inst.client.get(path, headers=customer.headers)
    assert r.json()["pairing_request"]["status"] == "searching"


async def test_a_logged_out_customer_cannot_open_requests(inst: Instance) -> None:
    customer = await make_user(inst.ctx, "customer")
    await online_mitra(inst)
    r = await inst.client.post("/api/auth/logout", headers=customer.headers)
    assert r.status_code == 204, r.text

    assert_error(await open_request(inst, customer), 401, "invalid_token")
