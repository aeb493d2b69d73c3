"""What the event bus sees of a WebSocket (api/ws.py implements them; events/stream.py
sequences recorded events for one): the bus depends on these shapes, never on the API."""

from __future__ import annotations

from typing import Protocol, runtime_checkable
from uuid import UUID


class Socket(Protocol):
    async def send_text(self, data: str) -> None: ...


@runtime_checkable
class Endable(Protocol):
    """A socket that belongs to one login (auth session) and can be ended: `end(reason)`
    makes its connection close with 1008 and that reason, soon after, never blocking."""

    login: UUID | None

    async def send_text(self, data: str) -> None: ...

    def end(self, reason: str) -> None: ...


@runtime_checkable
class Sequenced(Protocol):
    """A socket that receives recorded events by their `seq` (events/stream.py): `offer`
    never blocks (it may raise when the socket fell too far behind); `catch_up(last_seq)`
    says the user's log reached `last_seq`, so the socket reads what it lacks from
    Postgres."""

    async def send_text(self, data: str) -> None: ...

    def offer(self, seq: int, text: str) -> None: ...

    def catch_up(self, last_seq: int) -> None: ...
