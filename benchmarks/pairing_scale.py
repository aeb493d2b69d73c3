"""Pairing at scale (issue 8): opening a pairing request at 1k, 10k and 100k online mitras
with 20 closed sessions of history each, over HTTP, against an app process.

One trial against one app (`trial`) runs, in this order:

* **latency**: one customer opens a request and cancels it, again and again, for
  `latency_seconds`; the open's latency (p50, p99). Nothing else runs meanwhile.
* **throughput**: `customers` customers (32) do the same at once for `load_seconds`;
  opens answered 201 per second is the path's capacity to open requests.
* **round trips**: the same customers open -> the first offered mitra that can accepts ->
  the customer ends the session (`http_scenarios.pairing`); full cycles per second.
* **burst**: `burst` distinct customers (50), each on a connection opened beforehand,
  send their open at the same instant: answers by status, time from the send to the last
  answer, and how many distinct mitras were offered over all of them.

`pairing_costs.py` counts Postgres statements per open and times the choice in-process.
Every request opened here is cancelled (or
matched and ended) before the trial ends; `tidy` is the safety net for one left over by a
failed request, so that a customer never stays blocked by its own open search.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from halobestie.auth.tokens import Principal, issue_access_token

from . import http_scenarios
from .dataset import TOKEN_TTL
from .infra import CpuMeter
from .loadgen import HttpClient, percentile

OPEN = "/api/pairing/requests"
BODY = {"duration_minutes": 30}


@dataclass(frozen=True)
class ScalePlan:
    trials: int = 3  # interleaved trials per path and size
    latency_seconds: float = 3.0
    load_seconds: float = 4.0
    customers: int = 32
    burst: int = 50
    counted_opens: int = 50

    @classmethod
    def quick(cls) -> ScalePlan:
        return cls(trials=1, latency_seconds=1.0, load_seconds=1.5)


class MitraTokens(Mapping[str, str]):
    """Access tokens of online mitras by id, minted on first use (100k online: the few
    offered mitras that accept need one, not all of them)."""

    def __init__(self, sessions: dict[str, UUID], secret: str, now: datetime) -> None:
        self._sessions = sessions
        self._secret = secret
        self._now = now
        self._tokens: dict[str, str] = {}

    def __getitem__(self, mitra_id: str) -> str:
        token = self._tokens.get(mitra_id)
        if token is None:
            principal = Principal(UUID(mitra_id), self._sessions[mitra_id], "mitra")
            token = issue_access_token(self._secret, principal, self._now, TOKEN_TTL)
            self._tokens[mitra_id] = token
        return token

    def __iter__(self) -> Iterator[str]:
        return iter(self._sessions)

    def __len__(self) -> int:
        return len(self._sessions)


async def mitra_tokens(conn: Any, secret: str, now: datetime) -> MitraTokens:
    rows = await conn.fetch(
        "SELECT DISTINCT ON (m.id) m.id::text AS id, s.id AS sid FROM mitras m"
        " JOIN auth_sessions s ON s.user_id = m.id AND s.revoked_at IS NULL"
        " WHERE m.is_online AND m.is_active ORDER BY m.id, s.created_at"
    )
    return MitraTokens({r["id"]: r["sid"] for r in rows}, secret, now)


async def wait_trusted(base: str, patience: float = 300.0) -> float:
    """Seconds until the app's mirror is trusted (`/readyz` says valkey ok). An app whose
    startup seed failed (e.g. past its Valkey or Postgres timeouts at 100k online on a busy
    machine) starts degraded and serves every read from Postgres until its watcher
    reseeds; counting or timing it meanwhile would measure the fallback."""
    started = time.perf_counter()
    client = HttpClient(base)
    try:
        while True:
            status, body = await client.request("GET", "/readyz")
            if status == 200 and isinstance(body, dict) and body.get("valkey") == "ok":
                return time.perf_counter() - started
            if time.perf_counter() - started > patience:
                raise RuntimeError(f"{base}: mirror not trusted after {patience:.0f} s: {body}")
            await asyncio.sleep(0.5)
    finally:
        await client.close()


FALLBACKS = re.compile(r'^halobestie_fallback_reads_total\{reader="([^"]+)"\} ([0-9.e+]+)$', re.M)


async def fallback_reads(base: str) -> int:
    """The app's reads served from Postgres because Valkey could not be used, so far."""
    client = HttpClient(base)
    try:
        status, raw = await client.send(HttpClient.build("GET", "/metrics"))
    finally:
        await client.close()
    if status != 200:
        return 0
    return int(sum(float(n) for _, n in FALLBACKS.findall(raw.decode(errors="replace"))))


