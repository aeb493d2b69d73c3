"""FastAPI dependencies as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..auth.queries import require_live_session
from ..auth.tokens import Principal
from ..context import Context
from ..errors import AccountDeactivated, Forbidden, MitraDeactivated
from .auth import principal_from_header


def get_ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


CtxDep = Annotated[Context, Depends(get_ctx)]


def get_now(ctx: CtxDep) -> datetime:
    return ctx.clock.now()


NowDep = Annotated[datetime, Depends(get_now)]

# Declares the `bearer` scheme in /openapi.json (the docs page's Authorize button) on
# every route that checks a token. It parses nothing that matters: `principal_from_header`
# reads the header itself, to say precisely what is wrong with it.
BEARER = HTTPBearer(auto_error=False, scheme_name="bearer")


def require(
    *roles: str, live: bool = True, deactivated: type[Forbidden] = AccountDeactivated
) -> Callable[..., Awaitable[Principal]]:
    """A dependency checking the token (and, when `live`, that its auth session is not
    revoked, which costs one Postgres lookup; a login ended by a deactivation raises
    `deactivated`)."""

    async def dependency(
        ctx: CtxDep,
        now: NowDep,
        _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Principal:
        principal = principal_from_header(ctx, authorization, now, roles)
        if live:
            await require_live_session(ctx, principal, deactivated=deactivated)
        return principal

    return dependency


AnyUser = Annotated[Principal, Depends(require("customer", "mitra", "admin"))]
Admin = Annotated[Principal, Depends(require("admin"))]
Mitra = Annotated[Principal, Depends(require("mitra"))]
# The mitra's own status routes (online, offline, status): a deactivated mitra is told
# 403 `mitra_deactivated` there, as SPEC §4 words it and as the heartbeat answers.
MitraStatusUser = Annotated[Principal, Depends(require("mitra", deactivated=MitraDeactivated))]
# Per-mitra availability must keep answering while Postgres is down: token only.
CustomerToken = Annotated[Principal, Depends(require("customer", live=False))]
