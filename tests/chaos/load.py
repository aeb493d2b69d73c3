"""A bounded load of simulated users over HTTP against both instances, recording every
answer and every write acknowledged with a 200/201, for the checks afterwards.

Mitras go online (and now and then offline and back), heartbeat, poll their offers and
accept them; customers poll the beacon, open pairing requests, follow them, pay through
the signed webhook (most of them: the others let the payment time out), end their
sessions, sometimes cancel a search. Every request goes to instance "a" or "b" at random
and is answered, refused, or not answered at all (which the checks allow only from an
instance that was frozen or down meanwhile). Each user loop is bounded in iterations and
in time; nothing retries blindly: a user re-reads state over REST, as a real client does.
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import httpx

from halobestie.auth.passwords import hash_password
from tests.chaos.cluster import Cluster, now
from tests.sessions.helpers import sign, webhook_body

PASSWORD = "chaos horse battery staple"
CLIENT_TIMEOUT = 8.0  # above the longest honest answer (DATABASE_TIMEOUT_SECONDS, 5 s)
MAX_ITERATIONS = 400  # per user; the time bound normally ends the loop first
PAUSE = (0.25, 0.5)  # seconds between one user's steps


@dataclass
class Call:
    op: str
    instance: str
    start: float
    end: float
    status: int | None = None
    code: str | None = None
    retry_after: str | None = None
    error: str | None = None  # no answer: the transport error's class
    detail: str = ""  # a refusal's detail, or the path, for a failure's message


@dataclass
class User:
    id: UUID
    role: str
    email: str
    token: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Acked:
    """Writes answered 200/201: each must be in Postgres afterwards."""

    opened: dict[str, UUID] = field(default_factory=dict)  # request id -> customer
    accepted: dict[str, tuple[UUID, str]] = field(default_factory=dict)  # session -> mitra, req
    paid: dict[str, str] = field(default_factory=dict)  # session -> reference
    closed: dict[str, str] = field(default_factory=dict)  # session -> status `end` answered
    cancelled: set[str] = field(default_factory=set)  # request ids
    # mitra -> (the last online/offline write sent, whether it was answered 200)
    toggles: dict[UUID, tuple[bool, bool]] = field(default_factory=dict)


async def make_users(
    pg: asyncpg.Connection, mitras: int, customers: int
) -> tuple[User, list[User], list[User]]:
    """An admin, mitras and customers written straight into Postgres (the API creates
    them the same way); they log in over HTTP."""
    password_hash = await hash_password(PASSWORD)
    people: list[User] = []
    async with pg.transaction():
        for role, count in (("admin", 1), ("mitra", mitras), ("customer", customers)):
            for n in range(count):
                email = f"chaos-{role}-{n}@example.com"
                user_id = await pg.fetchval(
                    "INSERT INTO users (email, password_hash, display_name, role)"
                    " VALUES ($1, $2, $3, $4) RETURNING id",
                    email,
                    password_hash,
                    f"Chaos {role} {n}",
                    role,
                )
                if role == "mitra":
                    await pg.execute("INSERT INTO mitras (id) VALUES ($1)", user_id)
                people.append(User(user_id, role, email))
    return (
        people[0],
        [p for p in people if p.role == "mitra"],
        [p for p in people if p.role == "customer"],
    )


async def log_in(http: httpx.AsyncClient, base: str, user: User) -> None:
    """Log `user` in at the app at `base` and keep its access token; argon2 on a loaded
    2-core machine is slow, so the wait is generous and a timeout is retried."""
    for _ in range(10):
        try:
            r = await http.post(
                base + "/api/auth/login",
                json={"email": user.email, "password": PASSWORD},
                timeout=30,
            )
        except httpx.TimeoutException:
            continue
        if r.status_code == 200:
            user.token = r.json()["access_token"]
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{user.role} {user.email} could not log in")


class Load:
    def __init__(self, cluster: Cluster, http: httpx.AsyncClient, *, seed: int) -> None:
        self.cluster = cluster
        self.http = http
        self.rng = random.Random(seed)
        self.calls: list[Call] = []
        self.acked = Acked()
        self.stopping = asyncio.Event()

    async def call(
        self, op: str, method: str, path: str, *, instance: str | None = None, **kwargs: Any
    ) -> httpx.Response | None:
        """One request to `instance` (random by default), recorded; None if unanswered."""
        name = instance or self.rng.choice(("a", "b"))
        url = self.cluster.url(name) + path
        record = Call(op, name, now(), 0.0, detail=path)
        self.calls.append(record)
        try:
            response = await self.http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            record.end, record.error = now(), type(exc).__name__
            return None
        record.end, record.status = now(), response.status_code
        record.retry_after = response.headers.get("retry-after")
        if response.status_code >= 400:
            try:
                body = response.json()
                record.code, record.detail = str(body.get("error")), str(body.get("detail"))
            except ValueError:
                record.code = "<not json>"
        return response

    async def login_all(self, users: list[User]) -> None:
        """Setup, before any fault, and not part of what is checked: argon2 takes ~50 ms
        of CPU per login, far more on a loaded 2-core machine, so a few at a time, each
        with a generous timeout and retried."""
        gate = asyncio.Semaphore(3)

        async def login(user: User) -> None:
            async with gate:
                await log_in(self.http, self.cluster.url("a"), user)

        await asyncio.gather(*(login(u) for u in users))

    async def run(self, mitras: list[User], customers: list[User], seconds: float) -> None:
        """Until `stop()` or `seconds`, whichever first; each loop at most MAX_ITERATIONS."""
        deadline = now() + seconds
        loops = [self._mitra(m, deadline) for m in mitras]
        loops += [self._customer(c, deadline) for c in customers]
        await asyncio.wait_for(asyncio.gather(*loops), seconds + 2 * CLIENT_TIMEOUT)

    def stop(self) -> None:
        self.stopping.set()

    def _going(self, deadline: float) -> bool:
        return not self.stopping.is_set() and now() < deadline

    async def _pause(self) -> None:
        await asyncio.sleep(self.rng.uniform(*PAUSE))

    # -- a mitra ---------------------------------------------------------------------

    async def _toggle(self, mitra: User, online: bool) -> bool:
        path = "/api/mitra/status/online" if online else "/api/mitra/status/offline"
        r = await self.call("online" if online else "offline", "POST", path, headers=mitra.headers)
        acked = r is not None and r.status_code == 200
        self.acked.toggles[mitra.id] = (online, acked)
        return acked

    async def _mitra(self, mitra: User, deadline: float) -> None:
        online = False
        offline_until = 0.0
        for _ in range(MAX_ITERATIONS):
            if not self._going(deadline):
                return
            if not online and now() >= offline_until:
                online = await self._toggle(mitra, True)
            if online:
                r = await self.call(
                    "heartbeat", "POST", "/api/mitra/status/heartbeat", headers=mitra.headers
                )
                if r is not None and r.status_code == 409:
                    online = False  # not_online: what clients do is go online again
            r = await self.call("offers", "GET", "/api/mitra/offers", headers=mitra.headers)
            if r is not None and r.status_code == 200 and r.json()["offers"]:
                request_id = r.json()["offers"][0]["request_id"]
                r = await self.call(
                    "accept",
                    "POST",
                    f"/api/pairing/requests/{request_id}/accept",
                    headers=mitra.headers,
                )
                if r is not None and r.status_code == 200:
                    self.acked.accepted[r.json()["session"]["id"]] = (mitra.id, request_id)
            if online and self.rng.random() < 0.03 and await self._toggle(mitra, False):
                online, offline_until = False, now() + 1.0
            await self._pause()

    # -- a customer ------------------------------------------------------------------

    async def _customer(self, customer: User, deadline: float) -> None:
        request_id: str | None = None
        opened_at = 0.0
        session_id: str | None = None
        active_since: float | None = None
        reference = ""
        will_pay = True
        h = customer.headers
        for _ in range(MAX_ITERATIONS):
            if not self._going(deadline):
                return
            await self.call("beacon", "GET", "/api/availability")
            if session_id is not None:
                r = await self.call("get_session", "GET", f"/api/sessions/{session_id}", headers=h)
                status = r.json()["session"]["status"] if r and r.status_code == 200 else None
                if status == "pending_payment" and will_pay:
                    raw = webhook_body(session_id, reference)
                    r = await self.call(
                        "pay",
                        "POST",
                        "/api/payments/webhook",
                        content=raw,
                        headers={"content-type": "application/json", "x-signature": sign(raw)},
                    )
                    if r is not None and r.status_code == 200:
                        self.acked.paid[session_id] = reference
                elif status == "active":
                    active_since = active_since or now()
                    if now() - active_since > 1.5:
                        r = await self.call(
                            "end", "POST", f"/api/sessions/{session_id}/end", headers=h
                        )
                        if r is not None and r.status_code == 200:
                            self.acked.closed[session_id] = r.json()["session"]["status"]
                elif status is not None and status != "pending_payment":
                    session_id = request_id = None  # closed: search again
            elif request_id is not None:
                r = await self.call(
                    "get_request", "GET", f"/api/pairing/requests/{request_id}", headers=h
                )
                request = r.json()["pairing_request"] if r and r.status_code == 200 else None
                if request is None:
                    pass
                elif request["status"] == "matched":
                    session_id, active_since = request["session_id"], None
                    reference, will_pay = f"chaos-{uuid.uuid4()}", self.rng.random() < 0.8
                elif request["status"] != "searching":
                    request_id = None
                elif now() - opened_at > 2.5 and self.rng.random() < 0.2:
                    r = await self.call(
                        "cancel", "DELETE", f"/api/pairing/requests/{request_id}", headers=h
                    )
                    if r is not None and r.status_code == 200:
                        self.acked.cancelled.add(request_id)
                        request_id = None
            else:
                r = await self.call(
                    "open", "POST", "/api/pairing/requests", json={"duration_minutes": 1}, headers=h
                )
                if r is not None and r.status_code == 201:
                    request_id = r.json()["pairing_request"]["id"]
                    self.acked.opened[request_id] = customer.id
                    opened_at = now()
                elif (
                    r is not None and r.status_code == 409 and r.json()["error"] == "invalid_state"
                ):
                    # A search already open, whose 201 was lost: find it again over REST.
                    request_id = _named_request(r.json()["detail"])
                    opened_at = now()
            await self._pause()


SEARCHING = re.compile(r"searching pairing request ([0-9a-f-]{36})")


def _named_request(detail: str) -> str | None:
    """The id of the open search an `invalid_state` refusal names, if it does."""
    match = SEARCHING.search(detail)
    return match.group(1) if match else None
