"""api/ws.py: a refused `since` says what a valid one is."""

from __future__ import annotations

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.events.live import LiveFactory, live_app_fixture, next_event
from tests.factories import make_user

__all__ = ["live_app_fixture"]


async def test_a_since_too_long_to_be_a_seq_is_refused_naming_the_bound(
    live_app: LiveFactory,
) -> None:
    async with live_app() as live:
        ana = await make_user(live.ctx, "customer")
        for bad in ("9" * 19, "-1"):
            url = live.ws_url(ana.token) + f"&since={bad}"
            async with connect(url, open_timeout=10) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await next_event(ws)
            frame = closed.value.rcvd
            assert frame is not None and frame.code == 1008, frame
            assert frame.reason.startswith("invalid_request: since"), frame.reason
            assert "18 digits" in frame.reason, frame.reason
