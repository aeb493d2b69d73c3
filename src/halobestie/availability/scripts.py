"""The availability engine's Lua scripts (`lua/*.lua`), registered once per context;
valkey-py reloads them after a NOSCRIPT (a Valkey restart), and the seed loads them all
so the first heartbeats after a restart do not come back NOSCRIPT."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..context import Context, Slot


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
    swap_in: Any

    @property
    def all(self) -> tuple[Any, ...]:
        """Every script (the seed loads them all after a Valkey restart)."""
        return (
            self.heartbeat,
            self.apply_mitra,
            self.merge_heartbeats,
            self.pick_offers,
            self.merge_ranked,
            self.swap_in,
        )

    @classmethod
    def register(cls, ctx: Context) -> Scripts:
        client = ctx.mirror.client
        return cls(
            heartbeat=client.register_script(_lua("heartbeat")),
            apply_mitra=client.register_script(_lua("apply_mitra")),
            merge_heartbeats=client.register_script(_lua("merge_heartbeats")),
            pick_offers=client.register_script(_lua("pick_offers")),
            merge_ranked=client.register_script(_lua("merge_ranked")),
            swap_in=client.register_script(_lua("swap_in")),
        )


SCRIPTS: Slot[Scripts] = Slot("availability scripts", Scripts.register)


def scripts(ctx: Context) -> Scripts:
    """This context's registered scripts."""
    return ctx.get(SCRIPTS)