async def tidy(conn: Any) -> int:
    """Cancel searching requests left behind by a failed call; how many there were."""
    return int(
        await conn.fetchval(
            "WITH c AS (UPDATE pairing_requests SET status = 'cancelled', closed_at = now()"
            " WHERE status = 'searching' RETURNING 1) SELECT count(*) FROM c"
        )
    )


def ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(v * 1000 for v in values)
    return {
        "n": len(ordered),
        "p50_ms": percentile(ordered, 50),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1] if ordered else float("nan"),
    }


class _Problems(dict[str, int]):
    def add(self, what: str, status: int, body: Any) -> None:
        code = body.get("error") if isinstance(body, dict) else None
        key = f"{what} {status} {code}"
        self[key] = self.get(key, 0) + 1


async def _open_cancel_loop(
    base: str, token: str, deadline: float, opens: list[float], problems: _Problems
) -> None:
    client = HttpClient(base)
    auth = {"Authorization": f"Bearer {token}"}
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status, body = await client.request("POST", OPEN, auth, BODY)
            took = time.perf_counter() - started
            if status != 201:
                problems.add("open", status, body)
                await asyncio.sleep(0.01)
                continue
            opens.append(took)
            request_id = body["pairing_request"]["id"]
            status, body = await client.request("DELETE", f"{OPEN}/{request_id}", auth)
            if status != 200:
                problems.add("cancel", status, body)
    finally:
        await client.close()


async def open_latency(base: str, token: str, seconds: float) -> dict[str, Any]:
    """One customer, open then cancel, back to back: the open's latency alone."""
    opens: list[float] = []
    problems = _Problems()
    started = time.perf_counter()
    await _open_cancel_loop(base, token, started + seconds, opens, problems)
    elapsed = time.perf_counter() - started
    return {
        "opens": len(opens),
        "duration_s": elapsed,
        "opens_per_s": len(opens) / elapsed,  # with the cancels: a lower bound
        "open": ms(opens),
        "problems": dict(problems),
    }


async def open_throughput(base: str, tokens: list[str], seconds: float) -> dict[str, Any]:
    """Every customer opens then cancels, all at once: opens answered 201 per second."""
    opens: list[float] = []
    problems = _Problems()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(_open_cancel_loop(base, t, deadline, opens, problems) for t in tokens))
    elapsed = time.perf_counter() - started
    return {
        "opens": len(opens),
        "duration_s": elapsed,
        "opens_per_s": len(opens) / elapsed,
        "open": ms(opens),
        "problems": dict(problems),
        "concurrency": len(tokens),
    }


async def burst(base: str, tokens: list[str]) -> dict[str, Any]:
    """Each customer on its own connection (opened and used once beforehand), all opens
    sent at the same instant; then each created request is cancelled."""
    clients = [HttpClient(base) for _ in tokens]
    try:
        await asyncio.gather(*(c.request("GET", "/healthz") for c in clients))
        start = asyncio.Event()
        sent = 0.0

        async def one(client: HttpClient, token: str) -> tuple[int, Any, float]:
            await start.wait()
            auth = {"Authorization": f"Bearer {token}"}
            status, body = await client.request("POST", OPEN, auth, BODY)
            return status, body, time.perf_counter() - sent

        tasks = [asyncio.create_task(one(c, t)) for c, t in zip(clients, tokens, strict=True)]
        await asyncio.sleep(0)  # every task is waiting on the event
        sent = time.perf_counter()
        start.set()
        answers = await asyncio.gather(*tasks)
        statuses: dict[str, int] = {}
        offered: set[str] = set()
        offers = 0
        for status, body, _ in answers:
            code = body.get("error") if isinstance(body, dict) and status != 201 else None
            key = str(status) + (f" {code}" if code else "")
            statuses[key] = statuses.get(key, 0) + 1
            if status == 201:
                offered.update(body["pairing_request"]["offered_to"])
                offers += len(body["pairing_request"]["offered_to"])
        problems = _Problems()
        for (status, body, _), client, token in zip(answers, clients, tokens, strict=True):
            if status == 201:
                request_id = body["pairing_request"]["id"]
                auth = {"Authorization": f"Bearer {token}"}
                status, body = await client.request("DELETE", f"{OPEN}/{request_id}", auth)
                if status != 200:
                    problems.add("cancel", status, body)
        times = [t for _, _, t in answers]
        return {
            "requests": len(tokens),
            "statuses": statuses,
            "created": statuses.get("201", 0),
            "last_ms": max(times) * 1000,
            "answer": ms(times),
            "distinct_offered": len(offered),
            "offers": offers,
            "problems": dict(problems),
        }
    finally:
        await asyncio.gather(*(c.close() for c in clients))


