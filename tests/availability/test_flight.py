"""SingleFlight: concurrent callers share one run, whatever happens to any one caller."""

from __future__ import annotations

import asyncio
import gc

import pytest

from halobestie.availability.flight import SingleFlight


async def test_concurrent_callers_share_one_run_and_a_later_call_starts_another() -> None:
    flight: SingleFlight[int] = SingleFlight()
    runs = 0
    release = asyncio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await release.wait()
        return runs

    callers = [asyncio.ensure_future(flight.run(work)) for _ in range(20)]
    await asyncio.sleep(0)
    assert flight.in_flight
    release.set()
    assert await asyncio.gather(*callers) == [1] * 20
    assert not flight.in_flight
    assert await flight.run(work) == 2


async def test_a_cancelled_caller_does_not_cancel_the_run_for_the_others() -> None:
    flight: SingleFlight[str] = SingleFlight()
    release = asyncio.Event()

    async def work() -> str:
        await release.wait()
        return "done"

    leaver = asyncio.ensure_future(flight.run(work))
    stayer = asyncio.ensure_future(flight.run(work))
    await asyncio.sleep(0)
    leaver.cancel()
    await asyncio.sleep(0)
    release.set()
    assert await stayer == "done"
    assert leaver.cancelled()


async def test_a_failed_run_raises_in_every_caller_and_the_next_call_retries() -> None:
    flight: SingleFlight[str] = SingleFlight()
    attempts = 0

    async def work() -> str:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0)
        if attempts == 1:
            raise RuntimeError("boom")
        return "ok"

    results = await asyncio.gather(*(flight.run(work) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results), results
    assert await flight.run(work) == "ok"


async def test_a_failed_run_nobody_waits_for_is_retrieved() -> None:
    """Otherwise asyncio logs "Task exception was never retrieved" when it is collected."""
    flight: SingleFlight[str] = SingleFlight()
    reported: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))

    async def work() -> str:
        await asyncio.sleep(0)
        raise RuntimeError("nobody is listening")

    try:
        caller = asyncio.ensure_future(flight.run(work))
        await asyncio.sleep(0)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        for _ in range(5):
            await asyncio.sleep(0)
        assert not flight.in_flight
        del caller
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reported == []
