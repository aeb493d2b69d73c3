"""A burst of concurrent wrong-password logins against one app process, while a customer
polls the beacon every 50 ms (docs/subsystems/auth.md, "Login throttle").

    .venv/bin/python -m benchmarks.login_burst [--logins 150] [--base-src /tmp/base/src]

Prints, per tree: when the last login was answered, each status's count and latencies,
and the beacon's latencies during the burst. `--base-src`: also run the `src` of another
tree first (e.g. `git archive <commit> src | tar -x -C /tmp/base`), for a before/after.
The burst's 150 logins share one client, so the client's own cost stays small.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import httpx

from halobestie.migrate import run_migrations

from .infra import Procs, app_env, load_average, start_servers


def _ms(values: list[float]) -> str:
    values = sorted(values)
    return f"p50 {statistics.median(values):.0f} ms, max {values[-1]:.0f} ms"


async def burst(base: str, logins: int) -> str:
    email = f"burst{time.time_ns()}@example.com"
    limits = httpx.Limits(max_connections=logins + 10)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        body = {"email": email, "password": "the right passphrase", "display_name": "B"}
        r = await client.post("/api/auth/register", json=body)
        r.raise_for_status()
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        beacon: list[float] = []
        stop = asyncio.Event()

        async def poll() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=120) as own:
                while not stop.is_set():
                    start = time.perf_counter()
                    await own.get("/api/availability", headers=headers)
                    beacon.append((time.perf_counter() - start) * 1000)
                    await asyncio.sleep(0.05)

        async def wrong() -> tuple[str, float]:
            start = time.perf_counter()
            r = await client.post("/api/auth/login", json={"email": email, "password": "wrong"})
            return f"{r.status_code} {r.json()['error']}", (time.perf_counter() - start) * 1000

        poller = asyncio.create_task(poll())
        await asyncio.sleep(0.5)
        start = time.perf_counter()
        answers = await asyncio.gather(*(wrong() for _ in range(logins)))
        total = time.perf_counter() - start
        stop.set()
        await poller
    statuses = "; ".join(
        f"{status}: {len(ms)} ({_ms(ms)})"
        for status in sorted({s for s, _ in answers})
        for ms in [[t for s, t in answers if s == status]]
    )
    return (
        f"{logins} logins answered within {total:.2f} s; {statuses};"
        f" beacon during: {len(beacon)} polls, {_ms(beacon)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=150)
    parser.add_argument("--base-src", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="login-burst-") as tmp:
        servers = start_servers(Path(tmp))
        procs = Procs(Path(tmp))
        try:
            run_migrations(servers.database_url)
            trees = [("base", args.base_src)] if args.base_src else []
            for name, src in [*trees, ("this tree", None)]:
                env = app_env(servers, mirror=True, app_name=name)
                if src is not None:
                    env["PYTHONPATH"] = str(src.resolve())
                proc = procs.engine(name.replace(" ", "-"), env)
                try:
                    load = load_average()[0]
                    print(
                        f"{name} (load average {load:.1f}):",
                        asyncio.run(burst(proc.base, args.logins)),
                    )
                finally:
                    procs.stop(proc)
        finally:
            procs.stop_all()
            servers.stop()


if __name__ == "__main__":
    main()
