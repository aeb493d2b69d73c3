"""Demo traffic in tests: fast server cadences, brisk simulated people, and a Simulation
run as a task against a live server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from halobestie.simulator import Behaviour, DemoConfig, Simulation
from tests.events.live import Live
from tests.factories import PASSWORD, Person, make_user

# Seconds, so that a test sees mitras swept offline, offers expire and payments time out.
FAST = {
    "TIMERS_ENABLED": True,
    "SWEEPS_ENABLED": True,
    "HEARTBEAT_INTERVAL_SECONDS": 1,
    "HEARTBEAT_STALE_SECONDS": 2,
    "MITRA_AUTO_OFFLINE_SWEEP_SECONDS": 1,
    "PAIRING_OFFER_TTL_SECONDS": 3,
    "PAYMENT_TIMEOUT_SECONDS": 3,
    "AVAILABILITY_SNAPSHOT_TTL_SECONDS": 1,
}
# Everything happens within seconds (sessions are still booked by the minute, so they
# are ended rather than left to expire here).
BRISK = Behaviour(
    think=(0.5, 1.5),
    durations=(1,),
    accept_delay=(0.1, 0.4),
    pay_delay=(0.1, 0.4),
    extend_probability=0.6,
    extend_after=(0.2, 0.6),
    end_early_probability=1.0,
    end_after=(0.5, 1.5),
    silence_probability=0.2,
    break_probability=0.05,
    break_length=(0.5, 1.0),
    churn_every=(1.0, 2.0),
    deactivated_for=(1.0, 2.0),
    chat_every=(0.1, 0.3),
)
SIM_EMAILS = "%@sim.halobestie.dev"


@asynccontextmanager
async def simulation(
    live: Live, admin: Person | None = None, **overrides: Any
) -> AsyncIterator[Simulation]:
    """A Simulation running against `live` until the block ends (then stopped, awaited)."""
    admin = admin or await make_user(live.ctx, "admin")
    config = DemoConfig(
        base_url=f"http://127.0.0.1:{live.port}",
        admin_email=admin.user.email,
        admin_password=PASSWORD,
        webhook_secret=live.ctx.settings.payment_webhook_secret,
        **{"mitras": 4, "customers": 3, "seed": 7, "behaviour": BRISK, **overrides},
    )
    sim = Simulation(config)
    task = asyncio.create_task(sim.run())
    try:
        yield sim
    finally:
        sim.stop()
        await asyncio.wait_for(task, 20)
