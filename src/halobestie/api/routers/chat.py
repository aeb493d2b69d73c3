"""Chat inside a session (SPEC §5): send, page the history, move a read cursor.

Order of checks, as for every session action: token (401) -> role (403: admins read but
never write) -> body and query (422) -> the session exists and the caller may see it
(404, the same for a stranger as for an unknown id) -> state (409).
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Response
from pydantic import Field, StringConstraints

from ...auth.tokens import Principal
from ...chat.actions import do_mark_read, do_send_message
from ...chat.models import MessageOut, MessagesOut, ReadOut
from ...chat.queries import DEFAULT_LIMIT, MAX_LIMIT, MAX_SEQ, list_messages
from ...errors import Conflict, NotFound
from ..bodies import Storable, Strict
from ..deps import AnyUser, CtxDep, NowDep, require
from ..openapi import documented

router = APIRouter(prefix="/api/sessions", tags=["chat"])

Party = Annotated[Principal, Depends(require("customer", "mitra"))]
Seq = Annotated[int, Field(ge=0, le=MAX_SEQ)]


class SendBody(Strict):
    client_message_id: Annotated[
        str,
        StringConstraints(min_length=1, max_length=64),
        Storable,
        Field(description="chosen by the client, 1-64 characters; a retry sends the same"),
    ]
    body: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=4000),
        Storable,
        Field(description="1-4000 characters after trimming; stored trimmed"),
    ]


class ReadBody(Strict):
    seq: Annotated[Seq, Field(description="the last message read; at most last_message_seq")]


@router.post(
    "/{session_id}/messages",
    status_code=201,
    responses={
        200: {"model": MessageOut, "description": "a retry: the message sent before"},
        **documented(NotFound, Conflict),
    },
)
async def send_message(
    session_id: UUID,
    body: SendBody,
    principal: Party,
    ctx: CtxDep,
    now: NowDep,
    response: Response,
) -> MessageOut:
    """201 with the new message; 200 with the stored one when this sender already sent
    this `client_message_id` in this session (nothing is stored twice)."""
    message, created = await do_send_message(
        ctx, session_id=session_id, principal=principal,
        client_message_id=body.client_message_id, body=body.body, now=now,
    )  # fmt: skip
    if not created:
        response.status_code = 200
    return MessageOut(message=message)


@router.get("/{session_id}/messages")
async def get_messages(
    session_id: UUID,
    principal: AnyUser,
    ctx: CtxDep,
    after_seq: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    before_seq: Annotated[int | None, Query(ge=1, le=MAX_SEQ)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> MessagesOut:
    """Ascending by `seq`. `after_seq`: the first `limit` after it (forward paging);
    `before_seq`: the last `limit` before it (backward); neither: the newest page. Both
    bounds are exclusive and may be combined."""
    messages = await list_messages(
        ctx, session_id, principal, after_seq=after_seq, before_seq=before_seq, limit=limit
    )
    return MessagesOut(messages=messages)


@router.post("/{session_id}/read", responses=documented(NotFound, Conflict))
async def mark_read(
    session_id: UUID, body: ReadBody, principal: Party, ctx: CtxDep, now: NowDep
) -> ReadOut:
    """The caller's read cursor moves to `seq`, never backwards (a lower `seq` leaves it
    and returns where it is); `seq` above the last message is 422."""
    cursor = await do_mark_read(
        ctx, session_id=session_id, principal=principal, seq=body.seq, now=now
    )
    return ReadOut(read=cursor)
