"""Postgres statements counted from Postgres' own log (pgstats.py) for the run
(run.py): per heartbeat and per beacon, per pairing open, per sweep cycle. Each count runs
on processes (or a harness) of its own, whose connections log every statement, so the
measured load runs without that logging's cost."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from halobestie.availability.sweeps import run_auto_offline, run_heartbeat_writeback

from . import http_scenarios, inproc, loadgen, pairing_costs
from .infra import Procs, Servers, app_env
from .pairing_scale import Customers
from .pgstats import StatementLog, logging_dsn

Log = Callable[[str], None]


async def per_request(
    servers: Servers, procs: Procs, tokens_file: Path, n: int, log: Log
) -> dict[str, Any]:
    """Statements per heartbeat and per beacon (`n` of each; `tokens_file`: the mitras'),
    counted on dedicated app processes whose connections log every statement."""
    if servers.pg_log is None:
        return {"method": "unavailable: needs the embedded Postgres' log file"}
    stmt_log = StatementLog(servers.pg_log, servers.database_url)
    await stmt_log.open()
    out: dict[str, Any] = {
        "method": "Postgres server log: the measured app's connections run with"
        " log_statement=all (session setting from the DSN); statements between two"
        " marker statements are counted"
    }
    hb_requests = loadgen.requests_from_tokens("POST", "/api/mitra/status/heartbeat", tokens_file)
    first_token = tokens_file.read_text().split("\n", 1)[0].split()[1]  # noqa: ASYNC240
    status_req = [
        loadgen.HttpClient.build(
            "GET", "/api/mitra/status", {"Authorization": f"Bearer {first_token}"}
        )
    ]
    beacon_req = [loadgen.HttpClient.build("GET", "/api/availability")]
    try:
        for mode, mirror in (("valkey", True), ("postgres", False)):
            name = f"bench-count-{mode}"
            env = app_env(
                servers,
                mirror=mirror,
                app_name=name,
                database_url=logging_dsn(servers.database_url, name),
            )
            proc = procs.engine(f"count-{mode}", env)
            try:
                # Positive control: the measurement sees this process's statements.
                async def status_reads(p: Any = proc) -> None:
                    await http_scenarios.exact_requests(p.base, status_req, 10)

                control = await stmt_log.during(status_reads)
                statuses: dict[str, Any] = {}

                async def heartbeats(p: Any = proc, st: dict[str, Any] = statuses) -> None:
                    st["heartbeat"] = await http_scenarios.exact_requests(p.base, hb_requests, n)

                async def beacons(p: Any = proc, st: dict[str, Any] = statuses) -> None:
                    st["beacon"] = await http_scenarios.exact_requests(p.base, beacon_req, n)

                hb = await stmt_log.during(heartbeats)
                bc = await stmt_log.during(beacons)
                out[mode] = {
                    "requests": n,
                    "positive_control_status_x10": control.count,
                    "heartbeat_statements": hb.count,
                    "heartbeat_per_request": hb.count / n,
                    "heartbeat_kinds": hb.kinds(),
                    "beacon_statements": bc.count,
                    "beacon_per_request": bc.count / n,
                    "beacon_kinds": bc.kinds(),
                    "statuses": statuses,
                }
                log(
                    f"  {mode}: {hb.count} statements for {n} heartbeats, {bc.count} for"
                    f" {n} beacons (control: {control.count} for 10 status reads)"
                )
            finally:
                procs.stop(proc)
    finally:
        await stmt_log.close()
    return out


async def per_open(
    servers: Servers, procs: Procs, customers: Customers, opens: int, log: Log
) -> dict[str, Any]:
    """Postgres statements per open request, both paths, from Postgres' log: `opens`
    requests of `customers` against an app process of each path."""
    if servers.pg_log is None:
        return {"method": "unavailable: needs the embedded Postgres' log file"}
    stmt_log = StatementLog(servers.pg_log, servers.database_url)
    await stmt_log.open()

    async def start(mode: str) -> Any:
        name = f"bench-count-open-{mode}"
        env = app_env(
            servers,
            mirror=mode == "valkey",
            app_name=name,
            database_url=logging_dsn(servers.database_url, name),
        )
        return procs.engine(f"count-open-{mode}", env)

    try:
        counts = await pairing_costs.statements_per_open(
            stmt_log,
            start,
            procs.stop,
            ["valkey", "postgres"],
            customers,
            opens,
        )
    finally:
        await stmt_log.close()
    for mode, c in counts.items():
        log(
            f"  {mode}: {c['statements']} statements for {c['opens']} opens {c['statuses']}"
            + (" (started degraded)" if c["started_degraded"] else "")
            + f", waited {c['waited_for_trusted_mirror_s']} s for a trusted mirror"
        )
    return counts


async def per_sweep(servers: Servers) -> dict[str, Any]:
    """Statements of one heartbeat write-back and one auto-offline cycle (1% of the online
    mitras made stale, then brought back), on a harness whose connection logs them."""
    if servers.pg_log is None:
        return {"method": "unavailable: needs the embedded Postgres' log file"}
    stmt_log = StatementLog(servers.pg_log, servers.database_url)
    await stmt_log.open()
    counting = inproc.Harness(
        logging_dsn(servers.database_url, "bench-count-sweeps"),
        servers.valkey_url,
        "bench-count-sweeps",
    )
    try:
        await counting.open()
        ids = await inproc.online_ids(counting)
        await inproc.touch_all_heartbeats(counting, ids, inproc.now())
        result: dict[str, Any] = {}

        async def writeback() -> None:
            result["writeback"] = await run_heartbeat_writeback(counting.ctx, inproc.now())

        wb = await stmt_log.during(writeback)
        async with counting.ctx.db.connection() as c:
            busy = {
                str(r[0])
                for r in await c.fetch(
                    "SELECT mitra_id FROM chat_sessions"
                    " WHERE status IN ('active', 'pending_payment')"
                )
            }
        chosen = [i for i in ids if i not in busy][-max(1, len(ids) // 100) :]
        await inproc.make_stale(counting, chosen, inproc.now() - timedelta(hours=2))

        async def auto_offline() -> None:
            result["auto_offline"] = await run_auto_offline(counting.ctx, inproc.now())

        ao = await stmt_log.during(auto_offline)
        await inproc.bring_back_online(counting, chosen, inproc.now())
        updates = sum(1 for s in wb.statements if s.lstrip().upper().startswith("UPDATE"))
        return {
            "writeback_statements": wb.count,
            "writeback_update_statements": updates,
            "writeback_rows": result["writeback"].affected,
            "writeback_kinds": wb.kinds(),
            "auto_offline_statements": ao.count,
            "auto_offline_offlined": result["auto_offline"].affected,
            "auto_offline_kinds": ao.kinds(),
        }
    finally:
        await counting.close()
        await stmt_log.close()
