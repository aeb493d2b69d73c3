"""POST /api/auth/{register,login,refresh,logout}."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ...auth import actions
from ...errors import (
    AccountDeactivated,
    EmailTaken,
    HashingOverloaded,
    InvalidCredentials,
    InvalidToken,
    TooManyAttempts,
)
from ..bodies import LoginBody, RefreshBody, RegisterBody
from ..deps import AnyUser, CtxDep, NowDep
from ..models import LoginOut
from ..openapi import documented

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post("/register", status_code=201, responses=documented(EmailTaken, HashingOverloaded))
async def register(body: RegisterBody, ctx: CtxDep, now: NowDep) -> LoginOut:
    login = await actions.do_register_customer(
        ctx, email=body.email, password=body.password, display_name=body.display_name, now=now
    )
    return LoginOut.model_validate(login.public())


@router.post(
    "/login",
    responses=documented(
        InvalidCredentials, AccountDeactivated, TooManyAttempts, HashingOverloaded
    ),
)
async def login(body: LoginBody, ctx: CtxDep, now: NowDep) -> LoginOut:
    result = await actions.do_login(ctx, email=body.email, password=body.password, now=now)
    return LoginOut.model_validate(result.public())


@router.post("/refresh", responses=documented(InvalidToken, AccountDeactivated))
async def refresh(body: RefreshBody, ctx: CtxDep, now: NowDep) -> LoginOut:
    result = await actions.do_refresh_session(ctx, refresh_token=body.refresh_token, now=now)
    return LoginOut.model_validate(result.public())


@router.post("/logout", status_code=204)
async def logout(principal: AnyUser, ctx: CtxDep, now: NowDep) -> Response:
    await actions.do_logout(ctx, principal, now)
    return Response(status_code=204)
