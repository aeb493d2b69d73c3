"""Who gets a pairing offer: a fair order over the available mitras. Pure, no I/O.

Least loaded first (fewest open sessions), then longest idle (the oldest of: its latest
session start or end, its latest offer; a mitra who never had either is the idlest of
all), and a random order among mitras equal on both. The Valkey path applies the same
order inside Valkey (`availability/ranked.py`); this one serves the Postgres fallback.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, datetime

from ..availability.ranked import Contender

__all__ = ["Contender", "fairness_key", "rank"]

_NEVER = datetime.min.replace(tzinfo=UTC)
_system_random = random.SystemRandom()


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
