"""What every action, query and sweep needs, passed explicitly (no globals).

Plumbing only: settings, Postgres, the Valkey mirror and its key names, metrics, the
clock. The context imports no feature. A feature that keeps per-instance state of its own
(the event bus, the availability Lua scripts, the beacon's single flight) declares a
`Slot` for it and reads it with `ctx.get(slot)`: the state is built on first use from the
context, or provided by the runtime at startup (the timer table), one per context, so
several instances in one process (tests, benchmarks) never share it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from .clock import Clock
from .config import Settings
from .db import Database
from .metrics import Metrics
from .valkey.keys import Keys
from .valkey.mirror import Mirror

T = TypeVar("T")


class Slot(Generic[T]):
    """A feature's per-instance state in the context: `name` for messages; `build(ctx)`
    makes it on first use (None: the runtime must `provide` it)."""

    __slots__ = ("build", "name")

    def __init__(self, name: str, build: Callable[[Context], T] | None = None) -> None:
        self.name = name
        self.build = build

    def __repr__(self) -> str:
        return f"Slot({self.name!r})"


@dataclass
class Context:
    settings: Settings
    db: Database
    mirror: Mirror
    keys: Keys
    metrics: Metrics
    clock: Clock
    _state: dict[Slot[Any], Any] = field(default_factory=dict, repr=False)

    def get(self, slot: Slot[T]) -> T:
        """The slot's state in this context, built on first use. LookupError for a slot
        without `build` that the runtime has not provided."""
        try:
            return cast(T, self._state[slot])
        except KeyError:
            if slot.build is None:
                raise LookupError(f"{slot.name}: provided by the runtime at startup") from None
            value = self._state[slot] = slot.build(self)
            return value

    def provide(self, slot: Slot[T], value: T) -> None:
        """Set the slot's state (the runtime, at startup)."""
        self._state[slot] = value
