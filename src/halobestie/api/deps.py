"""FastAPI dependencies as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Header, Request

from ..auth.queries import require_live_session
from ..auth.tokens import Principal
from ..context import Context
from .auth import principal_from_header


def get_ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


CtxDep = Annotated[Context, Depends(get_ctx)]


def get_now(ctx: CtxDep) -> datetime:
    return ctx.clock.now()


NowDep = Annotated[datetime, Depends(get_now)]


def require(
    *roles: str, live: bool = True
) -> Callable[[Context, datetime, str | None], Awaitable[Principal]]:
    """A dependency checking the token (and, when `live`, that its auth session is not
    revoked, which costs one Postgres lookup)."""

    async def dependency(
        ctx: CtxDep,
        now: NowDep,
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Principal:
        principal = principal_from_header(ctx, authorization, now, roles)
        if live:
            await require_live_session(ctx, principal)
        return principal

    return dependency


AnyUser = Annotated[Principal, Depends(require("customer", "mitra", "admin"))]
Admin = Annotated[Principal, Depends(require("admin"))]
Mitra = Annotated[Principal, Depends(require("mitra"))]
# Per-mitra availability must keep answering while Postgres is down: token only.
CustomerToken = Annotated[Principal, Depends(require("customer", live=False))]
