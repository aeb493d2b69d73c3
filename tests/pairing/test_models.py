"""Typed rows (issue 10 point 5): the columns each pairing statement reads are the fields
of its typed row, and the payloads built from them have exactly the API models' fields
(SPEC §4, §6)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

from halobestie.api.models import Offer as OfferOut
from halobestie.api.models import PairingRequest as PairingRequestOut
from halobestie.clock import iso
from halobestie.pairing.models import (
    OFFER_COLUMNS,
    REQUEST_COLUMNS,
    Offer,
    OfferedRequest,
    PairingRequest,
)

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _names(columns: str) -> list[str]:
    """Column names as the record holds them (after any `AS`)."""
    return [column.split()[-1].split(".")[-1] for column in columns.split(",")]


def test_the_columns_read_are_the_fields_of_the_typed_rows() -> None:
    assert _names(REQUEST_COLUMNS) == [f.name for f in dataclasses.fields(PairingRequest)]
    assert _names(OFFER_COLUMNS) == [f.name for f in dataclasses.fields(Offer)]


def test_payloads_have_the_fields_of_the_api_models() -> None:
    mitras = [uuid.uuid4(), uuid.uuid4()]
    request = PairingRequest(
        id=uuid.uuid4(), customer_id=uuid.uuid4(), duration_minutes=30,
        preferred_mitra_id=None, status="searching", session_id=None, rerouted_from=None,
        expires_at=AT, created_at=AT, closed_at=None,
    )  # fmt: skip

    offered = OfferedRequest.of(request, [str(m) for m in mitras])
    payload = offered.public()

    assert offered.offered_to == tuple(mitras)
    assert set(payload) == set(PairingRequestOut.model_fields)
    out = PairingRequestOut.model_validate(payload)
    assert out.offered_to == [str(m) for m in mitras]
    assert (out.expires_at, out.session_id) == (iso(AT), None)
    offer = request.offer().public()
    assert set(offer) == set(OfferOut.model_fields)
    assert offer == {"request_id": str(request.id), "duration_minutes": 30, "expires_at": iso(AT)}
