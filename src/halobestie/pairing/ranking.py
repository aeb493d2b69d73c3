"""Who gets a pairing offer: a fair order over the available mitras. Pure, no I/O.

Least loaded first (fewest open sessions), then longest idle (the oldest most recent
session start or end; a mitra who never had a session is the idlest of all), and a
random order among mitras equal on both.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

_NEVER = datetime.min.replace(tzinfo=UTC)
_system_random = random.SystemRandom()


@dataclass(frozen=True)
class Contender:
    mitra_id: str
    load: int  # open (pending_payment or active) sessions
    last_active_at: datetime | None  # most recent session start or end; None: never


def fairness_key(contender: Contender) -> tuple[int, bool, datetime]:
    """Sorts ascending: lower load, then never active, then idle for longer."""
    last = contender.last_active_at
    return contender.load, last is not None, last if last is not None else _NEVER


def rank(
    contenders: Iterable[Contender], limit: int, rng: random.Random | None = None
) -> list[str]:
    """The ids of at most `limit` contenders in offer order. The shuffle before a stable
    sort makes the order random among ties, and only among ties."""
    pool = list(contenders)
    (rng or _system_random).shuffle(pool)
    pool.sort(key=fairness_key)
    return [c.mitra_id for c in pool[: max(limit, 0)]]
