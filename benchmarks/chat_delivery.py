"""Chat delivery (issue 11 point 5): message send -> `message.created` on the other
party's socket, on one instance and through two, and a reconnect replaying missed events.

    .venv/bin/python -m benchmarks.chat_delivery [--quick] [--sessions 1,8]
    ./scripts/bench --chat [--quick]                       # the same

Two app processes served as `halobestie serve` serves them (uvicorn, one worker, sweeps
and timers off) on one embedded Postgres and Valkey (`infra.py`); active sessions made
through the API (`chat_sessions.py`). In every session both parties have their socket
open, as clients do; the customer sends through app A with a keep-alive connection, one
message after another (a closed loop on the HTTP answer, never on the delivery), and the
mitra's socket receives:

* `one`: the mitra's socket on app A too (delivery in-process);
* `two`: the mitra's socket on app B (delivery over Valkey pub/sub);

with 1 session (latency alone) and several at once (throughput). Latency is from the
send's first byte to the event's arrival at the receiving socket, per message; messages/s
is the messages delivered over the trial, first send to last arrival. Trials alternate
the two scenarios; figures are medians of trials. Each trial also reads the CPU time of
both apps, Postgres, Valkey and this client per message.

Replay: the mitra of one session reads its `last_seq` (the `ready` frame, SPEC §6) and
disconnects, the customer sends `--replay-events` messages (each one event for the mitra),
then the mitra reconnects with `/ws?since=<last_seq>`: time from the connect to the last
missed event, every seq checked to arrive once and in order; and the same events over
`GET /api/events?after=` pages of 500. Skipped, and said, when the tree has no `since`.

Results: benchmarks/results/chat-<timestamp>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from websockets.asyncio.client import ClientConnection, connect

from halobestie.migrate import run_migrations

from . import chat_report, profiling
from .chat_sessions import Pair, make_pairs
from .infra import (
    REPO,
    SRC,
    CpuMeter,
    Proc,
    Procs,
    Servers,
    app_env,
    load_average,
    start_servers,
)
from .loadgen import HttpClient, percentile
from .pgstats import StatementLog, logging_dsn

SCENARIOS = ("one", "two")
DRAIN_SECONDS = 15.0  # bound on waiting for the last deliveries of a trial


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def chat_env(servers: Servers, name: str, database_url: str | None = None) -> dict[str, str]:
    """An app's environment: the Valkey path, sweeps and timers off (`infra.app_env`), the
    tree this harness imports, access tokens that outlive the run (no socket is closed
    for an expired token mid-trial)."""
    env = app_env(servers, mirror=True, app_name=f"bench-chat-{name}", database_url=database_url)
    env["PYTHONPATH"] = str(SRC)
    env["ACCESS_TOKEN_TTL_SECONDS"] = str(2 * 3600)
    return env


def ws_url(proc: Proc, token: str, since: int | None = None) -> str:
    query = f"?token={token}" + ("" if since is None else f"&since={since}")
    return f"ws://127.0.0.1:{proc.port}/ws{query}"


async def open_socket(url: str) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(url, open_timeout=10, close_timeout=2, max_size=None)
    ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
    if ready.get("type") != "ready":
        await ws.close()
        raise RuntimeError(f"first frame is not ready: {ready}")
    return ws, ready


def send_request(pair: Pair, cid: str) -> bytes:
    body = {"client_message_id": cid, "body": f"benchmark message {cid}"}
    return HttpClient.build(
        "POST", f"/api/sessions/{pair.session_id}/messages", pair.customer.auth, body
    )


# -- delivery ----------------------------------------------------------------------------


async def _drain(ws: ClientConnection) -> None:
    """Reads and drops every frame (the sender's own echoes)."""
    async for _ in ws:
        pass


async def _receive(ws: ClientConnection, sent: dict[str, float], got: dict[str, float]) -> None:
    async for raw in ws:
        now = time.perf_counter()
        event = json.loads(raw)
        if event.get("type") == "message.created":
            cid = event["data"]["message"]["client_message_id"]
            if cid in sent and cid not in got:
                got[cid] = now


async def _sender(
    base: str, pair: Pair, prefix: str, deadline: float, sent: dict[str, float],
    http_s: list[float], errors: dict[str, int],
) -> None:  # fmt: skip
    client = HttpClient(base)
    k = 0
    try:
        while time.perf_counter() < deadline:
            cid = f"{prefix}-{k}"
            k += 1
            raw = send_request(pair, cid)
            started = time.perf_counter()
            sent[cid] = started
            status, _ = await client.send(raw)
            http_s.append(time.perf_counter() - started)
            if status != 201:
                errors[str(status)] = errors.get(str(status), 0) + 1
                sent.pop(cid, None)
    finally:
        await client.close()


class Meter:
    """CPU seconds of the apps, Postgres, Valkey and this client over a trial."""

    def __init__(self, cpu: CpuMeter, apps: dict[str, Proc]) -> None:
        self.cpu, self.apps = cpu, apps

    def snapshot(self) -> dict[str, float]:
        snap = self.cpu.snapshot(None)
        out = {group: sum(snap[group].values()) for group in ("postgres", "valkey")}
        for name, proc in self.apps.items():
            out[name] = sum(self.cpu._cpu([proc.pid]).values())
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out["client"] = usage.ru_utime + usage.ru_stime
        return out

    @staticmethod
    def per_message_us(
        before: dict[str, float], after: dict[str, float], messages: int
    ) -> dict[str, float]:
        return {k: round((after[k] - before[k]) / max(1, messages) * 1e6, 1) for k in after}


async def delivery_trial(
    apps: dict[str, Proc], meter: Meter, pairs: list[Pair], scenario: str, seconds: float,
    prefix: str,
) -> dict[str, Any]:  # fmt: skip
    """One trial: every pair's customer sends for `seconds`; the mitras' sockets receive."""
    sender_app, receiver_app = apps["a"], apps["a" if scenario == "one" else "b"]
    sent: dict[str, float] = {}
    got: dict[str, float] = {}
    http_s: list[float] = []
    errors: dict[str, int] = {}
    sockets: list[ClientConnection] = []
    readers: list[asyncio.Task[None]] = []
    try:
        for pair in pairs:
            mine, _ = await open_socket(ws_url(sender_app, pair.customer.token))
            theirs, _ = await open_socket(ws_url(receiver_app, pair.mitra.token))
            sockets += [mine, theirs]
            readers.append(asyncio.create_task(_drain(mine)))
            readers.append(asyncio.create_task(_receive(theirs, sent, got)))
        before = meter.snapshot()
        deadline = time.perf_counter() + seconds
        await asyncio.gather(
            *(
                _sender(sender_app.base, pair, f"{prefix}-{i}", deadline, sent, http_s, errors)
                for i, pair in enumerate(pairs)
            )
        )
        drain_until = time.perf_counter() + DRAIN_SECONDS
        while len(got) < len(sent) and time.perf_counter() < drain_until:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # after the sends: costs the measured path nothing
        after = meter.snapshot()
    finally:
        for task in readers:
            task.cancel()
        for ws in sockets:
            await ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
    latencies = sorted((got[cid] - sent[cid]) * 1000 for cid in got)
    http_ms = sorted(v * 1000 for v in http_s)
    span = (max(got.values()) - min(sent.values())) if got else float("nan")
    return {
        "scenario": scenario,
        "sessions": len(pairs),
        "sent": len(sent),
        "delivered": len(got),
        "lost": len(sent) - len(got),
        "errors": errors,
        "messages_per_s": len(got) / span if got else 0.0,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else float("nan"),
        "send_p50_ms": percentile(http_ms, 50),
        "send_p99_ms": percentile(http_ms, 99),
        "cpu_us_per_message": Meter.per_message_us(before, after, len(got)),
        "load_average": load_average()[0],
    }


def summarize(trials: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("messages_per_s", "p50_ms", "p99_ms", "send_p50_ms", "send_p99_ms")
    out: dict[str, Any] = {k: statistics.median(t[k] for t in trials) for k in keys}
    groups = trials[0]["cpu_us_per_message"]
    out["cpu_us_per_message"] = {
        g: statistics.median(t["cpu_us_per_message"][g] for t in trials) for g in groups
    }
    out["lost"] = sum(t["lost"] for t in trials)
    out["errors"] = sum(sum(t["errors"].values()) for t in trials)
    out["trials"] = trials
    return out


# -- replay ------------------------------------------------------------------------------


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


# -- the run -----------------------------------------------------------------------------


async def statements_per_send(
    servers: Servers, procs: Procs, pair: Pair, count: int = 50
) -> dict[str, Any]:
    """Postgres statements per message, counted from Postgres' log (`pgstats.py`): a
    third app whose connections log every statement holds both parties' sockets, and
    `count` sends go through it one after the other, each delivered before the window
    closes. Everything the app runs in the window counts (its socket re-check of logins,
    every WS_LOGIN_RECHECK_SECONDS, included)."""
    if servers.pg_log is None:
        return {"skipped": "needs the embedded Postgres' log file"}
    stmt_log = StatementLog(servers.pg_log, servers.database_url)
    await stmt_log.open()
    dsn = logging_dsn(servers.database_url, "bench-chat-counted")
    proc = procs.engine("chat-counted", chat_env(servers, "counted", dsn))
    sent: dict[str, float] = {}
    got: dict[str, float] = {}
    statuses: dict[str, int] = {}
    client = HttpClient(proc.base)
    mine, _ = await open_socket(ws_url(proc, pair.customer.token))
    theirs, _ = await open_socket(ws_url(proc, pair.mitra.token))
    readers = [asyncio.create_task(_drain(mine)), asyncio.create_task(_receive(theirs, sent, got))]
    try:
        await client.request("GET", "/healthz")

        async def sends() -> None:
            for k in range(count):
                cid = f"counted-{k}"
                sent[cid] = time.perf_counter()
                status, _ = await client.send(send_request(pair, cid))
                statuses[str(status)] = statuses.get(str(status), 0) + 1
            until = time.perf_counter() + DRAIN_SECONDS
            while len(got) < len(sent) and time.perf_counter() < until:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        counted = await stmt_log.during(sends)
    finally:
        for task in readers:
            task.cancel()
        await mine.close()
        await theirs.close()
        await asyncio.gather(*readers, return_exceptions=True)
        await client.close()
        procs.stop(proc)
        await stmt_log.close()
    kinds = {k: round(v / count, 2) for k, v in counted.kinds().items()}
    per_send = counted.count / count
    log(f"statements per send: {per_send:.2f} {statuses} {kinds}")
    return {
        "sends": count,
        "delivered": len(got),
        "statuses": statuses,
        "per_send": per_send,
        "kinds_per_send": kinds,
    }


async def profile_send(
    apps: dict[str, Proc], meter: Meter, pairs: list[Pair], seconds: float
) -> dict[str, Any]:
    """One more `one` trial with py-spy recording app A (raw stacks, 200 Hz): where the
    sending app's CPU goes. Written beside the results as collapsed stacks."""
    exe = profiling.py_spy()
    if exe is None:
        return {"skipped": "py-spy not installed (the bench extra)"}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    raw = REPO / "benchmarks" / "results" / f"chat-profile-send-{stamp}.txt"
    recording = profiling.Recording(exe, apps["a"].pid, raw, seconds, rate=200, fmt="raw")
    trial = await delivery_trial(apps, meter, pairs, "one", seconds, "profile")
    if await asyncio.to_thread(recording.wait) is None:
        return {"skipped": "py-spy failed"}
    summary = chat_report.profile_summary(raw, seconds, 200)
    summary.update(raw=raw.name, sessions=len(pairs), messages_per_s=trial["messages_per_s"])
    log(f"profile of app A: {summary}")
    return summary


async def main(
    sessions: list[int], trials: int, seconds: float, replay: int, profile: bool = False
) -> dict[str, Any]:
    out: dict[str, Any] = {"sessions": sessions, "trials": trials, "seconds": seconds}
    with tempfile.TemporaryDirectory(prefix="halobestie-chat-") as tmp_name:
        tmp = Path(tmp_name)
        servers = start_servers(tmp)
        procs = Procs(tmp)
        try:
            await asyncio.to_thread(run_migrations, servers.database_url)
            apps: dict[str, Proc] = {}
            for name in ("a", "b"):
                apps[name] = procs.engine(f"chat-{name}", chat_env(servers, name))
            log(f"apps up: a :{apps['a'].port}, b :{apps['b'].port}")
            pairs = await make_pairs(apps["a"].base, servers.database_url, max(sessions) + 1, "run")
            log(f"{len(pairs)} active sessions")
            meter = Meter(CpuMeter(servers), apps)
            out["delivery"] = {}
            for count in sessions:
                runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SCENARIOS}
                for trial in range(trials):
                    order = SCENARIOS if trial % 2 == 0 else SCENARIOS[::-1]
                    for scenario in order:
                        r = await delivery_trial(
                            apps, meter, pairs[:count], scenario, seconds,
                            f"d{count}-{trial}-{scenario}",
                        )  # fmt: skip
                        r["trial"] = trial
                        runs[scenario].append(r)
                        log(
                            f"{count} sessions, {scenario}: {r['messages_per_s']:7.0f} msg/s"
                            f"  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms"
                            f"  lost {r['lost']}  errors {r['errors']}"
                        )
                out["delivery"][str(count)] = {s: summarize(v) for s, v in runs.items()}
            out["statements"] = await statements_per_send(servers, procs, pairs[0])
            if profile:
                out["profile"] = await profile_send(apps, meter, pairs[: max(sessions)], seconds)
            if replay:
                replays = []
                for trial in range(trials):
                    found = await replay_trial(apps["a"], pairs[-1], replay, f"r-{trial}")
                    if found is None:
                        out["replay"] = {"skipped": "this tree's ready frame has no last_seq"}
                        log("replay skipped: no `since` in this tree (SPEC §6 not landed)")
                        break
                    replays.append(r := found)
                    log(
                        f"replay of {r['replayed']}: {r['to_last_ms']:.0f} ms"
                        f" (ready {r['to_ready_ms']:.1f} ms), REST {r['rest_ms']}"
                    )
                if replays:
                    rest = [r["rest_ms"] for r in replays if r["rest_ms"] is not None]
                    out["replay"] = {
                        "events": replay,
                        "to_last_ms": statistics.median(r["to_last_ms"] for r in replays),
                        "to_ready_ms": statistics.median(r["to_ready_ms"] for r in replays),
                        "events_per_s": statistics.median(r["events_per_s"] for r in replays),
                        "rest_ms": statistics.median(rest) if rest else None,
                        "trials": replays,
                    }
        finally:
            procs.stop_all()
            servers.stop()
    return out


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 trials of 2 s: the harness")
    parser.add_argument("--sessions", default="1,8", help="concurrent sessions (comma list)")
    parser.add_argument("--trials", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--replay-events", type=int, default=1000, help="0: no replay")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy app A in one more trial (raw stacks)"
    )
    args = parser.parse_args()
    trials, seconds = (2, 2.0) if args.quick else (5, 5.0)
    trials, seconds = args.trials or trials, args.seconds or seconds
    sessions = [int(s) for s in args.sessions.split(",") if s]
    started = time.perf_counter()
    load_before = load_average()
    out = asyncio.run(main(sessions, trials, seconds, args.replay_events, args.profile))
    out.update(chat_report.environment(SRC, load_before, time.perf_counter() - started))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = REPO / "benchmarks" / "results" / f"chat-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    markdown = chat_report.markdown(out, path.name)
    path.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"written: {path} and {path.with_suffix('.md').name}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
