"""The mitra's own status (the heartbeat itself is on the lean hot path)."""

from __future__ import annotations

from fastapi import APIRouter

from ...availability.actions import do_go_offline, do_go_online
from ...availability.status import get_mitra_view, overlay_heartbeats
from ...errors import MitraDeactivated
from ..deps import CtxDep, MitraStatusUser, NowDep
from ..models import MitraStatus, OnlineOut
from ..openapi import documented

router = APIRouter(prefix="/api/mitra", tags=["mitra"])


@router.post("/status/online", responses=documented(MitraDeactivated))
async def go_online(principal: MitraStatusUser, ctx: CtxDep, now: NowDep) -> OnlineOut:
    await do_go_online(ctx, principal.user_id, now)
    return OnlineOut(is_online=True)


@router.post("/status/offline", responses=documented(MitraDeactivated))
async def go_offline(principal: MitraStatusUser, ctx: CtxDep, now: NowDep) -> OnlineOut:
    await do_go_offline(ctx, principal.user_id, now)
    return OnlineOut(is_online=False)


@router.get("/status", responses=documented(MitraDeactivated))
async def status(principal: MitraStatusUser, ctx: CtxDep) -> MitraStatus:
    [view] = await overlay_heartbeats(ctx, [await get_mitra_view(ctx, principal.user_id)])
    public = view.public()
    return MitraStatus.model_validate(public)
