"""Admin: mitras, dashboard, drift and reseed."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from ...auth.actions import do_create_user
from ...availability.drift import compute_drift
from ...availability.queries import availability_counts
from ...availability.seed import seed_mirror
from ...availability.status import list_mitra_views, overlay_heartbeats
from ...concepts import open_session
from ...errors import EmailTaken, MirrorUnavailable, NotFound, ValkeyUnavailable
from ...sessions.deactivation import do_set_mitra_active
from ..bodies import MitraPatchBody, RegisterBody
from ..deps import Admin, CtxDep, NowDep
from ..models import Dashboard, DriftOut, MitraOut, MitrasOut, NewMitraOut, ReseedOut
from ..openapi import documented

router = APIRouter(prefix="/api/admin", tags=["admin"])

SESSION_COUNTS_SQL = f"""
SELECT count(*) FILTER (WHERE status = 'pending_payment') AS pending_payment,
       count(*) FILTER (WHERE status = 'active') AS active
FROM chat_sessions WHERE {open_session()}
"""  # noqa: S608


@router.post("/mitras", status_code=201, responses=documented(EmailTaken))
async def create_mitra(body: RegisterBody, _: Admin, ctx: CtxDep) -> NewMitraOut:
    user = await do_create_user(
        ctx,
        email=body.email,
        password=body.password,
        display_name=body.display_name,
        role="mitra",
    )
    return NewMitraOut.model_validate(
        {
            "mitra": {
                "id": str(user.id),
                "email": user.email,
                "display_name": user.display_name,
                "is_active": True,
                "is_online": False,
            }
        }
    )


@router.get("/mitras")
async def list_mitras(_: Admin, ctx: CtxDep) -> MitrasOut:
    views = await overlay_heartbeats(ctx, await list_mitra_views(ctx))
    return MitrasOut.model_validate({"mitras": [v.public() for v in views]})


@router.patch("/mitras/{mitra_id}", responses=documented(NotFound))
async def patch_mitra(
    mitra_id: UUID, body: MitraPatchBody, admin: Admin, ctx: CtxDep, now: NowDep
) -> MitraOut:
    view = await do_set_mitra_active(ctx, mitra_id, body.is_active, now, actor_id=admin.user_id)
    return MitraOut.model_validate({"mitra": view.public()})


@router.get("/dashboard")
async def dashboard(_: Admin, ctx: CtxDep, now: NowDep) -> Dashboard:
    counts = await availability_counts(ctx, now)
    async with ctx.db.connection() as conn:
        sessions = await conn.fetchrow(SESSION_COUNTS_SQL)
    return Dashboard.model_validate(
        {
            "online_count": counts.online,
            "available_count": counts.available,
            "deactivated_count": counts.deactivated,
            "sessions": {
                "pending_payment": sessions["pending_payment"],
                "active": sessions["active"],
            },
            "source": counts.source,
        }
    )


@router.post("/availability/reseed", responses=documented(ValkeyUnavailable))
async def reseed(_: Admin, ctx: CtxDep) -> ReseedOut:
    try:
        counts = await seed_mirror(ctx, "manual")
    except MirrorUnavailable:
        raise ValkeyUnavailable(
            "Valkey is unreachable; the mirror reseeds itself when it returns"
        ) from None
    return ReseedOut.model_validate(counts.as_dict())


@router.get("/availability/drift", responses=documented(ValkeyUnavailable))
async def drift(_: Admin, ctx: CtxDep) -> DriftOut:
    try:
        report = await compute_drift(ctx)
    except MirrorUnavailable:
        raise ValkeyUnavailable("Valkey is unreachable; drift cannot be measured") from None
    return DriftOut.model_validate(report.as_dict())
