"""A reconnect replaying missed events (SPEC §6, issue 11 point 5): the mitra of a session
reads its `last_seq` from `ready` and disconnects, the customer sends N messages (each one
event for the mitra), the mitra reconnects with `/ws?since=<last_seq>`: time from the
connect to the last missed event, every seq checked to arrive once and in order; and the
same events paged over `GET /api/events?after=` (500 a page)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

from .chat_sessions import Pair, open_socket, send_request, ws_url
from .infra import Proc, load_average
from .loadgen import HttpClient


async def _send_many(base: str, pair: Pair, prefix: str, count: int, concurrency: int) -> None:
    queue = iter(range(count))

    async def worker() -> None:
        client = HttpClient(base)
        try:
            for k in queue:
                status, body = await client.send(send_request(pair, f"{prefix}-{k}"))
                if status != 201:
                    raise RuntimeError(f"send: {status} {body[:200]!r}")
        finally:
            await client.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _rest_catch_up(base: str, pair: Pair, since: int, last: int) -> float | None:
    """Seconds to page `GET /api/events?after=` from `since` to `last`; None without it."""
    client = HttpClient(base)
    try:
        started, after = time.perf_counter(), since
        while after < last:
            status, body = await client.request(
                "GET", f"/api/events?after={after}&limit=500", pair.mitra.auth
            )
            if status == 404:
                return None
            if status != 200 or not body["events"]:
                raise RuntimeError(f"GET /api/events: {status} {body}")
            after = body["events"][-1]["seq"]
        return time.perf_counter() - started
    finally:
        await client.close()


async def replay_trial(app: Proc, pair: Pair, events: int, prefix: str) -> dict[str, Any] | None:
    """None when this tree's `ready` has no `last_seq` (no `?since=`)."""
    ws, ready = await open_socket(ws_url(app, pair.mitra.token))
    await ws.close()
    since = ready["data"].get("last_seq")
    if since is None:
        return None
    await _send_many(app.base, pair, prefix, events, concurrency=8)
    started = time.perf_counter()
    ws, ready = await open_socket(ws_url(app, pair.mitra.token, since))
    ready_at = time.perf_counter()
    last = int(ready["data"]["last_seq"])
    seqs: list[int] = []
    try:
        while not seqs or seqs[-1] < last:
            event = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if "seq" in event:
                seqs.append(int(event["seq"]))
            elif event.get("type") == "resync_required":
                raise RuntimeError(f"resync_required after since={since}: {event}")
    finally:
        done = time.perf_counter()
        await ws.close()
    if seqs != list(range(since + 1, last + 1)):
        raise RuntimeError(f"replay not 1..n: since {since}, last {last}, got {len(seqs)}")
    rest = await _rest_catch_up(app.base, pair, since, last)
    return {
        "since": since,
        "replayed": len(seqs),
        "to_ready_ms": (ready_at - started) * 1000,
        "to_last_ms": (done - started) * 1000,
        "events_per_s": len(seqs) / (done - started),
        "rest_ms": None if rest is None else rest * 1000,
        "load_average": load_average()[0],
    }


async def replay_run(app: Proc, pair: Pair, events: int, trials: int) -> dict[str, Any]:
    """Medians of `trials` replays of `events`; {"skipped": why} without `since`."""
    replays = []
    for trial in range(trials):
        found = await replay_trial(app, pair, events, f"r-{trial}")
        if found is None:
            return {"skipped": "this tree's ready frame has no last_seq: SPEC §6 not landed"}
        replays.append(found)
        print(
            f"[{time.strftime('%H:%M:%S')}] replay of {found['replayed']}:"
            f" {found['to_last_ms']:.0f} ms (ready {found['to_ready_ms']:.1f} ms),"
            f" REST {found['rest_ms']}",
            flush=True,
        )
    rest = [r["rest_ms"] for r in replays if r["rest_ms"] is not None]
    return {
        "events": events,
        "to_last_ms": statistics.median(r["to_last_ms"] for r in replays),
        "to_ready_ms": statistics.median(r["to_ready_ms"] for r in replays),
        "events_per_s": statistics.median(r["events_per_s"] for r in replays),
        "rest_ms": statistics.median(rest) if rest else None,
        "trials": replays,
    }
