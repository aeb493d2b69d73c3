"""Customer-facing availability of one mitra."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from ...availability.queries import mitra_reachability
from ..deps import CtxDep, CustomerToken, NowDep
from ..models import Reachability

router = APIRouter(tags=["availability"])


@router.get("/api/mitras/{mitra_id}/availability")
async def mitra_availability(
    mitra_id: UUID, _: CustomerToken, ctx: CtxDep, now: NowDep
) -> Reachability:
    result = await mitra_reachability(ctx, mitra_id, now)
    return Reachability(reachable=result.reachable, available=result.available)
