"""Extend's guards on real servers: the cap on a session's total length
(SESSION_MAX_TOTAL_MINUTES) and idempotent retries with an `Idempotency-Key`.

A retry, sequential or racing the first, extends once: one `ends_at` move, one history
row, the expiry and warning timers moved once, both answers the same session.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import ValidationError

from halobestie.clock import iso
from tests.conftest import AppFactory, Instance, eventually, settings_for
from tests.sessions.helpers import (
    Cast,
    history,
    make_cast,
    make_pending_session,
    minutes,
    pay,
    session_status,
    timers,
    url,
)


@pytest.fixture
async def active(inst: Instance) -> AsyncIterator[tuple[Instance, Cast, uuid.UUID, datetime]]:
    """An active 30-minute session and its `ends_at`."""
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra, minutes=30)
    await pay(inst, sid)
    yield inst, cast, sid, inst.clock.now() + minutes(30)


async def extend(
    inst: Instance, cast: Cast, sid: uuid.UUID, n: int, key: str | None = None
) -> httpx.Response:
    headers = dict(cast.customer.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await inst.client.post(url(sid, "extend"), json={"minutes": n}, headers=headers)


def session_of(r: httpx.Response) -> dict[str, Any]:
    """The answer's session without `server_now` (the instance's clock at answering)."""
    assert r.status_code == 200, r.text
    session: dict[str, Any] = r.json()["session"]
    return {k: v for k, v in session.items() if k != "server_now"}


async def extensions(pg: asyncpg.Connection, sid: uuid.UUID) -> int:
    n: int = await pg.fetchval(
        "SELECT count(*) FROM chat_session_events WHERE session_id = $1"
        " AND from_status = 'active' AND to_status = 'active'",
        sid,
    )
    return n


def moved_to(ends_at: datetime) -> dict[str, datetime]:
    """The session's timers once `ends_at` is where it is (SESSION_WARNING_SECONDS 300,60)."""
    return {"session_expiry": ends_at, "session_warning": ends_at - minutes(5)}


# --- the cap ------------------------------------------------------------------------------


async def test_extensions_stop_at_the_default_total_of_480_minutes(
    active: tuple[Instance, Cast, uuid.UUID, datetime], pg: asyncpg.Connection
) -> None:
    """The newcomer's seven 240-minute extensions: the second one would pass 480 in all."""
    inst, cast, sid, ends_at = active
    assert session_of(await extend(inst, cast, sid, 240))["ends_at"] == iso(ends_at + minutes(240))
    r = await extend(inst, cast, sid, 240)
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "session_too_long"
    assert "480 minutes" in r.json()["detail"] and "210 more minutes" in r.json()["detail"]
    assert await extensions(pg, sid) == 1
    assert await timers(pg, sid) == moved_to(ends_at + minutes(240))
    # Exactly up to the cap is allowed; then not one minute more.
    assert session_of(await extend(inst, cast, sid, 210))["ends_at"] == iso(ends_at + minutes(450))
    r = await extend(inst, cast, sid, 1)
    assert r.status_code == 409 and r.json()["error"] == "session_too_long", r.text
    assert "at most 0 more minutes" in r.json()["detail"]
    assert await extensions(pg, sid) == 2
    assert await timers(pg, sid) == moved_to(ends_at + minutes(450))


async def test_the_cap_is_a_setting_and_counts_from_started_at(make_app: AppFactory) -> None:
    async with make_app(SESSION_MAX_TOTAL_MINUTES=45) as inst:
        cast = await make_cast(inst)
        sid = await make_pending_session(inst, cast.customer, cast.mitra, minutes=30)
        await pay(inst, sid)
        inst.clock.advance(600)  # time passing does not give minutes back
        r = await extend(inst, cast, sid, 16)
        assert r.status_code == 409 and "at most 15 more minutes" in r.json()["detail"], r.text
        assert (await extend(inst, cast, sid, 15)).status_code == 200


@pytest.mark.parametrize("value", [0, -1, 10081, "many", 1.5])
def test_session_max_total_minutes_is_validated(value: Any) -> None:
    with pytest.raises(ValidationError, match="SESSION_MAX_TOTAL_MINUTES"):
        settings_for(SESSION_MAX_TOTAL_MINUTES=value)


# --- idempotent retries -------------------------------------------------------------------


async def test_a_retried_extension_with_the_same_key_extends_once(
    active: tuple[Instance, Cast, uuid.UUID, datetime], pg: asyncpg.Connection
) -> None:
    inst, cast, sid, ends_at = active
    first = await extend(inst, cast, sid, 15, key="retry-1")
    inst.clock.advance(5)  # the client timed out, then retried
    again = await extend(inst, cast, sid, 15, key="retry-1")
    assert session_of(again) == session_of(first)
    assert session_of(first)["ends_at"] == iso(ends_at + minutes(15))
    assert await extensions(pg, sid) == 1
    assert await timers(pg, sid) == moved_to(ends_at + minutes(15))
    # Another key is another purchase.
    r = await extend(inst, cast, sid, 15, key="retry-2")
    assert session_of(r)["ends_at"] == iso(ends_at + minutes(30))
    assert await extensions(pg, sid) == 2
    assert await timers(pg, sid) == moved_to(ends_at + minutes(30))
    # Without a key, as the SPEC has it: every call extends.
    for _ in range(2):
        assert (await extend(inst, cast, sid, 1)).status_code == 200
    assert await extensions(pg, sid) == 4


