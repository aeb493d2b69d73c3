"""halobestie benchmarks: is the hot path off Postgres, and fast? (issue 4)

One command: `./scripts/bench [--quick]` (or `.venv/bin/python -m benchmarks.run`).

Starts its own Postgres and Valkey (embedded; or BENCH_DATABASE_URL / BENCH_VALKEY_URL,
whose data is wiped), seeds 1k, 10k and 100k online mitras in turn and measures, side by
side in the same run:

* the load generator's ceiling (wrk against a framework-less responder and a plain
  Starlette route), then the heartbeat: the bare Starlette + one Valkey command floor,
  the real app (Valkey path), the real app with VALKEY_MIRROR_ENABLED=false (the design
  before the mirror), interleaved trial by trial;
* Postgres statements per heartbeat and per cached beacon, counted from Postgres' log;
* the beacon: HTTP (cached snapshot), and in-process its three paths (cached, computed
  from Valkey, Postgres fallback) at each size;
* find-available, Valkey against Postgres, at each size;
* at 100k online: the auto-offline sweep, the heartbeat write-back (duration and
  statements per cycle), the full reseed; Valkey memory per online mitra;
* pairing at each size, every mitra with 20 closed sessions of history, Valkey path
  against Postgres-only path, interleaved (`pairing_scale.py`): open latency, opens per
  second and request -> accept -> end round trips per second with 32 customers, a burst
  of 50 simultaneous opens; Postgres statements per open at the smallest and largest size.

Writes benchmarks/results/<timestamp>.json, <timestamp>.md and <timestamp>/*.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import asyncpg

from . import report, report_plots
from .infra import REPO, Procs, Servers, cpu_model, load_average, start_servers
from .plan import Plan
from .stages import Bench, log

RESULTS = REPO / "benchmarks" / "results"


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],  # noqa: S607
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return rev + ("+dirty(src)" if dirty else "")
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short trials (about 2 minutes)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also record py-spy flamegraphs (heartbeat app processes, find-available at 10k)",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)"
    )
    args = parser.parse_args(argv)
    plan = Plan.make(args.quick, args.profile)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if plan.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    meta: dict[str, Any] = {
        "timestamp": stamp,
        "command": "./scripts/bench" + (" --quick" if plan.quick else ""),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_start": [round(v, 2) for v in load_average()],
        },
        "revision": git_revision(),
        "plan": {**plan.__dict__, "pairing": asdict(plan.pairing)},
    }
    log(
        f"halobestie benchmarks ({'quick' if plan.quick else 'full'});"
        f" load average {meta['machine']['load_average_start']}"
    )
    with tempfile.TemporaryDirectory(prefix="halobestie-bench-") as tmp_name:
        tmp = Path(tmp_name)
        log("starting Postgres and Valkey")
        servers = start_servers(tmp)
        procs = Procs(tmp)
        try:
            bench = Bench(plan, servers, procs, tmp, args.out / stamp)
            results = asyncio.run(bench.run())
            meta["versions"] = asyncio.run(_server_versions(servers))
        finally:
            procs.stop_all()
            servers.stop()
    meta["machine"]["load_average_end"] = [round(v, 2) for v in load_average()]
    meta["duration_s"] = round(time.perf_counter() - started, 1)
    results = {"meta": meta, **results}
    results["targets"] = report.targets(results)
    json_path = args.out / f"{stamp}.json"
    json_path.write_text(json.dumps(results, indent=2, default=str))
    plots = report_plots.plots(results, args.out / stamp)
    md_path = args.out / f"{stamp}.md"
    md_path.write_text(report.markdown(results, plots, md_path.parent))
    log(f"done in {meta['duration_s']:.0f} s: {json_path}")
    print()
    print(md_path.read_text())
    return 0


async def _server_versions(servers: Servers) -> dict[str, str]:
    import valkey.asyncio as valkey_async

    conn = await asyncpg.connect(servers.database_url)
    try:
        pg = await conn.fetchval("SHOW server_version")
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in ("fsync", "synchronous_commit", "shared_buffers", "max_connections")
        }
    finally:
        await conn.close()
    client = valkey_async.Valkey.from_url(servers.valkey_url, decode_responses=True)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    return {
        "postgres": str(pg),
        "postgres_settings": ", ".join(f"{k}={v}" for k, v in settings.items()),
        "valkey": str(info.get("valkey_version") or info.get("redis_version")),
    }


if __name__ == "__main__":
    sys.exit(main())
