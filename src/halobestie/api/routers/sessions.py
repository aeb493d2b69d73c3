"""Chat sessions: read, history, extend, end, reroute (SPEC §4).

A session is visible to its customer, its mitra and admins; to any other caller it is
404, exactly like an unknown id, so ids cannot be probed. Actions are for the parties.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Header
from pydantic import Field

from ...auth.tokens import Principal
from ...errors import Conflict, IdempotencyKeyReused, NotFound, SessionTooLong
from ...pairing.reroute import do_reroute_session
from ...sessions.actions import do_end_session
from ...sessions.extend import do_extend_session
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


# The standard header (IETF draft-ietf-httpapi-idempotency-key-header), as clients send
# it: an opaque token, typically a UUID; visible ASCII so it logs and stores as sent.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="Optional. A retry with the same key on the same session extends once"
        " and answers the session as it is now; the key with other minutes is 422"
        " idempotency_key_reused. 1-200 visible ASCII characters, e.g. a UUID.",
    ),
]


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


@router.post(
    "/{session_id}/extend",
    responses=documented(NotFound, Conflict, SessionTooLong, IdempotencyKeyReused),
)
async def extend_session(
    session_id: UUID,
    body: ExtendBody,
    principal: Customer,
    ctx: CtxDep,
    now: NowDep,
    idempotency_key: IdempotencyKey = None,
) -> SessionOut:
    """409 `invalid_state` unless active and not run out; 409 `session_too_long` past
    SESSION_MAX_TOTAL_MINUTES in all (the detail says how many minutes are left)."""
    row = await do_extend_session(
        ctx, session_id=session_id, principal=principal, minutes=body.minutes, now=now,
        idempotency_key=idempotency_key,
    )  # fmt: skip
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
