"""Events and the availability mirror are separate failure domains: a failed PUBLISH never
distrusts the mirror (no reseed), a failed mirror operation never stops events, and each
failure is counted in its own domain's metric."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

from halobestie.events.bus import bus
from tests.conftest import Instance, eventually
from tests.failures import helpers
from tests.failures.helpers import metric_sum, valkey_errors
from tests.support.proxy import FaultProxy

# The shared fixtures (requested by their short names).
valkey_fault_app_fixture = helpers.valkey_fault_app_fixture
valkey_proxy_fixture = helpers.valkey_proxy_fixture


async def event_bus_errors(inst: Instance, operation: str) -> float:
    return await metric_sum(inst, "halobestie_event_bus_errors_total", operation=operation)


async def seeds(inst: Instance) -> float:
    return await metric_sum(inst, "halobestie_mirror_seeds_total")


async def test_a_failed_publish_leaves_the_mirror_trusted_and_forces_no_reseed(
    valkey_fault_app: Instance, valkey_proxy: FaultProxy
) -> None:
    inst = valkey_fault_app
    events = bus(inst.ctx)
    assert inst.ctx.mirror.trusted
    generation = inst.ctx.mirror.generation
    seeded, mirror_errors = await seeds(inst), await valkey_errors(inst)
    failed = await event_bus_errors(inst, "publish")

    await valkey_proxy.cut()
    await events.publish([uuid4()], "session.updated", {"n": 1})  # never raises
    assert await event_bus_errors(inst, "publish") == failed + 1
    assert not events.breaker.closed
    # The mirror heard nothing of it: still trusted, no reseed, no error of its own.
    assert inst.ctx.mirror.trusted and inst.ctx.mirror.reachable
    assert inst.ctx.mirror.generation == generation
    await asyncio.sleep(0.2)  # several probe intervals: a distrusted mirror would reseed
    assert await seeds(inst) == seeded
    assert await valkey_errors(inst) == mirror_errors

    await valkey_proxy.restore()

    # Half-open after a probe interval: the next publish goes out and closes the breaker.
    async def published() -> bool:
        await events.publish([uuid4()], "session.updated", {"n": 2})
        return events.breaker.closed

    await eventually(published)
    assert await seeds(inst) == seeded


async def test_a_failed_mirror_operation_never_stops_events(inst: Instance, valkey: Any) -> None:
    events = bus(inst.ctx)
    published = await event_bus_errors(inst, "publish_skipped")
    inst.ctx.mirror.fail("test", ConnectionError("as if a mirror read had failed"))
    assert not inst.ctx.mirror.trusted

    pubsub = valkey.pubsub()
    await pubsub.subscribe(inst.ctx.keys.events)
    try:
        await events.publish([uuid4()], "session.updated", {"n": 1})

        async def received() -> bool:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            return message is not None and "session.updated" in message["data"]

        await eventually(received)
    finally:
        await pubsub.aclose()
    assert events.breaker.closed
    assert await event_bus_errors(inst, "publish_skipped") == published