async def test_two_racing_retries_extend_once_and_answer_alike(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    """Both requests are made to wait on the session's lock (held here), then let go at
    once: the second must see the first's key, not extend again. Lock bounds raised so
    the held lock is waited for, not timed out, on a loaded box."""
    async with make_app(DATABASE_TIMEOUT_SECONDS=20) as inst:
        cast = await make_cast(inst)
        sid = await make_pending_session(inst, cast.customer, cast.mitra, minutes=30)
        await pay(inst, sid)
        ends_at = inst.clock.now() + minutes(30)
        holder = await asyncpg.connect(inst.ctx.settings.database_url)
        racers: list[asyncio.Task[httpx.Response]] = []
        try:
            async with holder.transaction():
                await holder.execute("SELECT 1 FROM chat_sessions WHERE id = $1 FOR UPDATE", sid)
                racers = [
                    asyncio.create_task(extend(inst, cast, sid, 20, key="racing")) for _ in range(2)
                ]

                async def both_waiting() -> bool:
                    waiting: int = await pg.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()"
                    )
                    return waiting >= 2

                await eventually(both_waiting, within=10)
            answers = await asyncio.wait_for(asyncio.gather(*racers), timeout=30)
        finally:
            await holder.close()
            for task in racers:
                task.cancel()
            await asyncio.gather(*racers, return_exceptions=True)
        first, second = answers
        assert session_of(first) == session_of(second)
        assert session_of(first)["ends_at"] == iso(ends_at + minutes(20))
        assert await extensions(pg, sid) == 1
        assert await timers(pg, sid) == moved_to(ends_at + minutes(20))
        rows = await pg.fetch(
            "SELECT key, minutes FROM session_extensions WHERE session_id = $1", sid
        )
        assert [tuple(r) for r in rows] == [("racing", 20)]


async def test_a_key_belongs_to_its_session(inst: Instance, pg: asyncpg.Connection) -> None:
    cast = await make_cast(inst)
    one = await make_pending_session(inst, cast.customer, cast.mitra, minutes=30)
    other = await make_pending_session(inst, cast.customer, cast.other_mitra, minutes=30)
    await pay(inst, one, "ref-one")
    await pay(inst, other, "ref-other")
    ends_at = inst.clock.now() + minutes(30)
    for sid in (one, other):
        r = await extend(inst, cast, sid, 10, key="same-key")
        assert session_of(r)["ends_at"] == iso(ends_at + minutes(10))
        assert await extensions(pg, sid) == 1
    # Someone else's session is still a 404, key or not.
    r = await inst.client.post(
        url(one, "extend"),
        json={"minutes": 10},
        headers={**cast.other_customer.headers, "Idempotency-Key": "same-key"},
    )
    assert r.status_code == 404 and r.json()["error"] == "not_found", r.text


async def test_a_key_reused_with_other_minutes_is_refused(
    active: tuple[Instance, Cast, uuid.UUID, datetime], pg: asyncpg.Connection
) -> None:
    inst, cast, sid, ends_at = active
    assert (await extend(inst, cast, sid, 10, key="k")).status_code == 200
    r = await extend(inst, cast, sid, 20, key="k")
    assert r.status_code == 422 and r.json()["error"] == "idempotency_key_reused", r.text
    assert "10 minutes, not 20" in r.json()["detail"]
    assert await extensions(pg, sid) == 1
    assert await timers(pg, sid) == moved_to(ends_at + minutes(10))


async def test_a_retry_after_the_session_closed_answers_it_as_it_is_now(
    active: tuple[Instance, Cast, uuid.UUID, datetime], pg: asyncpg.Connection
) -> None:
    inst, cast, sid, ends_at = active
    assert (await extend(inst, cast, sid, 10, key="before-end")).status_code == 200
    r = await inst.client.post(url(sid, "end"), headers=cast.customer.headers)
    assert r.status_code == 200, r.text
    again = session_of(await extend(inst, cast, sid, 10, key="before-end"))
    assert again["status"] == "ended" and again["ends_at"] == iso(ends_at + minutes(10))
    # A new key on a closed session is the SPEC's 409.
    r = await extend(inst, cast, sid, 10, key="after-end")
    assert r.status_code == 409 and r.json()["error"] == "invalid_state", r.text
    assert await session_status(pg, sid) == "ended"


async def test_a_refused_keyed_extension_records_nothing_so_its_retry_is_judged_again(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    async with make_app(SESSION_MAX_TOTAL_MINUTES=40) as inst:
        cast = await make_cast(inst)
        sid = await make_pending_session(inst, cast.customer, cast.mitra, minutes=30)
        await pay(inst, sid)
        r = await extend(inst, cast, sid, 20, key="too-much")
        assert r.status_code == 409 and r.json()["error"] == "session_too_long", r.text
        assert await pg.fetchval("SELECT count(*) FROM session_extensions") == 0
        assert (await extend(inst, cast, sid, 10, key="too-much")).status_code == 200
        assert len(await history(pg, sid)) == 3


@pytest.mark.parametrize("key", ["", "has space", "x" * 201, "tab\there"], ids=repr)
async def test_a_malformed_key_is_422_naming_the_header(
    active: tuple[Instance, Cast, uuid.UUID, datetime], pg: asyncpg.Connection, key: str
) -> None:
    inst, cast, sid, _ = active
    r = await extend(inst, cast, sid, 10, key=key)
    assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text
    assert "Idempotency-Key" in r.json()["detail"]
    assert await extensions(pg, sid) == 0


async def test_extend_documents_its_refusals_and_the_header(inst: Instance) -> None:
    doc = (await inst.client.get("/openapi.json")).json()
    operation = doc["paths"]["/api/sessions/{session_id}/extend"]["post"]
    assert {"404", "409", "422"} <= set(operation["responses"])
    [header] = [p for p in operation["parameters"] if p["in"] == "header"]
    assert header["name"] == "Idempotency-Key" and not header.get("required", False)
