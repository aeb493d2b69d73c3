"""The chat benchmark's summary (`chat_delivery.py`): the machine it ran on and a
Markdown table of its medians."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from .infra import cpu_model, load_average


def revision(src: Path) -> str:
    """The commit of the tree `src` belongs to, +dirty(src) when its src has changes."""

    def git(*args: str) -> str:
        done = subprocess.run(  # noqa: S603
            ["git", *args],  # noqa: S607
            cwd=src, capture_output=True, text=True, check=False,
        )  # fmt: skip
        return done.stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--", ".")
        return git("rev-parse", "--short", "HEAD") + ("+dirty(src)" if dirty else "")
    except OSError:
        return "unknown"


def environment(
    src: Path, load_start: tuple[float, float, float], seconds: float
) -> dict[str, Any]:
    return {
        "src": str(src),
        "revision": revision(src),
        "cpu": cpu_model(),
        "load_average_start": [round(v, 2) for v in load_start],
        "load_average_end": [round(v, 2) for v in load_average()],
        "duration_s": round(seconds, 1),
    }


def ratio(scenarios: dict[str, Any], top: str, bottom: str, what: str) -> str:
    """`top` ÷ `bottom`: p50 latency (and per trial), messages/s, app A's CPU."""
    a, b = scenarios[top], scenarios[bottom]
    per_trial = ", ".join(
        f"{x['p50_ms'] / y['p50_ms']:.2f}"
        for x, y in zip(a["trials"], b["trials"], strict=True)
        if y["p50_ms"]
    )
    cpu_a, cpu_b = a["cpu_us_per_message"]["a"], b["cpu_us_per_message"]["a"]
    return (
        f"{what}, p50 latency {a['p50_ms'] / b['p50_ms']:.2f}x (per trial {per_trial}),"
        f" messages/s {a['messages_per_s'] / b['messages_per_s']:.2f}x,"
        f" app A's CPU per message {cpu_a / cpu_b:.2f}x."
    )


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(out: dict[str, Any], name: str) -> str:
    lines = [
        f"# Chat delivery ({name})",
        "",
        f"Source tree {out['src']} at {out['revision']}, {out['cpu']}, load average"
        f" {out['load_average_start']} at start, {out['load_average_end']} at end;"
        f" {out['trials']} trials of {out['seconds']} s per scenario, interleaved;"
        " medians of trials.",
        "",
        "Message send (HTTP, app A) → `message.created` on the other party's socket: on app A"
        " (`one` instance) or on app B (`two`, over Valkey pub/sub).",
        "",
        "| sessions | instances | messages/s | delivery p50 / p99 | send answered p50 / p99"
        " | CPU per message: app A / app B / Postgres / Valkey / client | lost |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {"one": "one", "two": "two", "base_one": "one, before", "base_two": "two, before"}
    for count, scenarios in out.get("delivery", {}).items():
        for scenario, s in scenarios.items():
            cpu = s["cpu_us_per_message"]
            lines.append(
                f"| {count} | {names.get(scenario, scenario)} | {_f(s['messages_per_s'], 0)}"
                f" | {_f(s['p50_ms'])} / {_f(s['p99_ms'])} ms"
                f" | {_f(s['send_p50_ms'])} / {_f(s['send_p99_ms'])} ms"
                f" | {_f(cpu['a'], 0)} / {_f(cpu['b'], 0)} / {_f(cpu['postgres'], 0)}"
                f" / {_f(cpu['valkey'], 0)} / {_f(cpu['client'], 0)} µs"
                f" | {s['lost']} |"
            )
    lines.append("")
    for count, scenarios in out.get("delivery", {}).items():
        lines.append(f"* {count} session(s): " + ratio(scenarios, "two", "one", "two ÷ one"))
        if "base_one" in scenarios:
            lines.append(
                f"* {count} session(s), before: "
                + ratio(scenarios, "base_two", "base_one", "two ÷ one")
            )
            for scenario in ("one", "two"):
                lines.append(
                    f"* {count} session(s), {scenario}: "
                    + ratio(scenarios, scenario, f"base_{scenario}", "this tree ÷ before")
                )
    if "base_src" in out:
        lines.append(f"* before = `{out['base_src']}`, on a Valkey of its own.")
    replay = out.get("replay")
    if replay is not None:
        lines.append("")
        if "skipped" in replay:
            lines.append(f"Reconnect replay: skipped ({replay['skipped']}).")
        else:
            rest = replay["rest_ms"]
            lines.append(
                f"Reconnect replay of {replay['events']} missed events (`/ws?since=`):"
                f" all received, in order, once, {_f(replay['to_last_ms'], 0)} ms from"
                f" connect to the last ({_f(replay['events_per_s'], 0)} events/s; `ready`"
                f" after {_f(replay['to_ready_ms'])} ms). Per trial:"
                f" {', '.join(_f(r['to_last_ms'], 0) for r in replay['trials'])} ms. The same"
                " events paged over `GET /api/events` (500 a page): "
                + ("not in this tree." if rest is None else f"{rest:,.0f} ms.")
            )
    stmts = out.get("statements")
    if stmts is not None:
        lines.append("")
        if "skipped" in stmts:
            lines.append(f"Postgres statements per message: skipped ({stmts['skipped']}).")
        else:
            kinds = "; ".join(f"{k} {v:g}" for k, v in stmts["kinds_per_send"].items())
            lines.append(
                f"Postgres statements per message sent and delivered (from Postgres' log,"
                f" {stmts['sends']} sends, one instance): {stmts['per_send']:.2f} ({kinds})."
            )
    prof = out.get("profile")
    if prof is not None:
        lines.append("")
        if "skipped" in prof:
            lines.append(f"Profile: skipped ({prof['skipped']}).")
        else:
            shares = ", ".join(f"{k} {v:.0%}" for k, v in prof["self_share"].items())
            lines.append(
                f"Profile of app A (py-spy, {prof['sessions']} sessions, one instance,"
                f" {_f(prof['messages_per_s'], 0)} messages/s while sampled, stacks in"
                f" `{prof['raw']}`): busy {prof['busy_fraction']:.0%} of the time; its"
                f" samples by the package of the innermost frame: {shares}."
            )
    return "\n".join(lines) + "\n"


def _package(frame: str) -> str:
    """`func (pkg/module.py:line)` (py-spy's short paths) -> halobestie.<subpackage>, the
    top-level package, or the single-file module (`threading`)."""
    if frame.startswith("Runner.run (asyncio/runners.py"):
        return "event loop (uvloop's C code: I/O, parsing, callbacks)"
    path = frame[frame.rfind("(") + 1 :].rsplit(":", 1)[0]
    parts = path.split("/")
    if parts[0] == "halobestie" and len(parts) > 2:
        return "halobestie." + parts[1]
    return parts[0].removesuffix(".py")


def profile_summary(raw: Path, seconds: float, rate: int, top: int = 12) -> dict[str, Any]:
    """py-spy's raw collapsed stacks of the main thread (the event loop; other threads
    are the executor's, mostly waiting) -> the share of its busy samples per package of
    the innermost frame ("self"), and its busy fraction (py-spy does not sample a thread
    idle in the kernel)."""
    selfs: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack.startswith("_run_module_as_main") or not count.isdigit():
            continue
        n = int(count)
        total += n
        package = _package(stack.split(";")[-1])
        selfs[package] = selfs.get(package, 0) + n
    ranked = sorted(selfs.items(), key=lambda kv: -kv[1])[:top]
    return {
        "samples": total,
        "busy_fraction": round(total / max(1.0, seconds * rate), 2),
        "self_share": {k: round(v / max(1, total), 3) for k, v in ranked},
    }
