"""The payment webhook: signed over the raw body, strict, idempotent per reference."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import pytest

from halobestie.api.limits import MAX_BODY_BYTES
from halobestie.clock import iso
from tests.conftest import Instance
from tests.sessions.helpers import (
    assert_capacity_mirrored,
    history,
    make_cast,
    make_pending_session,
    minutes,
    pay,
    post_webhook,
    session_status,
    sign,
    timers,
    url,
    webhook_body,
)


def assert_error(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"] == code, r.json()
    assert set(r.json()) == {"error", "detail"}


async def assert_untouched(pg: asyncpg.Connection, sid: uuid.UUID) -> None:
    assert await session_status(pg, sid) == "pending_payment"
    assert await pg.fetchval("SELECT count(*) FROM payments") == 0
    assert len(await history(pg, sid)) == 1
    assert set(await timers(pg, sid)) == {"payment_timeout"}


async def test_a_signed_payment_activates_the_session(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra, minutes=45)
    now = inst.clock.advance(30)
    r = await post_webhook(inst, webhook_body(sid, "psp_0001"))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "session": {
            "id": str(sid),
            "customer_id": str(cast.customer.id),
            "mitra_id": str(cast.mitra.id),
            "status": "active",
            "duration_minutes": 45,
            "started_at": iso(now),
            "ends_at": iso(now + minutes(45)),
            "last_message_seq": 0,
            "customer_read_seq": 0,
            "mitra_read_seq": 0,
            "server_now": iso(now),
        }
    }
    row: Any = await pg.fetchrow("SELECT * FROM payments")
    assert (row["reference"], row["session_id"], row["received_at"]) == ("psp_0001", sid, now)
    assert (await history(pg, sid))[-1] == (
        "pending_payment", "active", None, "payment", "paid, reference psp_0001",
    )  # fmt: skip
    assert await timers(pg, sid) == {
        "session_expiry": now + minutes(45),
        "session_warning": now + minutes(45 - 5),  # SESSION_WARNING_SECONDS: 300, 60
    }
    assert await assert_capacity_mirrored(pg, valkey, cast.mitra) == 1


@pytest.mark.parametrize(
    "signature",
    [None, "", "deadbeef", "0" * 64, "sha256=", "é".encode() * 32, "not hex at all"],
    ids=["missing", "empty", "short", "zeros", "prefix_only", "non_ascii", "garbage"],
)
async def test_a_missing_or_wrong_signature_is_401_and_changes_nothing(
    inst: Instance, pg: asyncpg.Connection, signature: str | bytes | None
) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    r = await post_webhook(inst, webhook_body(sid), signature)
    assert_error(r, 401, "invalid_signature")
    await assert_untouched(pg, sid)


async def test_a_signature_made_with_another_secret_is_refused(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    raw = webhook_body(sid)
    r = await post_webhook(inst, raw, sign(raw, "another-secret-of-some-length"))
    assert_error(r, 401, "invalid_signature")
    await assert_untouched(pg, sid)


async def test_a_signature_over_a_different_body_is_refused(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    """The signature covers the raw bytes: re-serialising, reordering or swapping the
    session all break it, even when the JSON means the same thing."""
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    other = await make_pending_session(inst, cast.other_customer, cast.other_mitra)
    signed = webhook_body(other)
    tampered = [
        webhook_body(sid),  # the signature of another session's payment
        signed + b" ",
        json.dumps(json.loads(signed), indent=1).encode(),
        json.dumps(dict(reversed(json.loads(signed).items()))).encode(),
    ]
    for raw in tampered:
        assert_error(await post_webhook(inst, raw, sign(signed)), 401, "invalid_signature")
    await assert_untouched(pg, sid)
    assert await session_status(pg, other) == "pending_payment"


async def test_the_signature_is_accepted_in_upper_case_hex(inst: Instance) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    raw = webhook_body(sid)
    r = await post_webhook(inst, raw, sign(raw).upper())
    assert r.status_code == 200, r.text


async def test_replaying_a_reference_answers_200_without_a_second_transition(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    first = await pay(inst, sid, "psp-7")
    inst.clock.advance(5)
    second = await pay(inst, sid, "psp-7")
    assert second.pop("server_now") == iso(inst.clock.now())
    first.pop("server_now")
    assert second == first  # started_at/ends_at not moved by the replay
    assert await pg.fetchval("SELECT count(*) FROM payments") == 1
    assert [h[1] for h in await history(pg, sid)] == ["pending_payment", "active"]
    assert await assert_capacity_mirrored(pg, valkey, cast.mitra) == 1
    # Still 200 after the session closed: the provider only learns "received".
    await inst.client.post(url(sid, "end"), headers=cast.customer.headers)
    r = await post_webhook(inst, webhook_body(sid, "psp-7"))
    assert r.status_code == 200 and r.json()["session"]["status"] == "ended"


async def test_concurrent_deliveries_of_one_reference_pay_once(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    raw = webhook_body(sid, "psp-burst")
    results = await asyncio.gather(*(post_webhook(inst, raw) for _ in range(8)))
    assert [r.status_code for r in results] == [200] * 8
    assert {r.json()["session"]["ends_at"] for r in results} == {
        iso(inst.clock.now() + minutes(30))
    }
    assert await pg.fetchval("SELECT count(*) FROM payments") == 1
    assert len(await history(pg, sid)) == 2
    assert await assert_capacity_mirrored(pg, valkey, cast.mitra) == 1


async def test_a_reference_used_for_another_session_is_409(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    cast = await make_cast(inst)
    paid = await make_pending_session(inst, cast.customer, cast.mitra)
    other = await make_pending_session(inst, cast.other_customer, cast.other_mitra)
    await pay(inst, paid, "psp-shared")
    r = await post_webhook(inst, webhook_body(other, "psp-shared"))
    assert_error(r, 409, "payment_reference_reused")
    assert "psp-shared" in r.json()["detail"]
    await assert_untouched_other(pg, other)


async def assert_untouched_other(pg: asyncpg.Connection, sid: uuid.UUID) -> None:
    assert await session_status(pg, sid) == "pending_payment"
    assert len(await history(pg, sid)) == 1
    assert await pg.fetchval("SELECT count(*) FROM payments WHERE session_id = $1", sid) == 0


async def test_one_reference_raced_for_two_sessions_pays_exactly_one(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    cast = await make_cast(inst)
    a = await make_pending_session(inst, cast.customer, cast.mitra)
    b = await make_pending_session(inst, cast.other_customer, cast.other_mitra)
    results = await asyncio.gather(
        post_webhook(inst, webhook_body(a, "psp-race")),
        post_webhook(inst, webhook_body(b, "psp-race")),
    )
    assert sorted(r.status_code for r in results) == [200, 409]
    assert sorted([await session_status(pg, a), await session_status(pg, b)]) == [
        "active", "pending_payment",
    ]  # fmt: skip
    assert await pg.fetchval("SELECT count(*) FROM payments") == 1


async def test_a_second_reference_for_a_paid_session_is_409_invalid_state(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    await pay(inst, sid, "psp-a")
    assert_error(await post_webhook(inst, webhook_body(sid, "psp-b")), 409, "invalid_state")
    assert await pg.fetchval("SELECT array_agg(reference) FROM payments") == ["psp-a"]


@pytest.mark.parametrize("status", ["cancelled", "expired", "ended", "rerouted"])
async def test_a_session_no_longer_payable_is_409_invalid_state(
    inst: Instance, pg: asyncpg.Connection, status: str
) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    await pg.execute("UPDATE chat_sessions SET status = $2 WHERE id = $1", sid, status)
    r = await post_webhook(inst, webhook_body(sid))
    assert_error(r, 409, "invalid_state")
    assert status in r.json()["detail"]
    assert await session_status(pg, sid) == status
    assert await pg.fetchval("SELECT count(*) FROM payments") == 0


async def test_an_unknown_session_is_404(inst: Instance, pg: asyncpg.Connection) -> None:
    r = await post_webhook(inst, webhook_body(uuid.uuid4()))
    assert_error(r, 404, "not_found")
    assert await pg.fetchval("SELECT count(*) FROM payments") == 0


GOOD: dict[str, Any] = {"session_id": str(uuid.UUID(int=1)), "reference": "psp-1", "status": "paid"}
CHANGES: list[dict[str, Any]] = [
    {"session_id": "not-a-uuid"}, {"session_id": 1}, {"session_id": None},
    {"reference": ""}, {"reference": "r" * 201}, {"reference": "has space"},
    {"reference": 42}, {"reference": ["psp-1"]}, {"status": "failed"},
    {"status": "PAID"}, {"status": True}, {"amount": 100},
]  # fmt: skip
BAD_BODIES: list[bytes] = [
    b"", b"{", b"[]", b"null", b'"paid"', b"\xff\xfe", b"{'single': 1}",
    *(json.dumps(GOOD | change).encode() for change in CHANGES),
    json.dumps({k: v for k, v in GOOD.items() if k != "reference"}).encode(),
    json.dumps({k: v for k, v in GOOD.items() if k != "status"}).encode(),
]  # fmt: skip


@pytest.mark.parametrize("raw", BAD_BODIES, ids=lambda raw: raw[:40].decode(errors="replace"))
async def test_a_signed_bad_body_is_422(inst: Instance, pg: asyncpg.Connection, raw: bytes) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    raw = raw.replace(str(uuid.UUID(int=1)).encode(), str(sid).encode())
    assert_error(await post_webhook(inst, raw), 422, "invalid_request")
    # The signature is checked before the body is even parsed.
    assert_error(await post_webhook(inst, raw, "0" * 64), 401, "invalid_signature")
    await assert_untouched(pg, sid)


async def test_a_reference_of_200_characters_is_accepted(inst: Instance) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    assert (await post_webhook(inst, webhook_body(sid, "r" * 200))).status_code == 200


async def test_an_oversized_webhook_body_is_413(inst: Instance, pg: asyncpg.Connection) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    raw = webhook_body(sid, pad="x" * MAX_BODY_BYTES)
    assert_error(await post_webhook(inst, raw), 413, "payload_too_large")
    await assert_untouched(pg, sid)
