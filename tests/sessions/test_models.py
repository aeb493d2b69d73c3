"""Typed rows (issue 10 point 5): a chat session read from Postgres is a `ChatSession`,
and the payloads built from the typed rows have exactly the API models' fields (SPEC §4,
§5, §7)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from halobestie.api.models import Session
from halobestie.api.models import StatusChange as StatusChangeOut
from halobestie.clock import iso
from halobestie.sessions.models import (
    SESSION_COLUMNS,
    STATUS_CHANGE_COLUMNS,
    ChatSession,
    StatusChange,
)
from halobestie.sessions.queries import get_session
from tests.conftest import Instance
from tests.factories import make_chat_session, make_user


def _names(columns: str) -> list[str]:
    return [column.strip() for column in columns.split(",")]


def test_the_columns_read_are_the_fields_of_the_typed_rows() -> None:
    assert _names(SESSION_COLUMNS) == [f.name for f in dataclasses.fields(ChatSession)]
    assert _names(STATUS_CHANGE_COLUMNS) == [f.name for f in dataclasses.fields(StatusChange)]


def test_a_status_change_payload_has_the_fields_of_the_api_model() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    change = StatusChange(1, None, "pending_payment", None, "mitra", "offer accepted", at)

    payload = change.public()

    names = {f.alias or name for name, f in StatusChangeOut.model_fields.items()}
    assert set(payload) == names
    assert StatusChangeOut.model_validate(payload).at == iso(at)


async def test_a_session_read_from_postgres_is_typed_and_its_payload_is_the_api_shape(
    inst: Instance,
) -> None:
    customer = await make_user(inst.ctx, "customer")
    mitra = await make_user(inst.ctx, "mitra")
    now = inst.clock.now()
    session_id = await make_chat_session(inst.ctx, customer, mitra, "active", now=now)

    session = await get_session(inst.ctx, session_id)

    assert isinstance(session, ChatSession)
    assert (session.customer_id, session.mitra_id, session.status) == (
        customer.id,
        mitra.id,
        "active",
    )
    assert (session.duration_minutes, session.started_at) == (30, now)
    seqs = (session.last_message_seq, session.customer_read_seq, session.mitra_read_seq)
    assert seqs == (0, 0, 0)
    later = now + timedelta(seconds=5)
    payload = session.public(later)
    assert set(payload) == set(Session.model_fields)
    out = Session.model_validate(payload)
    assert (out.id, out.started_at, out.server_now) == (str(session_id), iso(now), iso(later))
    with pytest.raises(dataclasses.FrozenInstanceError):
        session.status = "ended"  # type: ignore[misc]
