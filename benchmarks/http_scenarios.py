"""Scenarios that chain HTTP requests (pairing) or need an exact request count
(statements per request), driven by the small keep-alive client in loadgen.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from .loadgen import HttpClient, percentile


async def pairing(
    base: str,
    customers: list[tuple[UUID, str]],
    mitra_tokens: Mapping[str, str],
    duration: float,
) -> dict[str, Any]:
    """Each customer loops: open a request -> the first offered mitra that can accepts
    -> the customer ends the session (so the mitra is free again). A round trip is
    open + accept; the end is in the loop too, so round trips/s is per full cycle."""
    deadline = time.perf_counter() + duration
    round_trips: list[float] = []
    opens: list[float] = []
    accepts: list[float] = []
    ends: list[float] = []
    problems: dict[str, int] = {}

    def problem(name: str) -> None:
        problems[name] = problems.get(name, 0) + 1

    async def customer_loop(token: str) -> None:
        client = HttpClient(base)
        auth = {"Authorization": f"Bearer {token}"}
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                status, body = await client.request(
                    "POST", "/api/pairing/requests", auth, {"duration_minutes": 30}
                )
                t1 = time.perf_counter()
                if status != 201:
                    problem(f"open {status} {body and body.get('error')}")
                    await asyncio.sleep(0.01)
                    continue
                request = body["pairing_request"]
                session = None
                for mitra_id in request["offered_to"]:
                    m_auth = {"Authorization": f"Bearer {mitra_tokens[mitra_id]}"}
                    status, body = await client.request(
                        "POST", f"/api/pairing/requests/{request['id']}/accept", m_auth
                    )
                    if status == 200:
                        session = body["session"]
                        break
                    problem(f"accept {status} {body and body.get('error')}")
                t2 = time.perf_counter()
                if session is None:
                    await client.request("DELETE", f"/api/pairing/requests/{request['id']}", auth)
                    continue
                opens.append(t1 - t0)
                accepts.append(t2 - t1)
                round_trips.append(t2 - t0)
                status, body = await client.request(
                    "POST", f"/api/sessions/{session['id']}/end", auth
                )
                ends.append(time.perf_counter() - t2)
                if status != 200:
                    problem(f"end {status} {body and body.get('error')}")
        finally:
            await client.close()

    started = time.perf_counter()
    await asyncio.gather(*(customer_loop(token) for _, token in customers))
    elapsed = time.perf_counter() - started

    def ms(values: list[float]) -> dict[str, float]:
        ordered = sorted(v * 1000 for v in values)
        return {"p50_ms": percentile(ordered, 50), "p99_ms": percentile(ordered, 99)}

    return {
        "round_trips": len(round_trips),
        "duration_s": elapsed,
        "round_trips_per_s": len(round_trips) / elapsed,
        "round_trip": ms(round_trips),
        "open": ms(opens),
        "accept": ms(accepts),
        "end": ms(ends),
        "problems": problems,
        "concurrency": len(customers),
    }


async def exact_requests(
    base: str, raw_requests: list[bytes], count: int, *, concurrency: int = 4
) -> dict[str, int]:
    """Send exactly `count` requests (cycling through `raw_requests`); status counts."""
    statuses: dict[str, int] = {}
    queue = iter(range(count))

    async def worker() -> None:
        client = HttpClient(base)
        try:
            for i in queue:
                status, _ = await client.send(raw_requests[i % len(raw_requests)])
                statuses[str(status)] = statuses.get(str(status), 0) + 1
        finally:
            await client.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses
