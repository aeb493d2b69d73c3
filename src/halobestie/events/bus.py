"""The event bus: hands events to the users' WebSockets on whichever instance they are
connected to.

Recorded events (SPEC §6: numbered per user, stored in Postgres in the transaction of their
change, events/log.py) arrive after commit through `deliver_frames`: the recording instance
offers each frame to its own sockets, then PUBLISHes the batch on one Valkey channel with
its instance id; every other instance's subscriber offers them to its sockets (and skips
its own messages). Each socket orders and dedupes by `seq` and reads any hole from Postgres
(events/stream.py). Pub/sub is at most once, so the bus also *catches up* from Postgres:
one query for the last seq of every user with a socket here, at once when the subscriber
subscribes again, every second while it is unsubscribed, and every CATCH_UP_SECONDS as a
safety net. A Valkey outage therefore delays cross-instance events; it loses none. Live-only
frames (`typing`) go through `publish`: best effort, never recorded, no `seq`.

Events are their own failure domain (`valkey/breaker.py`): PUBLISH goes through a client
and a breaker of the bus's own, so a failed PUBLISH costs delay (counted in
`halobestie_event_bus_errors_total`), never the availability mirror's trust, and a mirror
failure never stops events. The subscriber holds one pub/sub connection of its own (never
one of the mirror's pooled connections). It notices a dead server either by the
connection dropping or, on a silent network partition, by its own PINGs going
unanswered; then it reconnects with capped, jittered backoff. Sockets are never touched
by any of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from ..context import Context, Slot
from ..db import Database
from ..errors import ServiceUnavailable
from ..logs import get_logger
from ..metrics import Metrics
from ..valkey.breaker import Breaker
from ..valkey.client import VALKEY_FAILURES, connect
from ..valkey.keys import Keys
from ..valkey.topology import ValkeyEndpoint
from ..valkey.topology import endpoint as valkey_endpoint
from .local_sockets import LocalSockets
from .log import last_seqs
from .sockets import Sequenced

log = get_logger(__name__)

# Subscriber cadence. A PING every PING_SECONDS; no reply of any kind for
# DEAD_AFTER_SECONDS means the link is gone (a partition never closes the socket).
PING_SECONDS = 1.0
DEAD_AFTER_SECONDS = 3.0
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
# The safety net under pub/sub: how often each instance checks in Postgres (one query)
# whether its sockets' users got events it never heard of.
CATCH_UP_SECONDS = 5.0


class SubscriberLost(Exception):
    """The pub/sub link stopped answering; reconnect."""


LINK_FAILURES: tuple[type[BaseException], ...] = (*VALKEY_FAILURES, SubscriberLost)


class EventBus(LocalSockets):
    """This instance's sockets (LocalSockets, local_sockets.py), and what crosses instances."""

    def __init__(
        self,
        metrics: Metrics,
        keys: Keys,
        url: str | ValkeyEndpoint,
        *,
        publish_timeout: float,
        retry_after: float,
        operation_timeout: float = 1.0,
        enabled: bool = True,
        db: Database | None = None,
        catch_up_seconds: float = CATCH_UP_SECONDS,
        max_sockets_per_user: int | None = None,
    ) -> None:
        """`publish_timeout` bounds a PUBLISH (VALKEY_OPERATION_TIMEOUT_SECONDS). The
        subscriber is the domain's probe: losing its link opens the breaker, subscribing
        again closes it; a failed PUBLISH opens it too, and the next is tried `retry_after`
        seconds later (half-open). While it is open, events reach this instance's sockets
        only. `operation_timeout` bounds the subscriber's commands. `enabled` False
        (VALKEY_MIRROR_ENABLED=false, the design before Valkey that benchmarks measure):
        nothing is published to Valkey. `db`: where the catch-up reads the users' last
        seqs (none: no catch-up), every `catch_up_seconds` and at once whenever the
        subscriber subscribes again. `max_sockets_per_user`: LocalSockets' bound."""
        super().__init__(max_sockets_per_user)
        self.keys = keys
        self.enabled = enabled
        self.breaker = Breaker("events", metrics.event_bus_errors, retry_after=retry_after)
        self._client = connect(url, operation_timeout=publish_timeout)
        self.instance_id = uuid.uuid4().hex
        self._url = url
        self._operation_timeout = operation_timeout
        self._task: asyncio.Task[None] | None = None
        # Checked as well as cancelling: on 3.11 a cancel can be swallowed by a library's
        # asyncio.wait_for, and stop() must not wait forever for it.
        self._stopping = False
        # True while this instance receives other instances' events.
        self.subscribed = False
        self.reconnects = 0
        self._db = db
        self._catch_up_seconds = catch_up_seconds
        self._catch_up_now = asyncio.Event()
        self._catch_up_task: asyncio.Task[None] | None = None
        self.catch_ups = 0

    # -- ending sockets, here and on the other instances -------------------------

    async def end_sockets(self, user_id: UUID, login: UUID | None, reason: str) -> None:
        """After commit of a logout (one login) or a deactivation (`login` None: all of the
        user's): end the sockets here, then tell every other instance over pub/sub. Never
        raises; with Valkey down the other instances' login re-check ends theirs
        (auth/sockets.py)."""
        user, only = str(user_id), None if login is None else str(login)
        self.end_local(user, only, reason)
        end = {"user": user, "login": only, "reason": reason}
        await self._publish_envelope(json.dumps({"origin": self.instance_id, "end": end}), "end")

    # -- publishing --------------------------------------------------------------

    async def deliver_frames(self, frames: list[tuple[str, int, str]]) -> None:
        """After commit: recorded events `(user, seq, frame)` to their users' sockets here,
        then to the other instances over pub/sub. Never raises, never blocks on a dead
        Valkey; what pub/sub loses, the catch-up reads from Postgres."""
        if not frames:
            return
        try:
            await self.deliver_local_frames(frames)
        except Exception:  # a socket bug must not fail the request that published
            log.exception("event_local_delivery_failed")
        envelope = json.dumps({"origin": self.instance_id, "frames": frames})
        await self._publish_envelope(envelope, "publish")

    async def publish(self, user_ids: Iterable[UUID], type_: str, data: dict[str, Any]) -> None:
        """Live only, never recorded and without `seq` (`typing`): best effort, after
        commit: never raises, never blocks on a dead Valkey. Recorded events go through
        events/announce.py."""
        users = sorted({str(u) for u in user_ids})
        if not users:
            return
        text = json.dumps({"type": type_, "data": data}, default=str)
        try:
            await self.deliver_local(users, text)
        except Exception:  # a socket bug must not fail the request that published
            log.exception("event_local_delivery_failed", type=type_)
        envelope = json.dumps({"origin": self.instance_id, "users": users, "event": text})
        await self._publish_envelope(envelope, "publish")

    async def _publish_envelope(self, envelope: str, operation: str) -> None:
        if not self.enabled:
            return
        if not self.breaker.allows():
            self.breaker.skipped(operation)
            return
        try:
            await self._client.publish(self.keys.events, envelope)
        except VALKEY_FAILURES as exc:
            self.breaker.failed(operation, exc)
        else:
            self.breaker.close()

    # -- receiving other instances' events ---------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._subscribe_forever(), name="events-subscriber")
        if self._catch_up_task is None and self._db is not None:
            self._catch_up_task = asyncio.create_task(self._catch_up_forever(), name="catch-up")

    async def stop(self) -> None:
        task, self._task = self._task, None
        catching, self._catch_up_task = self._catch_up_task, None
        self._stopping = True
        self._catch_up_now.set()
        for running in (task, catching):
            if running is not None:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
        self.subscribed = False
        await self._client.aclose()

    async def _subscribe_forever(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stopping:
            try:
                await self._subscribe_once()
            except asyncio.CancelledError:
                raise
            except LINK_FAILURES as exc:
                self.breaker.failed("subscribe", exc)
                if self.subscribed or backoff == BACKOFF_FIRST:
                    log.warning("events_subscriber_lost", error=repr(exc))
            except Exception:  # the subscriber must never die
                log.exception("events_subscriber_failed")
            if self.subscribed:
                backoff = BACKOFF_FIRST  # it worked for a while: retry soon
            self.subscribed = False
            self.reconnects += 1
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # noqa: S311
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _subscribe_once(self) -> None:
        # Reads wait for messages (liveness is our PING); no quick retry: a lost link is
        # this loop's to notice, count and resubscribe.
        timeout = self._operation_timeout
        client = connect(self._url, operation_timeout=timeout, per_read_timeout=False, retry=False)
        pubsub = client.pubsub()
        try:
            # asyncio.timeout throughout, never wait_for: on 3.11 wait_for can swallow
            # stop()'s cancel when the operation completes at that instant.
            async with asyncio.timeout(self._operation_timeout):
                await pubsub.subscribe(self.keys.events)
            loop = asyncio.get_running_loop()
            heard = pinged = loop.time()
            while not self._stopping:
                message = await pubsub.get_message(timeout=PING_SECONDS / 2)
                now = loop.time()
                if message is not None:
                    heard = now
                    await self._on_message(message)
                if now - heard > DEAD_AFTER_SECONDS:
                    raise SubscriberLost(f"no answer from Valkey for {now - heard:.1f}s")
                if now - pinged >= PING_SECONDS:
                    pinged = now
                    async with asyncio.timeout(self._operation_timeout):
                        await pubsub.ping()
        finally:
            for closing in (pubsub.aclose, client.aclose):
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self._operation_timeout):
                        await closing()

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            if not self.subscribed:
                log.info("events_subscribed", channel=self.keys.events)
            self.subscribed = True
            self.breaker.close()  # Valkey answers again: publish without waiting
            self._catch_up_now.set()  # what pub/sub lost meanwhile, from Postgres
            return
        if kind != "message":
            return  # pong
        try:
            envelope = json.loads(message["data"])
            if isinstance(envelope, dict) and "end" in envelope:
                self._on_end(envelope)
                return
            if isinstance(envelope, dict) and "frames" in envelope:
                if envelope.get("origin") != self.instance_id:
                    frames = [(str(u), int(q), str(t)) for u, q, t in envelope["frames"]]
                    await self.deliver_local_frames(frames)
                return
            origin, users, text = envelope["origin"], envelope["users"], envelope["event"]
            if not (isinstance(users, list) and isinstance(text, str)):
                raise TypeError("users must be a list and event a string")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("event_envelope_invalid", error=repr(exc))
            return
        if origin == self.instance_id:
            return  # delivered locally when published
        try:
            await self.deliver_local([str(u) for u in users], text)
        except Exception:
            log.exception("event_remote_delivery_failed")

    # -- catching up from Postgres -----------------------------------------------

    async def _catch_up_forever(self) -> None:
        """Every `catch_up_seconds` (every PING_SECONDS while unsubscribed), and at once
        when the subscriber subscribes again: `catch_up`. Never dies."""
        while not self._stopping:
            wait = self._catch_up_seconds if self.subscribed else PING_SECONDS
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._catch_up_now.wait()
            self._catch_up_now.clear()
            if self._stopping:
                return
            try:
                await self.catch_up()
            except ServiceUnavailable as exc:
                log.info("events_catch_up_skipped", error=exc.code)
            except Exception:
                log.exception("events_catch_up_failed")

    async def catch_up(self) -> int:
        """One query for the last seq of every user with a socket here; each socket
        behind its user's log reads the rest from Postgres (events/stream.py). Heals
        what pub/sub lost (Valkey down, a PUBLISH that failed): delivery at least once
        from here, exactly once on the socket (deduped by seq). Returns how many of
        those users have events (each socket itself reads only what it lacks). Raises
        ServiceUnavailable when Postgres is."""
        if self._db is None:
            return 0
        users = [
            UUID(user)
            for user, sockets in self._sockets.items()
            if any(isinstance(s, Sequenced) for s in sockets)
        ]
        if not users:
            return 0
        async with self._db.connection() as conn:
            last = await last_seqs(conn, users)
        for user_id, seq in last.items():
            for socket in list(self._sockets.get(str(user_id), ())):
                if isinstance(socket, Sequenced):
                    socket.catch_up(seq)
        self.catch_ups += 1
        return len(last)

    def _on_end(self, envelope: dict[str, Any]) -> None:
        """Another instance's logout or deactivation: end this instance's sockets of it."""
        end = envelope["end"]
        if envelope.get("origin") == self.instance_id:
            return  # ended locally before publishing
        user, login, reason = end["user"], end.get("login"), end["reason"]
        if not (isinstance(user, str) and isinstance(reason, str)):
            raise TypeError("end needs a user and a reason")
        self.end_local(user, login if isinstance(login, str) else None, reason)


def _build(ctx: Context) -> EventBus:
    settings = ctx.settings
    return EventBus(
        ctx.metrics,
        ctx.keys,
        valkey_endpoint(settings),
        publish_timeout=settings.valkey_operation_timeout_seconds,
        retry_after=settings.valkey_probe_interval_seconds,
        operation_timeout=max(settings.valkey_operation_timeout_seconds, 1.0),
        enabled=settings.valkey_mirror_enabled,
        db=ctx.db,
        max_sockets_per_user=settings.ws_max_sockets_per_user,
    )


BUS: Slot[EventBus] = Slot("event bus", _build)


def bus(ctx: Context) -> EventBus:
    """This instance's event bus (the runtime starts and stops its subscriber)."""
    return ctx.get(BUS)
