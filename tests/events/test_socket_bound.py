"""WS_MAX_SOCKETS_PER_USER (events/local_sockets.py): one socket past the bound closes that
user's oldest socket on the instance with 1008 `too_many_sockets`, never the new one, and
never another user's."""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from halobestie.events.bus import bus
from halobestie.events.local_sockets import LocalSockets
from tests.conftest import eventually
from tests.events.live import LiveFactory, live_app_fixture, open_socket
from tests.factories import make_user

__all__ = ["live_app_fixture"]


async def closed_with(ws: ClientConnection, within: float = 10.0) -> tuple[int, str]:
    """(code, reason) of the server's close, which must come within `within` seconds."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), within)
    assert closed.value.rcvd is not None, "the server did not send a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def still_open(ws: ClientConnection) -> None:
    await ws.send('{"type": "ping"}')
    assert '"pong"' in await asyncio.wait_for(ws.recv(), 10)


async def test_the_socket_past_the_bound_closes_the_users_oldest_and_no_other(
    live_app: LiveFactory,
) -> None:
    async with live_app(WS_MAX_SOCKETS_PER_USER=2) as live:
        ana = await make_user(live.ctx, "customer")
        bob = await make_user(live.ctx, "customer")
        async with (
            open_socket(live, bob.token) as bob_1,
            open_socket(live, bob.token) as bob_2,
            open_socket(live, ana.token) as oldest,
            open_socket(live, ana.token) as middle,
        ):
            async with open_socket(live, ana.token) as newest:
                code, reason = await closed_with(oldest)
                assert code == 1008
                assert reason.startswith("too_many_sockets:"), reason
                for ws in (middle, newest, bob_1, bob_2):
                    await still_open(ws)
                await eventually(lambda: bus(live.ctx).connected(ana.user.id) == 2, within=10)
            # One closed by its client frees its place: another opens without evicting.
            await eventually(lambda: bus(live.ctx).connected(ana.user.id) == 1, within=10)
            async with open_socket(live, ana.token) as another:
                await still_open(middle)
                await still_open(another)


class _Socket:
    """A socket as the bus sees it, recording its end."""

    def __init__(self) -> None:
        self.login: UUID | None = uuid4()
        self.ended: list[str] = []

    async def send_text(self, data: str) -> None:
        pass

    def end(self, reason: str) -> None:
        self.ended.append(reason)


def test_an_oldest_socket_still_closing_is_not_ended_twice_and_the_next_oldest_goes() -> None:
    local = LocalSockets(max_per_user=2)
    user = uuid4()
    first, second, third, fourth = _Socket(), _Socket(), _Socket(), _Socket()
    for socket in (first, second, third):
        local.attach(user, socket)
    assert len(first.ended) == 1 and not second.ended
    local.attach(user, fourth)  # `first` has not detached yet: `second` goes too
    assert len(first.ended) == 1 and len(second.ended) == 1 and not third.ended
    local.detach(user, first)
    local.detach(user, second)
    assert local.connected(user) == 2 and not third.ended and not fourth.ended
