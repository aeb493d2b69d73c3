"""Two bounds on logins (docs/subsystems/auth.md, "Login throttle"):

* `hashing(ctx)`: at most LOGIN_MAX_CONCURRENT_HASHES password hashes run at once on
  this instance (default: the CPU count), and 16 times as many (at least 32) may wait
  for one (`waiting_room`); past that, HashingOverloaded (503 `overloaded`, Retry-After)
  at once. A hash is ~0.3 s of CPU in a worker thread here (passwords.py): unbounded,
  150 concurrent logins queued 150 hashes behind the CPU (36 s) and starved everything
  else the instance serves.
* a rate limit per email in Valkey, a fixed window: `refuse_if_throttled` before the
  hash, `count_failure` after a wrong password, `forget_failures` after a right one.
  LOGIN_FAILURE_LIMIT failures within LOGIN_FAILURE_WINDOW_SECONDS (the window starts at
  the first failure: the key's TTL) and every login for that email, right password or
  not, is TooManyAttempts (429 `too_many_attempts`, Retry-After: the TTL left) until the
  key expires. The window is Valkey's clock (the TTL), not the app's `now`.

Valkey unreachable (or VALKEY_MIRROR_ENABLED=false): the limit is not applied (fail
open: logins keep working, each still bounded by the hashing slots) and nothing is
read from or written to Postgres for it. Each check costs one Valkey round trip, bounded
by VALKEY_OPERATION_TIMEOUT_SECONDS and the mirror's breaker.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from ..context import Context, Slot
from ..errors import HashingOverloaded, MirrorUnavailable, TooManyAttempts
from ..logs import get_logger

log = get_logger(__name__)


class HashGate:
    """`slots` hashes at once, `max_waiting` more waiting; the rest refused. Per instance."""

    def __init__(self, slots: int, max_waiting: int) -> None:
        self.slots = slots
        self.max_waiting = max_waiting
        self.waiting = 0
        self._free = asyncio.Semaphore(slots)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one hashing slot. HashingOverloaded when all are taken and `max_waiting`
        callers already wait: a waiter waits for at most max_waiting / slots hashes."""
        if self._free.locked() and self.waiting >= self.max_waiting:
            raise HashingOverloaded(
                "too many logins at once on this server; retry after Retry-After"
            )
        self.waiting += 1
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._free.release()


def waiting_room(slots: int) -> int:
    """Logins that may wait for a slot: 16 per slot, at least 32. Room for a real burst (a
    sign-up wave, a client test suite registering a few dozen users at once; the demo
    traffic registers 4 at a time) even on a 1-core instance, for a wait of at most 16
    hashes per slot (argon2-cffi's defaults, 64 MiB and 3 passes: ~0.3 s each on this
    2-core VM, so ~5 s for the last admitted), while most of a burst of 150 is refused at
    once (benchmarks/login_burst.py: 115 of 150 here, within 2 s)."""
    return max(32, 16 * slots)


def _build(ctx: Context) -> HashGate:
    slots = ctx.settings.hash_concurrency
    return HashGate(slots, waiting_room(slots))


HASH_GATE: Slot[HashGate] = Slot("hash gate", _build)


def hashing(ctx: Context) -> AbstractAsyncContextManager[None]:
    """`async with hashing(ctx):` around a password hash or verification."""
    return ctx.get(HASH_GATE).slot()


# The count and the TTL left (ms) of one counter, in one round trip.
_READ = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}"
# INCR, and the window's TTL when the key has none (the first failure of a window). A
# key left without a TTL would refuse that email forever: PTTL < 0 covers it too.
_COUNT = (
    "local n = redis.call('INCR', KEYS[1])"
    " if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end"
    " return n"
)


async def refuse_if_throttled(ctx: Context, email: str) -> int:
    """TooManyAttempts when `email` has LOGIN_FAILURE_LIMIT failures in its current
    window; else its failures so far (0 when Valkey cannot tell: fail open)."""
    key = ctx.keys.login_failures(email)

    async def read(client: Any) -> tuple[int, int]:
        count, ttl_ms = await client.eval(_READ, 1, key)
        return int(count or 0), int(ttl_ms)

    try:
        count, ttl_ms = await ctx.mirror.raw("login_failures", read)
    except MirrorUnavailable:
        log.info("login_throttle_unchecked", reason="valkey unavailable")
        return 0
    if count >= ctx.settings.login_failure_limit and ttl_ms > 0:
        retry_after = math.ceil(ttl_ms / 1000)
        log.info("login_throttled", retry_after=retry_after)
        raise TooManyAttempts(
            f"too many failed logins for this email; retry in {retry_after} s", retry_after
        )
    return count


async def count_failure(ctx: Context, email: str) -> None:
    """One more failed login for `email`; skipped when Valkey is unavailable."""
    key = ctx.keys.login_failures(email)
    window_ms = max(1, round(ctx.settings.login_failure_window_seconds * 1000))
    await ctx.mirror.write("login_failures", lambda c: c.eval(_COUNT, 1, key, window_ms))


async def forget_failures(ctx: Context, email: str) -> None:
    """A right password under the limit: its email starts from zero again."""
    key = ctx.keys.login_failures(email)
    await ctx.mirror.write("login_failures", lambda c: c.delete(key))
