"""Chat test helpers: an active session made through the same actions as the API, and
the chat's requests."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import httpx

from tests.conftest import Instance
from tests.factories import Person
from tests.sessions.helpers import make_pending_session, pay


async def make_active_session(
    inst: Instance, customer: Person, mitra: Person, *, minutes: int = 30, reference: str = ""
) -> UUID:
    """A session paid for (active), as pairing's accept and the webhook leave it."""
    session_id = await make_pending_session(inst, customer, mitra, minutes=minutes)
    await pay(inst, session_id, reference or f"ref-{session_id}")
    return session_id


def messages_url(session_id: UUID | str) -> str:
    return f"/api/sessions/{session_id}/messages"


def read_url(session_id: UUID | str) -> str:
    return f"/api/sessions/{session_id}/read"


async def send(
    client: httpx.AsyncClient, person: Person, session_id: UUID | str, body: str,
    client_message_id: str,
) -> httpx.Response:  # fmt: skip
    return await client.post(
        messages_url(session_id),
        json={"client_message_id": client_message_id, "body": body},
        headers=person.headers,
    )


async def sent(inst: Instance, person: Person, session_id: UUID, body: str, cid: str) -> Any:
    """Send and expect a new message (201); returns it."""
    r = await send(inst.client, person, session_id, body, cid)
    assert r.status_code == 201, r.text
    return r.json()["message"]


async def history(
    inst: Instance, person: Person, session_id: UUID | str, **params: Any
) -> list[dict[str, Any]]:
    r = await inst.client.get(messages_url(session_id), params=params, headers=person.headers)
    assert r.status_code == 200, r.text
    messages: list[dict[str, Any]] = r.json()["messages"]
    return messages


async def session_payload(inst: Instance, person: Person, session_id: UUID) -> dict[str, Any]:
    r = await inst.client.get(f"/api/sessions/{session_id}", headers=person.headers)
    assert r.status_code == 200, r.text
    session: dict[str, Any] = r.json()["session"]
    return session


class Inbox:
    """A socket as the event bus sees one: it records what it is sent."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def send_text(self, data: str) -> None:
        self.events.append(json.loads(data))

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e["data"] for e in self.events if e["type"] == type_]
