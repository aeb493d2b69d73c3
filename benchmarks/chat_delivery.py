"""Chat delivery (issue 11 point 5): message send -> `message.created` on the other
party's socket, on one instance and through two, and a reconnect replaying missed events.

    .venv/bin/python -m benchmarks.chat_delivery [--quick] [--sessions 1,8] [--profile]
        [--base-src /path/to/other/src]
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

With `--base-src`, another tree's two apps (on a Valkey of their own) take their turns
in the same trials: the cost of a change to the send path, side by side (`base_one`,
`base_two`). Postgres statements per message are counted from Postgres' log
(`chat_costs.py`); `--profile` samples app A with py-spy during one more trial.

Replay (`chat_replay.py`, this tree only): the mitra of one session reads its `last_seq`
(the `ready` frame, SPEC §6) and disconnects, the customer sends `--replay-events`
messages (each one event for the mitra), then the mitra reconnects with
`/ws?since=<last_seq>`: time from the connect to the last missed event, every seq checked
to arrive once and in order; and the same events over `GET /api/events?after=` pages of
500. Skipped, and said, when the tree has no `since`.

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

from websockets.asyncio.client import ClientConnection

from halobestie.devservers.valkey import EmbeddedValkey
from halobestie.migrate import run_migrations

from . import chat_costs, chat_replay, chat_report, profiling
from .chat_sessions import (
    Pair,
    chat_env,
    drain,
    make_pairs,
    open_socket,
    receive,
    send_request,
    ws_url,
)
from .infra import REPO, SRC, CpuMeter, Proc, Procs, Servers, load_average, start_servers
from .loadgen import HttpClient, percentile

SCENARIOS = ("one", "two")
DRAIN_SECONDS = 15.0  # bound on waiting for the last deliveries of a trial


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- delivery ----------------------------------------------------------------------------


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
            readers.append(asyncio.create_task(drain(mine)))
            readers.append(asyncio.create_task(receive(theirs, sent, got)))
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


# -- the run -----------------------------------------------------------------------------


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
    sessions: list[int],
    trials: int,
    seconds: float,
    replay: int,
    profile: bool = False,
    base_src: Path | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"sessions": sessions, "trials": trials, "seconds": seconds}
    with tempfile.TemporaryDirectory(prefix="halobestie-chat-") as tmp_name:
        tmp = Path(tmp_name)
        servers = start_servers(tmp)
        # The base tree's apps get a Valkey of their own (as in ab_pairing.py): its mirror
        # and its event bus channel never meet this tree's.
        base_valkey = EmbeddedValkey(tmp / "valkey-base") if base_src else None
        procs = Procs(tmp)
        try:
            await asyncio.to_thread(run_migrations, servers.database_url)
            trees: dict[str, tuple[dict[str, Proc], Meter]] = {}
            tree_servers = {"new": (servers, SRC)}
            if base_src is not None and base_valkey is not None:
                out["base_src"] = str(base_src)
                base = Servers(
                    servers.database_url, base_valkey.start(), servers.postgres, base_valkey
                )
                tree_servers["base"] = (base, base_src)
            for tree, (where, src) in tree_servers.items():
                apps = {
                    name: procs.engine(f"chat-{tree}-{name}", chat_env(where, name, src=src))
                    for name in ("a", "b")
                }
                trees[tree] = (apps, Meter(CpuMeter(where), apps))
            apps, meter = trees["new"]
            pairs = await make_pairs(apps["a"].base, servers.database_url, max(sessions) + 1, "run")
            log(f"{len(pairs)} active sessions; apps of {', '.join(trees)} up")
            targets = [(tree, scenario) for tree in trees for scenario in SCENARIOS]
            out["delivery"] = {}
            for count in sessions:
                runs: dict[str, list[dict[str, Any]]] = {label(*t): [] for t in targets}
                for trial in range(trials):
                    k = trial % len(targets)
                    for tree, scenario in targets[k:] + targets[:k]:
                        r = await delivery_trial(
                            *trees[tree], pairs[:count], scenario, seconds,
                            f"d{count}-{trial}-{tree}-{scenario}",
                        )  # fmt: skip
                        r["trial"] = trial
                        runs[label(tree, scenario)].append(r)
                        log(
                            f"{count} sessions, {label(tree, scenario)}:"
                            f" {r['messages_per_s']:7.0f} msg/s  p50 {r['p50_ms']:.1f} ms"
                            f"  p99 {r['p99_ms']:.1f} ms  lost {r['lost']}  errors {r['errors']}"
                        )
                out["delivery"][str(count)] = {s: summarize(v) for s, v in runs.items()}
            out["statements"] = await chat_costs.statements_per_send(servers, procs, pairs[0])
            if profile:
                out["profile"] = await profile_send(apps, meter, pairs[: max(sessions)], seconds)
            if replay:
                out["replay"] = await chat_replay.replay_run(apps["a"], pairs[-1], replay, trials)
        finally:
            procs.stop_all()
            if base_valkey is not None:
                base_valkey.stop()
            servers.stop()
    return out


def label(tree: str, scenario: str) -> str:
    """`one` / `two` for the tree under test, `base_one` / `base_two` for --base-src."""
    return scenario if tree == "new" else f"{tree}_{scenario}"


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
    parser.add_argument(
        "--base-src", type=Path, default=None, help="also another tree's apps, interleaved"
    )
    args = parser.parse_args()
    trials, seconds = (2, 2.0) if args.quick else (5, 5.0)
    trials, seconds = args.trials or trials, args.seconds or seconds
    sessions = [int(s) for s in args.sessions.split(",") if s]
    started = time.perf_counter()
    load_before = load_average()
    base_src = args.base_src.resolve() if args.base_src else None
    out = asyncio.run(main(sessions, trials, seconds, args.replay_events, args.profile, base_src))
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
