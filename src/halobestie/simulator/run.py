"""A simulation: its people, created through the API, run until `stop()`.

    sim = Simulation(DemoConfig(base_url=..., admin_email=..., admin_password=...,
                                webhook_secret=...))
    task = asyncio.create_task(sim.run())
    ...
    sim.stop(); await task      # or sim.stop_threadsafe() from another thread

`run()` waits for the server (`/healthz`), creates the simulated mitras (admin API) and
customers (registration) unless they exist, then runs one task per person. On stop, every
person winds down within `FAREWELL_SECONDS`: mitras go offline, searching requests are
withdrawn, mitras the admin had deactivated are reactivated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..logs import get_logger
from .actors import Actor, AdminActor, CustomerActor, MitraActor
from .client import Account, ApiError, ApiUser, PaymentProvider, ServerGone
from .world import Behaviour, ChatHook, DemoChat, World

log = get_logger(__name__)

SIM_PASSWORD = "halobestie-sim"  # noqa: S105 - simulated users of a dev server
FAREWELL_SECONDS = 5.0
GRACE_SECONDS = 2.0
CREATE_AT_ONCE = 4
SUMMARY_EVERY_SECONDS = 30.0


@dataclass
class DemoConfig:
    base_url: str
    admin_email: str
    admin_password: str
    webhook_secret: str
    mitras: int = 8
    customers: int = 5
    rate: float = 1.0  # > 1: everyone acts more often; < 1: less
    seed: int | None = None
    churn: bool = True  # the admin deactivates and reactivates mitras
    behaviour: Behaviour = field(default_factory=Behaviour)
    chat: ChatHook = field(default_factory=DemoChat)
    email_domain: str = "sim.halobestie.dev"
    wait_for_server_seconds: float = 60.0


class Simulation:
    def __init__(self, config: DemoConfig) -> None:
        if config.rate <= 0:
            raise ValueError("rate must be positive")
        self.config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        self.world: World | None = None
        self.started = asyncio.Event()  # the people are created and running

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.world.stats) if self.world is not None else {}

    def stop(self) -> None:
        self._stop_requested = True
        if self.world is not None:
            self.world.stopping.set()

    def stop_threadsafe(self) -> None:
        """stop() from another thread (the dev command's main thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._stop_requested = True
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self.stop)

    async def run(self) -> None:
        """Until stop(); never raises for the server's failures (they are logged)."""
        self._loop = asyncio.get_running_loop()
        config = self.config
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
        async with httpx.AsyncClient(base_url=config.base_url, timeout=10) as http:
            world = World(
                behaviour=config.behaviour,
                rate=config.rate,
                rng=random.Random(config.seed),  # noqa: S311 - simulation dice, not secrets
                payments=PaymentProvider(http, config.webhook_secret),
                chat=config.chat,
            )
            self.world = world
            if self._stop_requested:
                world.stopping.set()
            actors: list[Actor] = []
            try:
                if not await self._server_up(http, world):
                    return
                actors = await self._people(http, world)
                if not actors:
                    return
                self.started.set()
                log.info("demo_traffic_started", mitras=config.mitras, customers=config.customers)
                tasks = [asyncio.create_task(a.run()) for a in actors]
                summary = asyncio.create_task(self._summaries(world))
                await world.stopping.wait()
                # Every pause ends at once on stop; a request in flight gets a moment.
                await asyncio.wait(tasks, timeout=GRACE_SECONDS)
                for task in (*tasks, summary):
                    task.cancel()
                await asyncio.gather(*tasks, summary, return_exceptions=True)
            finally:
                await self._wind_down(actors)
        log.info("demo_traffic_stopped", **self.stats)

    async def _server_up(self, http: httpx.AsyncClient, world: World) -> bool:
        deadline = asyncio.get_running_loop().time() + self.config.wait_for_server_seconds
        while asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/healthz")).status_code == 200:
                    return True
            if not await world.wait(0.2):
                return False
        log.error("demo_server_not_up", base_url=self.config.base_url)
        return False

    def _account(self, role: str, n: int) -> Account:
        return Account(
            email=f"{role}{n}@{self.config.email_domain}",
            password=SIM_PASSWORD,
            display_name=f"Sim {role.title()} {n}",
            role=role,
        )

    async def _people(self, http: httpx.AsyncClient, world: World) -> list[Actor]:
        """Create (or find again) everyone; [] when the server refuses the admin."""
        config = self.config
        admin = ApiUser(http, Account(config.admin_email, config.admin_password, "Admin", "admin"))
        for attempt in range(10):
            try:
                await admin.login()
                break
            except ServerGone:
                if attempt == 9 or not await world.wait(1.0):
                    return []
            except ApiError as exc:
                log.error("demo_admin_refused", email=config.admin_email, error=str(exc))
                return []
        mitras = [ApiUser(http, self._account("mitra", n)) for n in range(1, config.mitras + 1)]
        customers = [
            ApiUser(http, self._account("customer", n)) for n in range(1, config.customers + 1)
        ]
        # A few at a time: each costs the server a password hash.
        gate = asyncio.Semaphore(CREATE_AT_ONCE)

        async def gated(work: Awaitable[Any]) -> None:
            async with gate:
                await work

        await asyncio.gather(
            *(gated(self._ensure_mitra(admin, user)) for user in mitras),
            *(gated(user.register()) for user in customers),
        )
        world.mitra_ids.extend(u.user_id for u in mitras if u.user_id is not None)
        return [
            *(MitraActor(world, user) for user in mitras),
            *(CustomerActor(world, user) for user in customers),
            AdminActor(world, admin, churn=config.churn),
        ]

    async def _ensure_mitra(self, admin: ApiUser, user: ApiUser) -> None:
        account = user.account
        body = {
            "email": account.email,
            "password": account.password,
            "display_name": account.display_name,
        }
        try:
            await admin.call("POST", "/api/admin/mitras", body)
        except ApiError as exc:
            if exc.code != "email_taken":
                raise
        try:
            await user.login()
        except ApiError as exc:
            if exc.code != "account_deactivated":
                raise
            # Left deactivated by an earlier run that was killed: reactivate it.
            listing = await admin.call("GET", "/api/admin/mitras")
            for mitra in listing["mitras"]:
                if mitra["email"] == account.email:
                    await admin.call(
                        "PATCH", f"/api/admin/mitras/{mitra['id']}", {"is_active": True}
                    )
            await user.login()

    async def _summaries(self, world: World) -> None:
        while await world.wait(SUMMARY_EVERY_SECONDS):
            log.info("demo_traffic", **dict(sorted(world.stats.items())))

    async def _wind_down(self, actors: list[Actor]) -> None:
        for actor in actors:
            await actor.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FAREWELL_SECONDS):
                await asyncio.gather(*(a.farewell() for a in actors), return_exceptions=True)
