"""The event log over REST (SPEC §6): `GET /api/events?after=<seq>&limit=`, the same
stream as the socket's, for any role."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ...errors import EventsExpired
from ...events.log import list_events
from ..deps import AnyUser, CtxDep
from ..models import EventsOut
from ..openapi import documented

router = APIRouter(prefix="/api", tags=["events"])

MAX_LIMIT = 500
MAX_SEQ = 2**62


@router.get("/events", responses=documented(EventsExpired))
async def get_events(
    principal: AnyUser,
    ctx: CtxDep,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="the last seq seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> EventsOut:
    """The caller's events with `seq > after`, at most `limit`, ascending, and its
    `last_seq`: page on with `after` = the last seq received until it reaches
    `last_seq`. 410 `events_expired` when events after `after` are no longer kept
    (EVENT_RETENTION_SECONDS): refetch the state, then continue from `last_seq`."""
    page = await list_events(ctx, principal.user_id, after=after, limit=limit)
    return EventsOut.model_validate(page.public())
