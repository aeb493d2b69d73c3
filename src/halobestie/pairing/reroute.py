"""Reroute: the customer wants someone else. The chat session (pending_payment or active)
becomes `rerouted` and a new pairing request is blasted to other mitras, in one
transaction: a session turned back into a search, so it is the pairing's (which builds
on `sessions`; sessions never call the pairing)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from ..aftercommit import run_after_commit
from ..auth.tokens import Principal
from ..concepts import OPEN_SESSION_STATUSES
from ..context import Context
from ..errors import InvalidState
from ..events.announce import record_effects
from ..sessions.actions import SESSION_TIMERS, lock_as_party
from ..sessions.transitions import session_changed, transition
from ..timers import cancel_timer
from .actions import open_pairing_request
from .models import OfferedRequest
from .queries import lock_customer_search


async def do_reroute_session(
    ctx: Context, *, session_id: UUID, principal: Principal, now: datetime
) -> OfferedRequest:
    """The new pairing request (with the mitras offered it). When nobody else is available
    (NoMitraAvailable) nothing changes; InvalidState for a closed session."""
    async with ctx.db.transaction() as conn:
        row = await lock_as_party(conn, session_id, principal)
        if row.status not in OPEN_SESSION_STATUSES:
            raise InvalidState(f"chat session {session_id} is {row.status}; it cannot be rerouted")
        await lock_customer_search(conn, row.customer_id)  # before the mitra's row
        row = await transition(
            conn, row, "rerouted", actor_id=principal.user_id, actor_role="customer",
            reason="rerouted by the customer", now=now,
        )  # fmt: skip
        for kind in SESSION_TIMERS:
            await cancel_timer(conn, kind, session_id)
        request, effects = await open_pairing_request(
            ctx,
            conn,
            customer_id=row.customer_id,
            duration_minutes=row.duration_minutes,
            preferred_mitra_id=None,
            exclude={row.mitra_id},
            rerouted_from=session_id,
            now=now,
        )
        effects.insert(0, session_changed(ctx, [row]))
        await record_effects(conn, now, effects)
    await run_after_commit(ctx, effects)
    return request
