"""Who may see and act on a chat session, and garbage in on every session endpoint.

Visibility: the customer, the mitra and admins. Anyone else gets the same 404 as for an
unknown id (no existence oracle). A wrong role for an action is 403.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from halobestie.api.limits import MAX_BODY_BYTES
from halobestie.clock import iso
from tests.conftest import Instance
from tests.sessions.helpers import (
    history,
    make_cast,
    make_pending_session,
    pay,
    session_status,
    url,
)


def assert_error(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert set(r.json()) == {"error", "detail"} and r.json()["error"] == code, r.json()


async def test_the_parties_and_admins_see_the_session(inst: Instance) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra, minutes=20)
    for person in (cast.customer, cast.mitra, cast.admin):
        r = await inst.client.get(url(sid), headers=person.headers)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "session": {
                "id": str(sid),
                "customer_id": str(cast.customer.id),
                "mitra_id": str(cast.mitra.id),
                "status": "pending_payment",
                "duration_minutes": 20,
                "started_at": None,
                "ends_at": None,
                "last_message_seq": 0,
                "customer_read_seq": 0,
                "mitra_read_seq": 0,
                "server_now": iso(inst.clock.now()),
            }
        }
        r = await inst.client.get(url(sid, "events"), headers=person.headers)
        assert r.status_code == 200, r.text
        [event] = r.json()["events"]
        assert event["to"] == "pending_payment" and event["actor_id"] == str(cast.mitra.id)
        assert set(event) == {"from", "to", "actor_id", "actor_role", "reason", "at"}


async def test_strangers_get_the_same_404_as_for_an_unknown_id(inst: Instance) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    unknown = uuid.uuid4()
    for path in ("", "events"):
        for stranger in (cast.other_customer, cast.other_mitra):
            r = await inst.client.get(url(sid, path), headers=stranger.headers)
            assert_error(r, 404, "not_found")
            miss = await inst.client.get(url(unknown, path), headers=stranger.headers)
            assert_error(miss, 404, "not_found")
            assert r.json()["detail"].replace(str(sid), "X") == miss.json()["detail"].replace(
                str(unknown), "X"
            )
        assert_error(await inst.client.get(url(sid, path)), 401, "invalid_token")


async def test_actions_check_role_then_party(inst: Instance, pg: asyncpg.Connection) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    await pay(inst, sid)
    extend = {"minutes": 5}
    cases = [
        ("extend", cast.mitra, 403, "forbidden"),
        ("extend", cast.admin, 403, "forbidden"),
        ("extend", cast.other_customer, 404, "not_found"),
        ("end", cast.admin, 403, "forbidden"),
        ("end", cast.other_customer, 404, "not_found"),
        ("end", cast.other_mitra, 404, "not_found"),
    ]
    for action, person, status, code in cases:
        body = extend if action == "extend" else None
        r = await inst.client.post(url(sid, action), json=body, headers=person.headers)
        assert_error(r, status, code)
    for action in ACTIONS:
        body = extend if action == "extend" else None
        assert_error(await inst.client.post(url(sid, action), json=body), 401, "invalid_token")
        r = await inst.client.post(
            url(uuid.uuid4(), action), json=body, headers=cast.customer.headers
        )
        assert_error(r, 404, "not_found")
    assert await session_status(pg, sid) == "active"
    assert len(await history(pg, sid)) == 2


# -- bad input ---------------------------------------------------------------------

ACTIONS = ["extend", "end", "reroute"]


@pytest.fixture
async def active(inst: Instance) -> AsyncIterator[tuple[Instance, Any, uuid.UUID]]:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    await pay(inst, sid)
    yield inst, cast, sid


async def post_raw(inst: Instance, cast: Any, sid: Any, action: str, raw: Any) -> Any:
    headers = {**cast.customer.headers, "Content-Type": "application/json"}
    return await inst.client.post(url(sid, action), content=raw, headers=headers)


@pytest.mark.parametrize(
    "bad_id", ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g", "0" * 33, "%00"]
)
async def test_malformed_session_ids_are_422_on_every_endpoint(
    active: tuple[Instance, Any, uuid.UUID], bad_id: str
) -> None:
    inst, cast, _ = active
    for path in ("", "events"):
        r = await inst.client.get(url(bad_id, path), headers=cast.customer.headers)
        assert_error(r, 422, "invalid_request")
    for action in ACTIONS:
        r = await post_raw(inst, cast, bad_id, action, b'{"minutes": 5}')
        assert_error(r, 422, "invalid_request")


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize(
    "raw",
    [b'{"minutes": ', b"{'minutes': 5}", b"[]", b"42", b'"x"', b"\xff\xfe", b'{"x": 1}',
     b'{"minutes": 5, "extra": true}'],
    ids=["truncated", "single_quotes", "array", "number", "string", "binary", "unknown",
         "extra"],
)  # fmt: skip
async def test_malformed_or_unknown_bodies_are_422_and_change_nothing(
    active: tuple[Instance, Any, uuid.UUID], pg: asyncpg.Connection, action: str, raw: bytes
) -> None:
    inst, cast, sid = active
    assert_error(await post_raw(inst, cast, sid, action, raw), 422, "invalid_request")
    assert await session_status(pg, sid) == "active"
    assert len(await history(pg, sid)) == 2


@pytest.mark.parametrize(
    "minutes",
    [0, -1, 241, 10**12, "5", 5.0, 5.5, True, None, [5], {"m": 5}],
    ids=str,
)
async def test_extend_minutes_must_be_an_integer_from_1_to_240(
    active: tuple[Instance, Any, uuid.UUID], pg: asyncpg.Connection, minutes: Any
) -> None:
    inst, cast, sid = active
    r = await post_raw(inst, cast, sid, "extend", json.dumps({"minutes": minutes}))
    assert_error(r, 422, "invalid_request")
    assert "minutes" in r.json()["detail"]
    assert len(await history(pg, sid)) == 2


async def test_extend_needs_its_body_and_accepts_the_bounds(
    active: tuple[Instance, Any, uuid.UUID],
) -> None:
    inst, cast, sid = active
    for raw in (b"", b"{}", b"null"):
        assert_error(await post_raw(inst, cast, sid, "extend", raw), 422, "invalid_request")
    for minutes in (1, 240):
        r = await post_raw(inst, cast, sid, "extend", json.dumps({"minutes": minutes}))
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("raw", [b"", b"{}"], ids=["no_body", "empty_object"])
async def test_end_takes_no_body_or_an_empty_object(
    active: tuple[Instance, Any, uuid.UUID], raw: bytes
) -> None:
    inst, cast, sid = active
    r = await post_raw(inst, cast, sid, "end", raw)
    assert r.status_code == 200, r.text
    assert r.json()["session"]["status"] == "ended"


@pytest.mark.parametrize("action", ACTIONS)
async def test_oversized_bodies_are_413(
    active: tuple[Instance, Any, uuid.UUID], pg: asyncpg.Connection, action: str
) -> None:
    inst, cast, sid = active
    raw = json.dumps({"minutes": 5, "pad": "x" * MAX_BODY_BYTES}).encode()
    assert_error(await post_raw(inst, cast, sid, action, raw), 413, "payload_too_large")
    assert len(await history(pg, sid)) == 2


@pytest.mark.parametrize(
    ("method", "action"),
    [("DELETE", ""), ("PUT", ""), ("GET", "extend"), ("GET", "end"), ("POST", "events")],
)
async def test_wrong_methods_are_405(
    active: tuple[Instance, Any, uuid.UUID], method: str, action: str
) -> None:
    inst, cast, sid = active
    r = await inst.client.request(method, url(sid, action), headers=cast.customer.headers)
    assert_error(r, 405, "method_not_allowed")


async def test_the_webhook_takes_post_only(inst: Instance) -> None:
    assert_error(await inst.client.get("/api/payments/webhook"), 405, "method_not_allowed")
