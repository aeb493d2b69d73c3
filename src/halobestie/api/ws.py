"""`GET /ws?token=<access token>[&since=<seq>]`: the user's event stream (SPEC §6).

The token is checked before anything else: signature, expiry (our clock), and, when
Postgres answers, that its login was not ended (logout, deactivation). A refused token
gets the socket accepted and closed at once with 1008 (policy violation) and the reason
`invalid_token: ...`, never reading a frame: browsers cannot see a refused handshake's
status, but they can see a close code, so a client knows to refresh instead of retrying.
A `since` that is not an integer >= 0 closes it the same way (`invalid_request: ...`).

Once open, the server sends `{"type": "ready", "data": {"user_id", "role", "last_seq"}}`
(`last_seq`: the user's last event number; null only when Postgres could not be read and
no `since` was given). Then:

* with `since`: every event with `seq > since`, in order, then live, with no gap and no
  duplicate at the seam (the socket is attached to the bus before the log is read;
  events/stream.py orders and dedupes by seq). When events after `since` are no longer
  kept (EVENT_RETENTION_SECONDS) or `since` is beyond `last_seq`:
  `{"type": "resync_required", "data": {"last_seq": n}}`, then live after n: the client
  refetches its state over REST. Postgres unreachable: closed with 1013
  `events_unavailable: ...`; the client retries later with the same `since`;
* without `since`: live events only (those after `last_seq`).

Recorded events are `{"type", "seq", "data"}`: `seq` is the user's event number, 1, 2,
3, ... with no gap, in commit order, shared by all the user's sockets. `ready`, `pong`,
`error`, `typing`, `resync_required` and `admin.counts` carry no `seq`. A client keeps the
last `seq` it processed, drops a frame whose `seq` is not above it, and reconnects with
`since=<it>`.

The client may send `{"type": "ping"}`; the answer is `{"type": "pong"}`. It may send
`{"type": "typing", "data": {"session_id": ...}}`, relayed to the session's other party
(chat/typing.py; nothing is answered, a malformed one gets an `error` event). Anything
else gets an `error` event; binary or oversized frames close the socket (1003, 1009).
The socket closes with 1008 `token_expired` when its access token expires: the client
reconnects with a fresh one (and `since`). A logout closes that login's sockets, a
deactivation every socket of the mitra, on any instance, with 1008 and `logged_out: ...`
/ `account_deactivated: ...` (auth/sockets.py): the client tells the person and does not
reconnect with that login.
A user holds at most WS_MAX_SOCKETS_PER_USER open sockets on one instance: the one past
it closes that user's oldest with 1008 `too_many_sockets: ...` (events/local_sockets.py),
never the new one, so an app reconnecting past a half-dead socket is never locked out;
the closed one's client does not reconnect it.

Each socket has a bounded outbox written by one task: a slow client never slows the
event bus or other clients; one that falls too far behind is closed (1013) and
reconnects with `since`. A replay waits for room in the outbox instead (pages of 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..auth.queries import require_live_session
from ..auth.tokens import Principal, decode_access_token
from ..chat.typing import relay_typing
from ..context import Context
from ..errors import AccountDeactivated, InvalidToken, ServiceUnavailable
from ..events.bus import bus
from ..events.log import position
from ..events.stream import Sequencer, TooFarBehind, resync_frame
from ..logs import get_logger

log = get_logger(__name__)

OUTBOX_SIZE = 256
MAX_CLIENT_MESSAGE = 4096
POLICY_VIOLATION = 1008
UNSUPPORTED_DATA = 1003
MESSAGE_TOO_BIG = 1009
TRY_AGAIN_LATER = 1013


class SlowConsumer(Exception):
    """The socket's outbox is full: the client stopped reading."""


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