@dataclass(frozen=True)
class Customers:
    """Bench customers (id, token), none holding a session or a search."""

    pairs: list[tuple[UUID, str]]

    @property
    def tokens(self) -> list[str]:
        return [t for _, t in self.pairs]


async def trial(
    base: str,
    customers: Customers,
    mitras: MitraTokens,
    plan: ScalePlan,
    *,
    round_trips: bool = True,
    cpu: CpuMeter | None = None,
    pid: int | None = None,
) -> dict[str, Any]:
    """The four scenarios, one after the other, against the app at `base`. With a CPU
    meter: the CPU time of the app (`pid`), Postgres and Valkey per open + cancel cycle
    of the throughput scenario."""
    tokens = customers.tokens
    out: dict[str, Any] = {"latency": await open_latency(base, tokens[0], plan.latency_seconds)}
    before = cpu.snapshot(pid) if cpu else None
    out["throughput"] = await open_throughput(base, tokens[: plan.customers], plan.load_seconds)
    if cpu is not None and before is not None:
        out["throughput"]["cpu_us_per_open_and_cancel"] = CpuMeter.per_request_us(
            before, cpu.snapshot(pid), out["throughput"]["opens"]
        )
    if round_trips:
        out["round_trips"] = await http_scenarios.pairing(
            base, customers.pairs[: plan.customers], mitras, plan.load_seconds
        )
    out["burst"] = await burst(base, tokens[: plan.burst])
    return out


def describe(name: str, t: dict[str, Any]) -> str:
    """One log line for a trial."""
    parts = [
        f"{name:<14}",
        f"open p50 {t['latency']['open']['p50_ms']:.1f} p99 {t['latency']['open']['p99_ms']:.1f}"
        " ms",
        f"{t['throughput']['opens_per_s']:.0f} opens/s",
    ]
    if t.get("fallback_reads") and name.endswith("valkey"):
        parts.append(f"FELL BACK TO POSTGRES {t['fallback_reads']} times")
    if "cpu_us_per_open_and_cancel" in t["throughput"]:
        parts.append(f"CPU us per open+cancel {t['throughput']['cpu_us_per_open_and_cancel']}")
    if "round_trips" in t:
        parts.append(f"{t['round_trips']['round_trips_per_s']:.0f} round trips/s")
    b = t["burst"]
    parts.append(
        f"burst {b['statuses']} last {b['last_ms']:.0f} ms, {b['distinct_offered']} mitras"
    )
    problems: dict[str, int] = {}
    for part in ("latency", "throughput", "round_trips", "burst"):
        for k, v in t.get(part, {}).get("problems", {}).items():
            problems[k] = problems.get(k, 0) + v
    if problems:
        parts.append(f"problems {problems}")
    return "  ".join(parts)


async def interleaved(
    apps: dict[str, str],
    customers: Customers,
    mitras: MitraTokens,
    plan: ScalePlan,
    *,
    conn: Any,
    log: Callable[[str], None],
    round_trips: bool = True,
    after: Callable[[str], Awaitable[None]] | None = None,
    cpus: dict[str, CpuMeter] | None = None,
    pids: dict[str, int] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """`plan.trials` trials of every app, the order rotating from trial to trial (A B, B A,
    ...), after a short warm-up of each (not recorded). `after(name)` runs after each of
    that app's trials (the run reseeds the mirror after the Postgres-only app's round
    trips, which the mirror did not see). `cpus[name]` meters that app's servers. Each
    trial records how many of the app's reads fell back to Postgres (its metrics): a
    Valkey path that fell back measured the fallback."""
    names = list(apps)
    for name in names:
        await open_latency(apps[name], customers.tokens[0], 0.5)
    await tidy(conn)
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for number in range(plan.trials):
        order = names[number % len(names) :] + names[: number % len(names)]
        for name in order:
            fallbacks = await fallback_reads(apps[name])
            result = await trial(
                apps[name],
                customers,
                mitras,
                plan,
                round_trips=round_trips,
                cpu=(cpus or {}).get(name),
                pid=(pids or {}).get(name),
            )
            result["fallback_reads"] = await fallback_reads(apps[name]) - fallbacks
            result["trial"] = number
            result["left_searching"] = await tidy(conn)
            out[name].append(result)
            log(f"  {describe(name, result)}")
            if after is not None:
                await after(name)
    return out
