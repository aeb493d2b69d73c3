"""Chat sessions: read, history, extend, end, reroute (SPEC §4).

A session is visible to its customer, its mitra and admins; to any other caller it is
404, exactly like an unknown id, so ids cannot be probed. Actions are for the parties.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends
from pydantic import Field

from ...auth.tokens import Principal
from ...errors import Conflict, NotFound
from ...pairing.reroute import do_reroute_session
from ...sessions.actions import do_end_session, do_extend_session
from ...sessions.queries import get_visible_session, list_session_events
from ...sessions.transitions import public_session
from ..bodies import Strict
from ..deps import AnyUser, CtxDep, NowDep, require
from ..models import PairingRequestOut, SessionEventsOut, SessionOut
from ..openapi import documented

router = APIRouter(prefix="/api/sessions", tags=["sessions"])

Customer = Annotated[Principal, Depends(require("customer"))]
Party = Annotated[Principal, Depends(require("customer", "mitra"))]


class ExtendBody(Strict):
    minutes: Annotated[int, Field(ge=1, le=240)]


class NoFields(Strict):
    """`end` and `reroute` take no fields: an empty body or `{}`; anything else is 422."""


@router.get("/{session_id}", responses=documented(NotFound))
async def get_session(session_id: UUID, principal: AnyUser, ctx: CtxDep, now: NowDep) -> SessionOut:
    row = await get_visible_session(ctx, session_id, principal)
    return SessionOut.model_validate({"session": public_session(row, now)})


@router.get("/{session_id}/events", responses=documented(NotFound))
async def session_events(session_id: UUID, principal: AnyUser, ctx: CtxDep) -> SessionEventsOut:
    events = await list_session_events(ctx, session_id, principal)
    return SessionEventsOut.model_validate({"events": [e.public() for e in events]})


@router.post("/{session_id}/extend", responses=documented(NotFound, Conflict))
async def extend_session(
    session_id: UUID, body: ExtendBody, principal: Customer, ctx: CtxDep, now: NowDep
) -> SessionOut:
    row = await do_extend_session(
        ctx, session_id=session_id, principal=principal, minutes=body.minutes, now=now
    )
    return SessionOut.model_validate({"session": public_session(row, now)})


@router.post("/{session_id}/end", responses=documented(NotFound, Conflict))
async def end_session(
    session_id: UUID, principal: Party, ctx: CtxDep, now: NowDep, body: NoFields | None = None
) -> SessionOut:
    row = await do_end_session(ctx, session_id=session_id, principal=principal, now=now)
    return SessionOut.model_validate({"session": public_session(row, now)})


@router.post("/{session_id}/reroute", responses=documented(NotFound, Conflict))
async def reroute_session(
    session_id: UUID, principal: Customer, ctx: CtxDep, now: NowDep, body: NoFields | None = None
) -> PairingRequestOut:
    request = await do_reroute_session(ctx, session_id=session_id, principal=principal, now=now)
    return PairingRequestOut.model_validate({"pairing_request": request.public()})