class Outbox:
    """What the event bus sees of one socket: `send_text` enqueues, never blocks;
    `offer(seq, text)` hands a recorded event to the socket's sequencer
    (events/stream.py), which sends it to the queue in seq order, exactly once."""

    def __init__(self, login: UUID | None = None) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(OUTBOX_SIZE)
        self.overflowed = asyncio.Event()
        # The auth session this socket belongs to (the token's `sid`), and its end.
        self.login = login
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.end_code = POLICY_VIOLATION
        self.stream: Sequencer | None = None
        # Live-only frames (admin.counts, typing) that arrive between the attachment to
        # the bus and `ready`: sent right after it, so `ready` stays the first frame.
        self._early: list[str] | None = []

    def end(self, reason: str, code: int = POLICY_VIOLATION) -> None:
        """Close this socket with `code` (1008: its login was ended) and `reason`."""
        if not self.ended.is_set():
            self.end_reason = reason
            self.end_code = code
            self.ended.set()

    def sequence(self, ctx: Context, user_id: UUID) -> Sequencer:
        """Give this socket its sequencer (before it is attached to the bus)."""
        self.stream = Sequencer(
            ctx.db,
            user_id,
            put=self.put,
            put_wait=self.queue.put,
            fail=lambda reason: self.end(reason, TRY_AGAIN_LATER),
            metrics=ctx.metrics,
        )
        return self.stream

    def offer(self, seq: int, text: str) -> None:
        if self.stream is None:
            self.put(text)
            return
        try:
            self.stream.offer(seq, text)
        except TooFarBehind:
            self.overflowed.set()  # closed 1013 like a full outbox
            raise

    def catch_up(self, last_seq: int) -> None:
        if self.stream is not None:
            self.stream.catch_up(last_seq)

    async def send_text(self, data: str) -> None:
        if self._early is None:
            self.put(data)
        elif len(self._early) < OUTBOX_SIZE // 2:  # more is a storm: drop
            self._early.append(data)

    def opened(self, *frames: str) -> None:
        """`ready` (and what must follow it at once), then the frames held meanwhile."""
        early, self._early = self._early or [], None
        for frame in (*frames, *early):
            self.put(frame)

    def put(self, data: str) -> None:
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.overflowed.set()
            raise SlowConsumer("the client is not reading its events") from None


def event(type_: str, data: dict[str, Any] | None = None) -> str:
    return json.dumps({"type": type_, "data": data or {}})


async def authenticate(ctx: Context, token: str | None, now: datetime) -> tuple[Principal, float]:
    """The principal and the token's expiry (unix time); InvalidToken when refused,
    AccountDeactivated for a login its mitra's deactivation ended."""
    if not token:
        raise InvalidToken("missing ?token=<access token>")
    principal = decode_access_token(ctx.settings.jwt_secret, token, now)
    expires = float(principal.expires_at)
    try:
        await require_live_session(ctx, principal)
    except ServiceUnavailable:
        # Postgres down or busy: signature and expiry still hold; revocation is re-checked by the
        # token's expiry, which closes this socket.
        log.warning("ws_revocation_unchecked", user_id=str(principal.user_id))
    return principal, expires


async def events_socket(websocket: WebSocket) -> None:
    ctx: Context = websocket.app.state.ctx
    now = ctx.clock.now()
    try:
        principal, expires = await authenticate(ctx, websocket.query_params.get("token"), now)
    except (InvalidToken, AccountDeactivated) as exc:
        await websocket.accept()
        await websocket.close(POLICY_VIOLATION, _reason(f"{exc.code}: {exc.detail}"))
        return
    since = _since(websocket.query_params.get("since"))
    await websocket.accept()
    if isinstance(since, Close):
        await websocket.close(since.code, since.reason)
        return
    outbox = Outbox(principal.session_id)
    stream = outbox.sequence(ctx, principal.user_id)
    # Attached before the log is read: what commits after the read arrives here and is
    # kept by the sequencer until `ready` and the replay are out (the seam: anything
    # both read and delivered is deduped by seq).
    bus(ctx).attach(principal.user_id, outbox)
    try:
        opened = await _open_stream(ctx, websocket, outbox, stream, principal, since)
    except BaseException:
        bus(ctx).detach(principal.user_id, outbox)
        await stream.close()
        raise
    if not opened:
        bus(ctx).detach(principal.user_id, outbox)
        await stream.close()
        return
    # Admins also get `admin.counts` from this instance's feed (console/feed.py).
    feed = websocket.app.state.admin_feed if principal.role == "admin" else None
    if feed is not None:
        feed.watch(principal.user_id)
    tasks = [
        asyncio.create_task(_read(websocket, outbox, ctx, principal)),
        asyncio.create_task(_write(websocket, outbox)),
        asyncio.create_task(_expire(expires - now.timestamp())),
        asyncio.create_task(_ended(outbox)),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        close = next(iter(done)).result()
    except Exception:
        log.exception("ws_failed", user_id=str(principal.user_id))
        close = Close(1011, "internal error")
    finally:
        bus(ctx).detach(principal.user_id, outbox)
        await stream.close()
        if feed is not None:
            feed.unwatch(principal.user_id)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if close is not None and websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):  # the client may be gone already
            await websocket.close(close.code, close.reason)


