"""`admin.counts` over /ws: pushed to this instance's admin sockets on change, to nobody
else, and only while an admin watches."""

from __future__ import annotations

import asyncio

from halobestie.console.feed import AdminFeed
from tests.conftest import eventually
from tests.events.live import LiveFactory, next_event_of, nothing_pending, open_socket
from tests.factories import make_user


async def test_admins_get_the_counts_on_change_and_nobody_else_does(
    live_app: LiveFactory,
) -> None:
    async with live_app() as live:
        admin = await make_user(live.ctx, "admin")
        mitra = await make_user(live.ctx, "mitra")
        customer = await make_user(live.ctx, "customer")
        async with (
            open_socket(live, admin.token) as admin_ws,
            open_socket(live, customer.token) as customer_ws,
        ):
            first = await next_event_of(admin_ws, "admin.counts")
            assert first["data"]["mitras"]["online"] == 0
            assert first["data"]["health"]["fallback"] is False
            r = await live.client.post("/api/mitra/status/online", headers=mitra.headers)
            assert r.status_code == 200, r.text
            while True:  # the next pushes: the change shows within a tick or two
                event = await next_event_of(admin_ws, "admin.counts", within=5)
                if event["data"]["mitras"]["online"] == 1:
                    break
            assert event["data"]["mitras"]["available"] == 1
            assert await nothing_pending(customer_ws)  # not for customers
            r = await live.client.get("/api/admin/overview", headers=admin.headers)
            history = r.json()["history"]
            assert history and history[-1]["online"] == 1  # the chart's samples


async def test_the_feed_runs_only_while_an_admin_watches(live_app: LiveFactory) -> None:
    async with live_app() as live:
        feed: AdminFeed = live.app.state.admin_feed
        admin = await make_user(live.ctx, "admin")
        mitra = await make_user(live.ctx, "mitra")
        async with open_socket(live, mitra.token):
            await asyncio.sleep(0.2)
            assert not feed.watchers and feed._task is None  # a mitra starts nothing
        async with open_socket(live, admin.token) as one, open_socket(live, admin.token) as two:
            for ws in (one, two):  # every socket of the admin gets it
                await next_event_of(ws, "admin.counts")
            assert feed.watchers[str(admin.id)] == 2
        await eventually(lambda: not feed.watchers and feed._task is not None and feed._task.done())
