"""This instance's WebSockets, per user: attach and detach them, count them, end them,
and hand them events. The event bus (bus.py) is built on it and adds what crosses
instances (pub/sub) and the catch-up from Postgres."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from uuid import UUID

from .sockets import Endable, Sequenced, Socket


class LocalSockets:
    def __init__(self) -> None:
        self._sockets: dict[str, set[Socket]] = defaultdict(set)

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
