"""Simulated people: mitras, customers and an admin, each an asyncio task that uses the
public API like a real client would (see `client.py`), sharing a `World` (`world.py`).

Every pause is drawn from a range given in seconds at rate 1 and divided by the rate;
per-heartbeat chances (going silent, taking a break, ending a session) are multiplied by
it. The heartbeat itself follows the server's `next_heartbeat_in_seconds`, whatever the
rate: it is the server's contract, not a behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Coroutine
from typing import Any

from ..logs import get_logger
from .client import ApiError, ApiUser, Json, ServerGone
from .world import World

log = get_logger(__name__)

CLOSED = frozenset({"ended", "expired", "cancelled", "rerouted"})
DEACTIVATED = frozenset({"mitra_deactivated", "account_deactivated"})


class Actor:
    """One simulated person: `run` until the world stops, surviving any failure."""

    def __init__(self, world: World, user: ApiUser) -> None:
        self.world = world
        self.user = user
        self.tasks: set[asyncio.Task[Any]] = set()

    @property
    def name(self) -> str:
        return self.user.account.email

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self) -> None:
        self.spawn(self.user.listen(self.on_event))
        while not self.world.stopping.is_set():
            try:
                await self.live()
            except ServerGone as exc:
                self.world.stats["server_gone"] += 1
                log.info("demo_server_gone", actor=self.name, error=str(exc))
                await self.world.wait(2.0)
            except ApiError as exc:
                self.world.stats[f"refused_{exc.code}"] += 1
                log.info("demo_refused", actor=self.name, error=str(exc))
                await self.world.wait(2.0)
            except Exception:  # an actor must never take the simulation down
                log.exception("demo_actor_failed", actor=self.name)
                await self.world.wait(5.0)

    async def live(self) -> None:
        raise NotImplementedError

    async def on_event(self, event: Json) -> None:
        return None

    async def farewell(self) -> None:
        """Leave a clean state when the simulation stops (bounded by the caller)."""

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class MitraActor(Actor):
    """Online, heartbeat, accept offers; now and then silent (swept offline by the
    server), on a break (offline), or ending its session."""

    def __init__(self, world: World, user: ApiUser) -> None:
        super().__init__(world, user)
        self.sessions: dict[str, str] = {}  # open session id -> status
        self.interval = 20.0

    async def live(self) -> None:
        try:
            await self.user.call("POST", "/api/mitra/status/online")
            self.world.stats["mitra_online"] += 1
            await self.heartbeats()
        except ApiError as exc:
            if exc.code not in DEACTIVATED and exc.status != 401:
                raise
            self.world.stats["mitra_saw_deactivation"] += 1
            self.sessions.clear()
            await self.until_reactivated()

    async def heartbeats(self) -> None:
        world, behaviour = self.world, self.world.behaviour
        while not world.stopping.is_set():
            try:
                answer = await self.user.call("POST", "/api/mitra/status/heartbeat")
            except ApiError as exc:
                if exc.code == "not_online":  # swept while we were slow: go online again
                    world.stats["mitra_found_offline"] += 1
                    return
                raise
            world.stats["heartbeat"] += 1
            self.interval = float(answer.get("next_heartbeat_in_seconds", self.interval))
            if not self.user.socket_open:  # no event socket: ask for offers instead
                for offer in (await self.user.call("GET", "/api/mitra/offers"))["offers"]:
                    self.spawn(self.consider(offer))
            active = [s for s, status in self.sessions.items() if status == "active"]
            if active and world.chance(behaviour.mitra_end_probability, scaled=True):
                self.spawn(self.end(active[0]))
            if world.chance(behaviour.silence_probability, scaled=True):
                await self.silent()
                return
            if world.chance(behaviour.break_probability, scaled=True):
                await self.user.call("POST", "/api/mitra/status/offline")
                world.stats["mitra_break"] += 1
                await world.pause(behaviour.break_length)
                return
            await world.wait(self.interval * world.rng.uniform(0.7, 1.0))

    async def silent(self) -> None:
        """Stop heartbeating (a phone in a tunnel) until the server's sweep takes the
        mitra offline, as its status then says; back at `max_silence` at the latest."""
        world = self.world
        world.stats["mitra_silent"] += 1
        deadline = asyncio.get_running_loop().time() + world.behaviour.max_silence
        while asyncio.get_running_loop().time() < deadline:
            if not await world.wait(max(self.interval, 1.0)):
                return
            status = await self.user.call("GET", "/api/mitra/status")
            if not status["is_online"]:
                world.stats["mitra_swept_offline"] += 1
                await world.pause((2.0, 8.0))
                return

    async def until_reactivated(self) -> None:
        while await self.world.wait(3.0):
            try:
                await self.user.login()
                return
            except ApiError as exc:
                if exc.code not in DEACTIVATED:
                    raise

    async def on_event(self, event: Json) -> None:
        data = event.get("data") or {}
        if event.get("type") == "pairing.offer":
            self.world.stats["offer_received"] += 1
            self.spawn(self.consider(data))
        elif event.get("type") == "session.updated":
            session = data["session"]
            if session["status"] in CLOSED:
                self.sessions.pop(session["id"], None)
            else:
                self.sessions[session["id"]] = session["status"]
                if session["status"] == "active":
                    self.spawn(self.world.chat.converse(self.world, self.user, session))

    async def consider(self, offer: Json) -> None:
        world = self.world
        if not world.chance(world.behaviour.accept_probability):
            world.stats["offer_ignored"] += 1
            return
        if not await world.pause(world.behaviour.accept_delay):
            return
        try:
            answer = await self.user.call(
                "POST", f"/api/pairing/requests/{offer['request_id']}/accept"
            )
        except ApiError as exc:  # another mitra was faster, it expired, at capacity...
            world.stats[f"accept_{exc.code}"] += 1
            return
        except ServerGone:
            return
        world.stats["accepted"] += 1
        self.sessions[answer["session"]["id"]] = answer["session"]["status"]

    async def end(self, session_id: str) -> None:
        with contextlib.suppress(ApiError, ServerGone):
            await self.user.call("POST", f"/api/sessions/{session_id}/end")
            self.world.stats["ended_by_mitra"] += 1

    async def farewell(self) -> None:
        with contextlib.suppress(ApiError, ServerGone):
            await self.user.call("POST", "/api/mitra/status/offline")


class CustomerActor(Actor):
    """Looks at the beacon, asks for a mitra, pays (or not), extends, ends, reroutes,
    or lets the session run out."""

    def __init__(self, world: World, user: ApiUser) -> None:
        super().__init__(world, user)
        self.statuses: dict[str, str] = {}  # session id -> last status heard
        self.requests: dict[str, str] = {}  # pairing request id -> last status heard
        self.searching: str | None = None  # the open pairing request, withdrawn on stop
        self.changed = asyncio.Event()

    async def on_event(self, event: Json) -> None:
        data = event.get("data") or {}
        if event.get("type") == "session.updated":
            self.statuses[data["session"]["id"]] = data["session"]["status"]
        elif event.get("type") == "pairing.expired":
            self.requests[data["request_id"]] = "expired"
        self.changed.set()

    async def wait_change(self, seconds: float) -> bool:
        """Until an event arrives or `seconds` pass (then the caller asks over REST)."""
        self.changed.clear()
        waiter = asyncio.ensure_future(self.changed.wait())
        stopper = asyncio.ensure_future(self.world.stopping.wait())
        try:
            await asyncio.wait({waiter, stopper}, timeout=seconds, return_when="FIRST_COMPLETED")
        finally:
            waiter.cancel()
            stopper.cancel()
        return not self.world.stopping.is_set()

    async def live(self) -> None:
        world = self.world
        if not await world.pause(world.behaviour.think):
            return
        beacon = await self.user.call("GET", "/api/availability")
        if beacon["state"] != "available":
            world.stats[f"beacon_{beacon['state']}"] += 1
            return
        minutes = world.rng.choice(world.behaviour.durations)
        try:
            answer = await self.user.call(
                "POST", "/api/pairing/requests", {"duration_minutes": minutes}
            )
        except ApiError as exc:
            world.stats[f"request_{exc.code}"] += 1
            return
        world.stats["requested"] += 1
        session_id = await self.matched(answer["pairing_request"]["id"])
        while session_id is not None and not world.stopping.is_set():
            session_id = await self.follow(session_id)

    async def matched(self, request_id: str) -> str | None:
        """The session once a mitra accepted; None when the request expired (or on stop)."""
        self.searching = request_id
        while await self.wait_change(5.0):
            if self.requests.get(request_id) == "expired":
                break
            request = (await self.user.call("GET", f"/api/pairing/requests/{request_id}"))[
                "pairing_request"
            ]
            if request["status"] == "matched":
                self.searching = None
                return str(request["session_id"])
            if request["status"] != "searching":
                break
        else:
            return None  # stopping: the farewell withdraws it
        self.searching = None
        self.world.stats["request_expired"] += 1
        return None

    async def status(self, session_id: str) -> str:
        answer = await self.user.call("GET", f"/api/sessions/{session_id}")
        status = str(answer["session"]["status"])
        self.statuses[session_id] = status
        return status

    async def follow(self, session_id: str) -> str | None:
        """Pay for, use and close one session. A session id when it was rerouted and a
        new mitra accepted (follow that one too)."""
        world, behaviour = self.world, self.world.behaviour
        if not world.chance(behaviour.pay_probability):
            if world.chance(0.5):
                await self.user.call("POST", f"/api/sessions/{session_id}/end")
                world.stats["cancelled_unpaid"] += 1
            else:
                world.stats["left_unpaid"] += 1  # the payment timeout will cancel it
            return None
        if not await world.pause(behaviour.pay_delay):
            return None
        try:
            answer = await world.payments.paid(session_id, f"sim-{uuid.uuid4().hex}")
        except ApiError as exc:  # cancelled meanwhile (deactivation, the mitra ended it)
            world.stats[f"payment_{exc.code}"] += 1
            return None
        world.stats["paid"] += 1
        session = answer["session"]
        chat = asyncio.create_task(world.chat.converse(world, self.user, session))
        try:
            return await self.use(session_id)
        finally:
            chat.cancel()
            await asyncio.gather(chat, return_exceptions=True)

    async def use(self, session_id: str) -> str | None:
        world, behaviour = self.world, self.world.behaviour
        if world.chance(behaviour.extend_probability):
            if not await world.pause(behaviour.extend_after):
                return None
            if await self.status(session_id) == "active":
                try:
                    await self.user.call(
                        "POST", f"/api/sessions/{session_id}/extend", {"minutes": 1}
                    )
                    world.stats["extended"] += 1
                except ApiError as exc:
                    world.stats[f"extend_{exc.code}"] += 1
        if world.chance(behaviour.reroute_probability):
            if not await world.pause(behaviour.end_after):
                return None
            if await self.status(session_id) in CLOSED:
                return None
            try:
                answer = await self.user.call("POST", f"/api/sessions/{session_id}/reroute")
            except ApiError as exc:
                world.stats[f"reroute_{exc.code}"] += 1
                return None
            world.stats["rerouted"] += 1
            return await self.matched(answer["pairing_request"]["id"])
        if world.chance(behaviour.end_early_probability):
            if not await world.pause(behaviour.end_after):
                return None
            answer = await self.user.call("POST", f"/api/sessions/{session_id}/end")
            world.stats[f"closed_{answer['session']['status']}"] += 1
            return None
        # Let it run out: the server's timer expires it (session.updated, or a look).
        while await self.wait_change(10.0):
            status = self.statuses.get(session_id)
            if status not in CLOSED:
                status = await self.status(session_id)
            if status in CLOSED:
                world.stats[f"closed_{status}"] += 1
                return None
        return None

    async def farewell(self) -> None:
        if self.searching is not None:
            with contextlib.suppress(ApiError, ServerGone):
                await self.user.call("DELETE", f"/api/pairing/requests/{self.searching}")


class AdminActor(Actor):
    """Deactivates a simulated mitra now and then, and reactivates it a little later.
    Its open socket also makes the server sample the operator counts (console.md)."""

    def __init__(self, world: World, user: ApiUser, *, churn: bool) -> None:
        super().__init__(world, user)
        self.churn = churn
        self.deactivated: set[str] = set()

    async def set_active(self, mitra_id: str, active: bool) -> None:
        await self.user.call("PATCH", f"/api/admin/mitras/{mitra_id}", {"is_active": active})
        if active:
            self.deactivated.discard(mitra_id)
        else:
            self.deactivated.add(mitra_id)
        self.world.stats["reactivated" if active else "deactivated"] += 1

    async def live(self) -> None:
        world = self.world
        if not self.churn:
            await world.stopping.wait()
            return
        while await world.pause(world.behaviour.churn_every):
            candidates = [m for m in world.mitra_ids if m not in self.deactivated]
            if candidates:
                mitra_id = world.rng.choice(candidates)
                await self.set_active(mitra_id, False)
                self.spawn(self.reactivate_later(mitra_id))

    async def reactivate_later(self, mitra_id: str) -> None:
        if await self.world.pause(self.world.behaviour.deactivated_for):
            with contextlib.suppress(ApiError, ServerGone):
                await self.set_active(mitra_id, True)

    async def farewell(self) -> None:
        for mitra_id in sorted(self.deactivated):
            with contextlib.suppress(ApiError, ServerGone):
                await self.set_active(mitra_id, True)
