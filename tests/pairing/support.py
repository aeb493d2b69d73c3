"""Helpers for the pairing tests: people in known availability states, requests, and an
inbox standing in for a WebSocket client (the bus's local delivery writes to it)."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any
from uuid import UUID

import asyncpg
import httpx

from halobestie.availability.sync import recompute_capacity
from halobestie.events.bus import bus
from tests.conftest import Instance
from tests.factories import Person, make_chat_session
from tests.failures.helpers import online_mitra


async def online_mitras(inst: Instance, n: int) -> list[Person]:
    return [await online_mitra(inst) for _ in range(n)]


async def busy_mitra(inst: Instance, customer: Person, sessions: int = 1) -> Person:
    """Online, with `sessions` active chat sessions, and its capacity mirrored."""
    mitra = await online_mitra(inst)
    for _ in range(sessions):
        await make_chat_session(inst.ctx, customer, mitra, "active")
    await recompute_capacity(inst.ctx, mitra.id)
    return mitra


async def open_request(inst: Instance, customer: Person, **body: Any) -> httpx.Response:
    body.setdefault("duration_minutes", 30)
    return await inst.client.post("/api/pairing/requests", json=body, headers=customer.headers)


async def open_ok(inst: Instance, customer: Person, **body: Any) -> dict[str, Any]:
    r = await open_request(inst, customer, **body)
    assert r.status_code == 201, r.text
    request: dict[str, Any] = r.json()["pairing_request"]
    return request


async def accept(inst: Instance, mitra: Person, request_id: str) -> httpx.Response:
    return await inst.client.post(
        f"/api/pairing/requests/{request_id}/accept", headers=mitra.headers
    )


async def get_request(inst: Instance, customer: Person, request_id: str) -> httpx.Response:
    return await inst.client.get(f"/api/pairing/requests/{request_id}", headers=customer.headers)


async def cancel(inst: Instance, customer: Person, request_id: str) -> httpx.Response:
    return await inst.client.delete(f"/api/pairing/requests/{request_id}", headers=customer.headers)


async def offers_of(inst: Instance, mitra: Person) -> list[dict[str, Any]]:
    r = await inst.client.get("/api/mitra/offers", headers=mitra.headers)
    assert r.status_code == 200, r.text
    offers: list[dict[str, Any]] = r.json()["offers"]
    return offers


def ids(people: list[Person]) -> set[str]:
    return {str(p.id) for p in people}


async def open_sessions_in_postgres(pg: asyncpg.Connection, mitra_id: UUID) -> int:
    count: int = await pg.fetchval(
        "SELECT count(*) FROM chat_sessions"
        " WHERE mitra_id = $1 AND status IN ('active', 'pending_payment')",
        mitra_id,
    )
    return count


class Inbox:
    """Every event pushed to the users it was attached for, per user."""

    def __init__(self) -> None:
        self.by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def attach(self, inst: Instance, *people: Person) -> Inbox:
        for person in people:
            bus(inst.ctx).attach(person.id, _Socket(self, str(person.id)))
        return self

    def of(self, person: Person, type_: str) -> list[dict[str, Any]]:
        return [e["data"] for e in self.by_user[str(person.id)] if e["type"] == type_]


class _Socket:
    def __init__(self, inbox: Inbox, user: str) -> None:
        self.inbox = inbox
        self.user = user

    async def send_text(self, data: str) -> None:
        self.inbox.by_user[self.user].append(json.loads(data))
