"""What the simulated people share: how they behave (`Behaviour`, ranges in seconds at
rate 1), the `World` (the rate, the dice, the stop signal, the tallies) and what the two
parties of an active session say to each other (`ChatHook`, `DemoChat`). The people
themselves are in `actors.py`.

A pause is drawn from its range and divided by the rate (`World.pause`); a per-heartbeat
chance is multiplied by it (`World.chance(..., scaled=True)`).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from .client import ApiError, ApiUser, Json, PaymentProvider

Range = tuple[float, float]


@dataclass(frozen=True)
class Behaviour:
    """How the simulated people behave. Ranges are seconds at rate 1."""

    think: Range = (3.0, 12.0)  # a customer between two visits
    durations: tuple[int, ...] = (1, 2)  # minutes booked
    accept_probability: float = 0.85  # an offer is accepted (else ignored: it expires)
    accept_delay: Range = (0.5, 4.0)
    pay_probability: float = 0.85  # else left unpaid (payment timeout) or cancelled
    pay_delay: Range = (1.0, 5.0)
    extend_probability: float = 0.35
    extend_after: Range = (5.0, 20.0)
    end_early_probability: float = 0.5  # else the session runs until it expires
    end_after: Range = (10.0, 45.0)
    reroute_probability: float = 0.05
    silence_probability: float = 0.03  # per heartbeat: stop heartbeating, get swept
    break_probability: float = 0.02  # per heartbeat: go offline for a while
    break_length: Range = (10.0, 40.0)
    mitra_end_probability: float = 0.03  # per heartbeat, while in an active session
    max_silence: float = 300.0  # a silent mitra comes back after this at the latest
    churn_every: Range = (20.0, 60.0)  # the admin deactivates a mitra
    deactivated_for: Range = (10.0, 30.0)
    chat_every: Range = (3.0, 9.0)  # between two messages of one party (DemoChat)


class ChatHook(Protocol):
    """Called when a session becomes active, by each party's actor, as a task it cancels
    when the session closes."""

    async def converse(self, world: World, user: ApiUser, session: Json) -> None: ...


class NoChat:
    async def converse(self, world: World, user: ApiUser, session: Json) -> None:
        return None


LINES = (
    "Hi, thanks for taking this.",
    "I have had a long week.",
    "That sounds hard. What happened?",
    "Work, mostly. And I have not slept well.",
    "It makes sense you feel worn out.",
    "Talking helps, thank you.",
)


class DemoChat:
    """Both parties talk while the session is active (SPEC §5): a message every
    `Behaviour.chat_every` seconds (at rate 1) through `POST /api/sessions/{id}/messages`,
    each with its own `client_message_id`, then read up to it. Stops at the first refusal
    (the session closed) or when the actor cancels it."""

    def __init__(self, at_most: int = 12) -> None:
        self.at_most = at_most

    async def converse(self, world: World, user: ApiUser, session: Json) -> None:
        path = f"/api/sessions/{session['id']}"
        for _ in range(self.at_most):
            if not await world.pause(world.behaviour.chat_every):
                return
            body = {"client_message_id": uuid.uuid4().hex, "body": world.rng.choice(LINES)}
            try:
                sent = await user.call("POST", f"{path}/messages", body)
                await user.call("POST", f"{path}/read", {"seq": sent["message"]["seq"]})
            except ApiError:
                world.stats["chat_refused"] += 1  # closed meanwhile: the talk is over
                return
            world.stats["messages_sent"] += 1


@dataclass
class World:
    """What every actor shares: the rate, the dice, the stop signal, the tallies."""

    behaviour: Behaviour
    rate: float
    rng: random.Random
    payments: PaymentProvider
    chat: ChatHook = field(default_factory=NoChat)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    stats: Counter[str] = field(default_factory=Counter)
    mitra_ids: list[str] = field(default_factory=list)

    async def wait(self, seconds: float) -> bool:
        """Sleep `seconds` (real seconds, not scaled); False when the simulation stops."""
        if self.stopping.is_set():
            return False
        try:
            async with asyncio.timeout(max(seconds, 0.0)):
                await self.stopping.wait()
        except TimeoutError:
            return True
        return False

    async def pause(self, span: Range) -> bool:
        """A pause drawn from `span` (seconds at rate 1) divided by the rate."""
        return await self.wait(self.rng.uniform(*span) / self.rate)

    def chance(self, probability: float, *, scaled: bool = False) -> bool:
        return self.rng.random() < min(1.0, probability * (self.rate if scaled else 1.0))
