"""Active chat sessions for the chat benchmarks, made the way clients make them: an admin
(created like `halobestie create-admin`) creates the mitras over the admin API, customers
register, each mitra logs in and goes online, each customer opens a pairing request for
its own mitra (`mitra_id`), the mitra accepts it, and the payment provider's signed
webhook pays it. Nothing is written to Postgres behind the API's back. Also the clients'
side of a chat: the apps' environment, sockets, the send request."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from halobestie.demo import ensure_admin

from .infra import BENCH_WEBHOOK_SECRET, SRC, Proc, Servers, app_env
from .loadgen import HttpClient

PASSWORD = "bench-password-0123"  # noqa: S105 - throwaway accounts of a benchmark database
ADMIN_EMAIL = "bench-admin@bench.example.com"


@dataclass(frozen=True)
class Party:
    user_id: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class Pair:
    """An active session and its two logged-in parties."""

    session_id: str
    customer: Party
    mitra: Party


async def _call(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    expect: int,
    party: Party | None = None,
    body: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    all_headers = {**(party.auth if party else {}), **(headers or {})}
    r = await http.request(method, path, json=body, content=content, headers=all_headers)
    if r.status_code != expect:
        raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:300]}")
    return r.json() if r.content else None


async def _login(http: httpx.AsyncClient, email: str, status: int = 200, path: str = "") -> Party:
    body: dict[str, str] = {"email": email, "password": PASSWORD}
    if path.endswith("register"):
        body["display_name"] = email.split("@")[0]
    answer = await _call(http, "POST", path or "/api/auth/login", expect=status, body=body)
    return Party(str(answer["user"]["id"]), str(answer["access_token"]))


def signed_webhook(session_id: str, reference: str) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps({"session_id": session_id, "reference": reference, "status": "paid"})
    body = raw.encode()
    signature = hmac.new(BENCH_WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/json", "X-Signature": signature}


async def make_pairs(base: str, database_url: str, count: int, tag: str) -> list[Pair]:
    """`count` active sessions of 240 minutes, each between a new customer and a new mitra
    (MITRA_MAX_CONCURRENT_SESSIONS is 1: one session per mitra). `tag` keeps emails apart
    between calls on one database."""
    await ensure_admin(database_url, ADMIN_EMAIL, PASSWORD)
    pairs = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        admin = await _login(http, ADMIN_EMAIL)
        for n in range(count):
            mitra_email = f"mitra-{tag}-{n}@bench.example.com"
            body = {"email": mitra_email, "password": PASSWORD, "display_name": f"m{n}"}
            await _call(http, "POST", "/api/admin/mitras", expect=201, party=admin, body=body)
            mitra = await _login(http, mitra_email)
            await _call(http, "POST", "/api/mitra/status/online", expect=200, party=mitra)
            await _call(http, "POST", "/api/mitra/status/heartbeat", expect=200, party=mitra)
            customer = await _login(
                http, f"customer-{tag}-{n}@bench.example.com", 201, "/api/auth/register"
            )
            opened = await _call(
                http,
                "POST",
                "/api/pairing/requests",
                expect=201,
                party=customer,
                body={"duration_minutes": 240, "mitra_id": mitra.user_id},
            )
            request_id = opened["pairing_request"]["id"]
            accepted = await _call(
                http, "POST", f"/api/pairing/requests/{request_id}/accept", expect=200, party=mitra
            )
            session_id = str(accepted["session"]["id"])
            raw, headers = signed_webhook(session_id, f"bench-{session_id}")
            paid = await _call(
                http, "POST", "/api/payments/webhook", expect=200, content=raw, headers=headers
            )
            if paid["session"]["status"] != "active":
                raise RuntimeError(f"session {session_id} not active after payment: {paid}")
            pairs.append(Pair(session_id, customer, mitra))
    return pairs


# -- the clients' side --------------------------------------------------------------------


def chat_env(
    servers: Servers, name: str, database_url: str | None = None, src: Path = SRC
) -> dict[str, str]:
    """An app's environment: the Valkey path, sweeps and timers off (`infra.app_env`), the
    tree `src` (by default the one this harness imports), access tokens that outlive the
    run (no socket is closed for an expired token mid-trial)."""
    env = app_env(servers, mirror=True, app_name=f"bench-chat-{name}", database_url=database_url)
    env["PYTHONPATH"] = str(src)
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


async def drain(ws: ClientConnection) -> None:
    """Reads and drops every frame (the sender's own echoes)."""
    async for _ in ws:
        pass


async def receive(ws: ClientConnection, sent: dict[str, float], got: dict[str, float]) -> None:
    async for raw in ws:
        now = time.perf_counter()
        event = json.loads(raw)
        if event.get("type") == "message.created":
            cid = event["data"]["message"]["client_message_id"]
            if cid in sent and cid not in got:
                got[cid] = now
