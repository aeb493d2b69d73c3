"""The simulator's view of halobestie: the public HTTP API and the WebSocket, exactly as
any client sees them. Nothing here imports the engine or touches a database.

`ApiUser` is one logged-in person (tokens, a refresh or a new login when the access token
is refused, the event socket); `PaymentProvider` signs and sends the payment webhook.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, WebSocketException

Json = dict[str, Any]
POLICY_VIOLATION = 1008  # the server's close code for a refused or expired token


class ApiError(Exception):
    """A 4xx answer: `status`, `code` (the body's `error`) and `detail`."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class ServerGone(Exception):
    """No usable answer (connection refused or dropped, timeout, 5xx): try again later."""


@dataclass(frozen=True)
class Account:
    email: str
    password: str
    display_name: str
    role: str  # customer | mitra | admin


async def send(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    body: Json | None = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Json:
    """One request; the JSON of a 2xx answer ({} for 204). ApiError for 4xx, ServerGone
    for a transport failure or 5xx."""
    try:
        response = await http.request(method, path, json=body, content=content, headers=headers)
    except httpx.TransportError as exc:
        raise ServerGone(f"{method} {path}: {exc!r}") from None
    if response.status_code >= 500:
        raise ServerGone(f"{method} {path}: {response.status_code} {response.text[:200]}")
    if response.status_code >= 400:
        try:
            payload = response.json()
            code, detail = str(payload.get("error")), str(payload.get("detail"))
        except (ValueError, AttributeError):
            code, detail = "unknown", response.text[:200]
        raise ApiError(response.status_code, code, detail)
    if not response.content:
        return {}
    answer: Json = response.json()
    return answer


class ApiUser:
    """A logged-in user of the public API."""

    def __init__(self, http: httpx.AsyncClient, account: Account) -> None:
        self.http = http
        self.account = account
        self.user_id: str | None = None
        self.access_token: str | None = None
        self.refresh_token: str | None = None
        # True while the event socket is open (ready received): callers poll otherwise.
        self.socket_open = False

    def _take(self, answer: Json) -> None:
        self.user_id = str(answer["user"]["id"])
        self.access_token = str(answer["access_token"])
        self.refresh_token = str(answer["refresh_token"])

    async def login(self) -> None:
        """POST /api/auth/login; ApiError 401 invalid_credentials, 403 account_deactivated."""
        body = {"email": self.account.email, "password": self.account.password}
        self._take(await send(self.http, "POST", "/api/auth/login", body=body))

    async def register(self) -> bool:
        """A customer's POST /api/auth/register, or a login when the email exists (False)."""
        body = {
            "email": self.account.email,
            "password": self.account.password,
            "display_name": self.account.display_name,
        }
        try:
            self._take(await send(self.http, "POST", "/api/auth/register", body=body))
        except ApiError as exc:
            if exc.code != "email_taken":
                raise
            await self.login()
            return False
        return True

    async def renew(self) -> None:
        """A fresh access token: refresh, or log in again when the refresh is refused."""
        if self.refresh_token is not None:
            try:
                body = {"refresh_token": self.refresh_token}
                self._take(await send(self.http, "POST", "/api/auth/refresh", body=body))
                return
            except ApiError:
                pass  # revoked (deactivation, logout) or expired: a new login decides
        await self.login()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    async def call(self, method: str, path: str, body: Json | None = None) -> Json:
        """An authenticated call; a 401 renews the token once and retries."""
        if self.access_token is None:
            await self.login()
        try:
            return await send(self.http, method, path, body=body, headers=self._headers())
        except ApiError as exc:
            if exc.status != 401:
                raise
        await self.renew()
        return await send(self.http, method, path, body=body, headers=self._headers())

    def ws_url(self) -> str:
        base = str(self.http.base_url).rstrip("/")
        scheme, rest = base.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws?token={self.access_token}"

    async def listen(self, on_event: Callable[[Json], Awaitable[None]]) -> None:
        """Receive this user's events for ever (the caller cancels the task): reconnects
        after any failure, with a fresh token after a 1008 close. Never raises."""
        while True:
            try:
                if self.access_token is None:
                    await self.login()
                async with connect(self.ws_url(), open_timeout=5, close_timeout=1) as ws:
                    async for raw in ws:
                        event = json.loads(raw)
                        if event.get("type") == "ready":
                            self.socket_open = True
                        await on_event(event)
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == POLICY_VIOLATION:
                    await _quietly(self.renew())
            except (WebSocketException, OSError, TimeoutError, ValueError):
                pass  # refused, reset, or a frame that is not JSON: reconnect
            except (ApiError, ServerGone):
                pass  # could not log in (deactivated, server down): retry later
            finally:
                self.socket_open = False
            await asyncio.sleep(1.0)


async def _quietly(work: Awaitable[None]) -> None:
    try:
        await work
    except (ApiError, ServerGone):
        pass


class PaymentProvider:
    """The payment provider: POST /api/payments/webhook, signed with the shared secret
    (`X-Signature`: hex HMAC-SHA256 of the raw body)."""

    def __init__(self, http: httpx.AsyncClient, secret: str) -> None:
        self.http = http
        self.secret = secret

    def sign(self, raw: bytes) -> str:
        return hmac.new(self.secret.encode(), raw, hashlib.sha256).hexdigest()

    async def paid(self, session_id: str, reference: str) -> Json:
        """{session} now active; ApiError 409 invalid_state when it is no longer payable."""
        raw = json.dumps({"session_id": session_id, "reference": reference, "status": "paid"})
        body = raw.encode()
        headers = {"Content-Type": "application/json", "X-Signature": self.sign(body)}
        return await send(self.http, "POST", "/api/payments/webhook", content=body, headers=headers)


async def send_payment(base_url: str, secret: str, session_id: str, reference: str) -> Json:
    """One signed webhook call (the `halobestie pay` command)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        return await PaymentProvider(http, secret).paid(session_id, reference)
