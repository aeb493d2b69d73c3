"""This instance's WebSockets, per user: attach and detach them, count them, end them,
and hand them events. The event bus (bus.py) is built on it and adds what crosses
instances (pub/sub) and the catch-up from Postgres."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from uuid import UUID

from .sockets import Endable, Sequenced, Socket

# The close reason of a socket ended because its user opened one more than the bound.
TOO_MANY_SOCKETS = "too_many_sockets"


class LocalSockets:
    def __init__(self, max_per_user: int | None = None) -> None:
        """`max_per_user` (WS_MAX_SOCKETS_PER_USER; None: no bound): attaching one more
        ends that user's oldest socket on this instance (the bound is per instance)."""
        # Per user, the sockets in the order they were attached (a dict keeps it), so
        # the oldest is the first: finding it is O(1) per attach.
        self._sockets: dict[str, dict[Socket, None]] = defaultdict(dict)
        self.max_per_user = max_per_user
        # Sockets already ended for being the oldest, not yet detached by their task.
        self._evicted: set[Socket] = set()

    def attach(self, user_id: UUID, socket: Socket) -> None:
        sockets = self._sockets[str(user_id)]
        sockets[socket] = None
        if self.max_per_user is not None and len(sockets) > self.max_per_user:
            self._evict_oldest(sockets)

    def _evict_oldest(self, sockets: dict[Socket, None]) -> None:
        """End the oldest sockets not ended yet until at most `max_per_user` remain open.
        Ended ones stay listed until their task detaches them (a few ms): skipping them
        costs at most that many steps. A plain socket (no `end`) is only detached."""
        assert self.max_per_user is not None
        excess = len(sockets) - self.max_per_user
        plain: list[Socket] = []
        for socket in sockets:  # oldest first
            if excess <= 0:
                break
            excess -= 1
            if socket in self._evicted:
                continue
            if isinstance(socket, Endable):
                self._evicted.add(socket)
                socket.end(
                    f"{TOO_MANY_SOCKETS}: more than {self.max_per_user} open sockets for"
                    " this user; this, the oldest, was closed"
                )
            else:
                plain.append(socket)
        for socket in plain:
            del sockets[socket]

    def detach(self, user_id: UUID, socket: Socket) -> None:
        self._evicted.discard(socket)
        sockets = self._sockets.get(str(user_id))
        if sockets is not None:
            sockets.pop(socket, None)
            if not sockets:
                del self._sockets[str(user_id)]

    def connected(self, user_id: UUID) -> int:
        return len(self._sockets.get(str(user_id), ()))

    def open_logins(self) -> set[UUID]:
        """The logins (auth session ids) of this instance's open sockets."""
        return {
            s.login
            for sockets in self._sockets.values()
            for s in sockets
            if isinstance(s, Endable) and s.login is not None
        }

    def end_local(self, user_id: str, login: str | None, reason: str) -> int:
        """End this instance's sockets of `user_id` (only those of `login` when given);
        returns how many. Their connection tasks detach them as they close."""
        ended = 0
        for socket in list(self._sockets.get(user_id, ())):
            if not isinstance(socket, Endable):
                continue
            if login is None or str(socket.login) == login:
                socket.end(reason)
                ended += 1
        return ended

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

    async def deliver_local_frames(self, frames: Iterable[tuple[str, int, str]]) -> int:
        """Hand recorded events `(user, seq, frame)` to this instance's sockets of those
        users (each socket orders and dedupes them by seq); a socket that refuses (fell
        too far behind) is dropped. Returns how many sockets took one."""
        delivered = 0
        for user, seq, text in frames:
            for socket in list(self._sockets.get(user, ())):
                try:
                    if isinstance(socket, Sequenced):
                        socket.offer(seq, text)
                    else:  # a plain socket (tests, tools): in arrival order
                        await socket.send_text(text)
                except Exception:
                    self.detach(UUID(user), socket)
                else:
                    delivered += 1
        return delivered
