"""What every action, query and sweep needs, passed explicitly (no globals)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

from .availability.flight import BeaconLocal
from .clock import Clock
from .config import Settings
from .db import Database
from .events.bus import EventBus
from .metrics import Metrics
from .valkey.keys import Keys
from .valkey.mirror import Mirror


def _lua(name: str) -> str:
    return resources.files("halobestie.availability").joinpath(f"lua/{name}.lua").read_text()


@dataclass
class Scripts:
    """Lua scripts, registered once; valkey-py reloads them after a NOSCRIPT (restart)."""

    heartbeat: Any
    apply_mitra: Any
    merge_heartbeats: Any
    pick_offers: Any
    merge_ranked: Any

    @property
    def all(self) -> tuple[Any, ...]:
        """Every script (the seed loads them all after a Valkey restart)."""
        return (
            self.heartbeat,
            self.apply_mitra,
            self.merge_heartbeats,
            self.pick_offers,
            self.merge_ranked,
        )

    @classmethod
    def register(cls, mirror: Mirror) -> Scripts:
        client = mirror.client
        return cls(
            heartbeat=client.register_script(_lua("heartbeat")),
            apply_mitra=client.register_script(_lua("apply_mitra")),
            merge_heartbeats=client.register_script(_lua("merge_heartbeats")),
            pick_offers=client.register_script(_lua("pick_offers")),
            merge_ranked=client.register_script(_lua("merge_ranked")),
        )


@dataclass
class Context:
    settings: Settings
    db: Database
    mirror: Mirror
    keys: Keys
    metrics: Metrics
    clock: Clock
    scripts: Scripts
    events: EventBus
    # In-process cache of the beacon while Valkey is down: protects Postgres from one
    # aggregate per customer poll during an outage. (expires at, snapshot)
    fallback_beacon: tuple[datetime, dict[str, Any]] | None = field(default=None)
    fallback_beacon_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The beacon's single flight on a snapshot miss, and its lease sizing (beacon.py).
    beacon_local: BeaconLocal = field(default_factory=BeaconLocal)
