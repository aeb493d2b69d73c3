"""The pairing blast: customers open, read and cancel requests; mitras list and accept
their offers."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends
from pydantic import Field

from ...auth.tokens import Principal
from ...errors import Conflict, NotFound, NotOffered
from ...pairing import actions as pairing_actions
from ...pairing.accept import do_accept_pairing_request
from ...pairing.queries import get_customer_request, open_offers
from ...sessions.transitions import public_session
from ..bodies import Strict
from ..deps import CtxDep, Mitra, NowDep, require
from ..models import OffersOut, PairingRequestOut, SessionOut
from ..openapi import documented

router = APIRouter(tags=["pairing"])
Customer = Annotated[Principal, Depends(require("customer"))]


class PairingRequestBody(Strict):
    duration_minutes: Annotated[int, Field(ge=1, le=240)]
    # JSON has no UUID type: a string, parsed (strict mode would refuse every string).
    mitra_id: Annotated[UUID | None, Field(strict=False)] = None


@router.post("/api/pairing/requests", status_code=201, responses=documented(NotFound, Conflict))
async def open_request(
    body: PairingRequestBody, principal: Customer, ctx: CtxDep, now: NowDep
) -> PairingRequestOut:
    request = await pairing_actions.do_open_pairing_request(
        ctx,
        customer_id=principal.user_id,
        duration_minutes=body.duration_minutes,
        preferred_mitra_id=body.mitra_id,
        now=now,
    )
    return PairingRequestOut.model_validate({"pairing_request": request.public()})


@router.get("/api/pairing/requests/{request_id}", responses=documented(NotFound))
async def get_request(request_id: UUID, principal: Customer, ctx: CtxDep) -> PairingRequestOut:
    request = await get_customer_request(ctx, request_id, principal.user_id)
    return PairingRequestOut.model_validate({"pairing_request": request.public()})


@router.delete("/api/pairing/requests/{request_id}", responses=documented(NotFound, Conflict))
async def cancel_request(
    request_id: UUID, principal: Customer, ctx: CtxDep, now: NowDep
) -> PairingRequestOut:
    request = await pairing_actions.do_cancel_pairing_request(
        ctx, customer_id=principal.user_id, request_id=request_id, now=now
    )
    return PairingRequestOut.model_validate({"pairing_request": request.public()})


@router.post(
    "/api/pairing/requests/{request_id}/accept",
    responses=documented(NotFound, NotOffered, Conflict),
)
async def accept_request(
    request_id: UUID, principal: Mitra, ctx: CtxDep, now: NowDep
) -> SessionOut:
    session = await do_accept_pairing_request(
        ctx, mitra_id=principal.user_id, request_id=request_id, now=now
    )
    return SessionOut.model_validate({"session": public_session(session, now)})


@router.get("/api/mitra/offers")
async def list_offers(principal: Mitra, ctx: CtxDep, now: NowDep) -> OffersOut:
    offers = await open_offers(ctx, principal.user_id, now)
    return OffersOut.model_validate({"offers": [offer.public() for offer in offers]})
