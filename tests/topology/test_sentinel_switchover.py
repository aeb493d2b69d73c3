"""A planned switchover (SENTINEL FAILOVER): the old primary stays up and keeps taking
writes until the Sentinels turn it into a replica, ~10 s later. The app's pools must not
wait for that: within a second or two they ask the Sentinels again, move to the new
primary, the mirror reseeds there before it is trusted, and the event subscriber that
was on the old primary is moved too (valkey/topology.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import valkey.asyncio as valkey_async

from halobestie.events.bus import EventBus
from halobestie.metrics import Metrics
from halobestie.valkey.keys import Keys
from halobestie.valkey.mirror import Mirror
from halobestie.valkey.topology import RECHECK_SECONDS, ValkeyEndpoint
from tests.conftest import eventually
from tests.topology.sentinel import MASTER, SentinelValkey, sentinel_valkey

pytestmark = [pytest.mark.topology, pytest.mark.timeout(60)]

PROBE_SECONDS = 0.2
# The pools' recheck, the watcher's probe and a seed, with slack for a loaded machine;
# well under the ~10 s the old primary keeps taking writes.
FOLLOW_BOUND = RECHECK_SECONDS + PROBE_SECONDS + 3.0


USER = uuid.uuid4()


class Inbox:
    def __init__(self) -> None:
        self.texts: list[str] = []

    async def send_text(self, data: str) -> None:
        self.texts.append(data)


def setting(key: str, value: str) -> Callable[[Any], Awaitable[Any]]:
    return lambda client: client.set(key, value)


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[SentinelValkey]:
    with sentinel_valkey(tmp_path / "valkey") as started:
        yield started


async def test_a_switchover_moves_the_mirror_and_the_subscriber_to_the_new_primary(
    topology: SentinelValkey,
) -> None:
    target = ValkeyEndpoint(
        topology.valkey_url, tuple(("127.0.0.1", port) for port in topology.sentinel_ports)
    )
    mirror = Mirror(target, Metrics(), operation_timeout=0.5, probe_interval=PROBE_SECONDS)
    seeded_on: list[int] = []

    async def seeder(reason: str) -> None:
        seeded_on.append(int((await mirror.client.info("server"))["tcp_port"]))

    mirror.set_seeder(seeder)
    a, b = (
        EventBus(Metrics(), Keys(""), target, publish_timeout=0.5, retry_after=0.2) for _ in "ab"
    )
    inbox = Inbox()
    b.attach(USER, inbox)
    b.start()
    old: Any = valkey_async.Valkey(port=topology.primary.port, decode_responses=True)
    new: Any = valkey_async.Valkey(port=topology.replica.port, decode_responses=True)
    sentinel: Any = valkey_async.Valkey(port=topology.sentinel_ports[0])
    try:
        assert await mirror.ensure_seeded("startup")
        mirror.start()
        assert seeded_on == [topology.primary.port]
        await eventually(lambda: b.subscribed)
        await sentinel.execute_command("SENTINEL", "FAILOVER", MASTER)
        switched = await topology.wait_promoted(within=15)

        # Writes through the pool and through the auto-pipeline, every 20 ms, until both
        # land on the new primary and the mirror is trusted again.
        n = 0
        while True:
            n += 1
            await mirror.write("probe", setting("pooled", str(n)))
            try:
                await mirror.batched.command("SET", "batched", str(n))
            except Exception:  # noqa: S110 - a batch on a connection being dropped
                pass
            on_new = await new.mget("pooled", "batched")
            if mirror.trusted and on_new == [str(n), str(n)]:
                break
            assert time.monotonic() - switched < FOLLOW_BOUND, (on_new, mirror.trusted)
            await asyncio.sleep(0.02)
        followed = time.monotonic() - switched

        assert seeded_on[-1] == topology.replica.port, seeded_on
        role = (await old.role())[0]
        assert role == "master", "the old primary was demoted before the pools moved"
        # The old primary still takes writes, but none of ours arrives there any more.
        before = await old.mget("pooled", "batched")
        await mirror.write("probe", setting("pooled", "after"))
        await mirror.batched.command("SET", "batched", "after")
        assert await new.mget("pooled", "batched") == ["after", "after"]
        assert await old.mget("pooled", "batched") == before

        # Events: b's subscriber was on the old primary; a publishes on the new one.
        n = 0
        while not any(text.endswith(f'"n": {n}}}}}') for text in inbox.texts):
            n += 1
            await a.publish([USER], "typing", {"n": n})
            assert time.monotonic() - switched < FOLLOW_BOUND, (inbox.texts[-3:], b.reconnects)
            await asyncio.sleep(0.05)
        crossed = time.monotonic() - switched
        print(
            f"\nmoved to the new primary and reseeded {followed:.2f}s after the switchover;"
            f" events cross again {crossed:.2f}s after it"
        )
    finally:
        await a.stop()
        await b.stop()
        await mirror.close()
        for client in (old, new, sentinel):
            await client.aclose()