def _since(raw: str | None) -> int | Close | None:
    """`?since=<seq>`: an integer >= 0, or absent (None); a Close (1008) otherwise."""
    if raw is None:
        return None
    if raw.isascii() and raw.isdigit() and len(raw) <= 18:
        return int(raw)
    return Close(
        POLICY_VIOLATION, "invalid_request: since must be an integer >= 0 of at most 18 digits"
    )


async def _open_stream(
    ctx: Context,
    websocket: WebSocket,
    outbox: Outbox,
    stream: Sequencer,
    principal: Principal,
    since: int | None,
) -> bool:
    """`ready` with the user's `last_seq`, then (with `since`) the replay or
    `resync_required`, then live. False when the socket was closed instead: `since`
    given and Postgres unreachable (1013, the client retries with the same `since`).
    Without `since` and Postgres down, `last_seq` is null and the stream starts at the
    first live event."""
    try:
        async with ctx.db.connection() as conn:
            where = await position(conn, principal.user_id, since or 0)
    except ServiceUnavailable as exc:
        if since is not None:
            reason = f"events_unavailable: {exc.code}; reconnect with since"
            await websocket.close(TRY_AGAIN_LATER, _reason(reason))
            return False
        log.warning("ws_position_unknown", user_id=str(principal.user_id), error=exc.code)
        where = None
    last_seq = None if where is None else where.last_seq
    ready = {"user_id": str(principal.user_id), "role": principal.role, "last_seq": last_seq}
    if where is None or since is None:
        outbox.opened(event("ready", ready))
        stream.start(last_seq)  # live only
    elif not where.retained:
        outbox.opened(event("ready", ready), resync_frame(where.last_seq))
        stream.start(where.last_seq)
    else:
        outbox.opened(event("ready", ready))
        stream.start(since, target=where.last_seq)  # replay (since, last_seq], then live
    return True


async def _read(
    websocket: WebSocket, outbox: Outbox, ctx: Context, principal: Principal
) -> Close | None:
    """Client frames until it disconnects (None) or breaks the protocol (a Close)."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is None:
            return Close(UNSUPPORTED_DATA, "text frames only")
        if len(text) > MAX_CLIENT_MESSAGE:
            return Close(MESSAGE_TOO_BIG, f"client messages are limited to {MAX_CLIENT_MESSAGE}")
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        try:
            frame: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
            kind = frame.get("type")
            if kind == "ping":
                outbox.put(event("pong"))
            elif kind == "typing":
                problem = await relay_typing(ctx, principal, frame.get("data"))
                if problem is not None:
                    outbox.put(event("error", {"error": "invalid_message", "detail": problem}))
            else:
                detail = 'client messages are {"type": "ping"} and {"type": "typing", ...}'
                outbox.put(event("error", {"error": "invalid_message", "detail": detail}))
        except SlowConsumer:
            return Close(TRY_AGAIN_LATER, "too many unread events; reconnect")


async def _write(websocket: WebSocket, outbox: Outbox) -> Close | None:
    """Drain the outbox to the client; ends when the client is gone or fell behind."""
    overflow = asyncio.ensure_future(outbox.overflowed.wait())
    get: asyncio.Future[str] | None = None
    try:
        while True:
            get = asyncio.ensure_future(outbox.queue.get())
            await asyncio.wait({get, overflow}, return_when=asyncio.FIRST_COMPLETED)
            if overflow.done():
                return Close(TRY_AGAIN_LATER, "too many unread events; reconnect")
            try:
                await websocket.send_text(get.result())
            except (WebSocketDisconnect, OSError, RuntimeError):
                return None
    finally:
        overflow.cancel()
        if get is not None:
            get.cancel()


async def _expire(seconds: float) -> Close:
    await asyncio.sleep(max(seconds, 0.0))
    return Close(POLICY_VIOLATION, "token_expired: reconnect with a fresh access token")


async def _ended(outbox: Outbox) -> Close:
    await outbox.ended.wait()
    return Close(outbox.end_code, _reason(outbox.end_reason))


def _reason(text: str) -> str:
    """Close reasons are limited to 123 bytes (RFC 6455)."""
    encoded = text.encode()[:123]
    return encoded.decode(errors="ignore")


routes = [WebSocketRoute("/ws", events_socket)]
