"""The event bus: `publish(user_ids, type, data)` reaches those users' WebSockets on
whichever instance they are connected to.

Delivery: the publishing instance hands the event to its own sockets directly, then
PUBLISHes it on one Valkey channel with its instance id; every other instance's
subscriber delivers it to its sockets (and skips its own messages). So a Valkey outage
degrades delivery to "same instance only" instead of nothing; events are hints, and a
client that missed one fetches the state over REST.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Protocol
from uuid import UUID

from ..availability.keys import Keys
from ..availability.mirror import Mirror
from ..logs import get_logger

log = get_logger(__name__)


class Socket(Protocol):
    async def send_text(self, data: str) -> None: ...


class EventBus:
    def __init__(self, mirror: Mirror, keys: Keys) -> None:
        self.mirror = mirror
        self.keys = keys
        self.instance_id = uuid.uuid4().hex
        self._sockets: dict[str, set[Socket]] = defaultdict(set)

    # -- local sockets -----------------------------------------------------------

    def attach(self, user_id: UUID, socket: Socket) -> None:
        self._sockets[str(user_id)].add(socket)

    def detach(self, user_id: UUID, socket: Socket) -> None:
        sockets = self._sockets.get(str(user_id))
        if sockets is not None:
            sockets.discard(socket)
            if not sockets:
                del self._sockets[str(user_id)]

    def connected(self, user_id: UUID) -> int:
        return len(self._sockets.get(str(user_id), ()))

    async def deliver_local(self, user_ids: Iterable[str], text: str) -> int:
        """Send to this instance's sockets of these users; a dead socket is dropped."""
        targets = [(u, s) for u in user_ids for s in list(self._sockets.get(u, ()))]
        results = await asyncio.gather(
            *(s.send_text(text) for _, s in targets), return_exceptions=True
        )
        delivered = 0
        for (user, socket), result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                self.detach(UUID(user), socket)
            else:
                delivered += 1
        return delivered

    # -- publishing --------------------------------------------------------------

    async def publish(self, user_ids: Iterable[UUID], type_: str, data: dict[str, Any]) -> None:
        """Best effort, after commit: never raises, never blocks on a dead Valkey."""
        users = sorted({str(u) for u in user_ids})
        if not users:
            return
        text = json.dumps({"type": type_, "data": data}, default=str)
        try:
            await self.deliver_local(users, text)
        except Exception:  # a socket bug must not fail the request that published
            log.exception("event_local_delivery_failed", type=type_)
        envelope = json.dumps({"origin": self.instance_id, "users": users, "event": text})
        await self.mirror.write("publish_event", lambda c: c.publish(self.keys.events, envelope))
