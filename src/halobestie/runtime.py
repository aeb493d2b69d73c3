"""Start and stop one instance's engine: the order is the contract (SPEC §1).

restore timers -> seed Valkey from Postgres -> start the watcher, sweeps and timers -> serve.
"""

from __future__ import annotations

from typing import get_args

from .auth.sockets import LoginWatch
from .availability.seed import seed_mirror
from .availability.sweeps import SweepRunner
from .clock import Clock, SystemClock
from .config import Settings
from .context import Context
from .db import Bounds, Database
from .events.announce import recording
from .events.bus import bus
from .logs import get_logger
from .metrics import Metrics
from .pairing.actions import expire_offer
from .sessions.lifecycle import on_payment_timeout, on_session_expiry
from .sessions.warnings import on_session_warning
from .stalls import StallReaper
from .timers import HANDLERS, Handler, TimerKind, TimerRunner, restore_timers
from .valkey.keys import Keys
from .valkey.mirror import Mirror
from .valkey.topology import describe_failure as describe_valkey_failure
from .valkey.topology import endpoint as valkey_endpoint

log = get_logger(__name__)


def timer_handlers() -> dict[TimerKind, Handler]:
    """Every timer kind and the handler that fires it: the one table (timers.py). A kind
    missing here would never fire (left unfired, logged, counted); Runtime refuses to
    start without a handler for each kind. Each records its events in the firing
    transaction (`events.announce.recording`)."""
    return {
        "offer_expiry": recording(expire_offer),
        "payment_timeout": recording(on_payment_timeout),
        "session_expiry": recording(on_session_expiry),
        "session_warning": recording(on_session_warning),
    }


class Runtime:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        metrics = Metrics()
        keys = Keys(settings.valkey_key_prefix)
        mirror = Mirror(
            valkey_endpoint(settings),
            metrics,
            operation_timeout=settings.valkey_operation_timeout_seconds,
            probe_interval=settings.valkey_probe_interval_seconds,
            enabled=settings.valkey_mirror_enabled,
            home_key=keys.seeded,
        )
        self.ctx = Context(
            settings=settings,
            db=Database(
                settings.asyncpg_dsn,
                pool_size=settings.database_pool_size,
                timeout=settings.database_timeout_seconds,
                bounds=Bounds(
                    statement=settings.statement_timeout_bound,
                    lock=settings.lock_timeout_bound,
                    idle_in_transaction=settings.idle_in_transaction_bound,
                ),
                metrics=metrics,
                statement_cache_size=settings.database_statement_cache_size,
                direct_dsn=settings.direct_dsn,
            ),
            mirror=mirror,
            keys=keys,
            metrics=metrics,
            clock=clock or SystemClock(),
        )
        handlers = timer_handlers()
        missing = set(get_args(TimerKind)) - set(handlers)
        if missing:
            raise RuntimeError(f"timer kinds without a handler: {sorted(missing)}")
        self.ctx.provide(HANDLERS, handlers)
        self.sweeps = SweepRunner(self.ctx)
        self.logins = LoginWatch(self.ctx)
        self.timers = TimerRunner(self.ctx)
        self.reaper = StallReaper(
            settings.direct_dsn,  # it must see and end server sessions, not a pooler's
            metrics,
            mid_statement=settings.idle_in_transaction_bound,
            idle_holding=settings.database_timeout_seconds,
            timeout=settings.database_timeout_seconds,
        )

    async def start(self) -> None:
        ctx = self.ctx
        await ctx.db.open(wait=ctx.settings.database_startup_wait_seconds)
        # Fleet upkeep like the sweeps and timers, and off with them (benchmarks count
        # every statement); first: restoring timers may wait on a stalled holder.
        if ctx.settings.sweeps_enabled or ctx.settings.timers_enabled:
            self.reaper.start()
        ctx.mirror.set_seeder(lambda reason: seed_mirror(ctx, reason))
        try:
            restored = await restore_timers(ctx, ctx.clock.now())
            seeded = await ctx.mirror.ensure_seeded("startup")
        except BaseException:
            await self.reaper.stop()
            raise
        if not seeded:
            failure = ctx.mirror.last_failure
            tls = ctx.settings.valkey_client_url.startswith("rediss://")
            log.warning(
                "starting_degraded",
                detail=f"{describe_valkey_failure(failure, tls=tls)}; serving from Postgres",
                error=None if failure is None else repr(failure),  # hosts, never a secret
            )
        ctx.mirror.start()
        bus(ctx).start()
        self.logins.start()
        if ctx.settings.sweeps_enabled:
            self.sweeps.start()
        if ctx.settings.timers_enabled:
            self.timers.start()
        log.info("engine_started", timer_restorers=restored, mirror_trusted=seeded)

    async def stop(self) -> None:
        await self.logins.stop()
        await bus(self.ctx).stop()
        await self.timers.stop()
        await self.sweeps.stop()
        await self.reaper.stop()
        await self.ctx.mirror.close()
        await self.ctx.db.close()
