"""A breaker per failure domain.

Two parts of the engine use Valkey, and each has a breaker of its own, so that trouble
seen by one never changes what the other does:

- the availability mirror (`mirror.py`): its breaker, once open, is closed only by the
  mirror's background probe, and readers trust Valkey again only after a reseed;
- the event bus (`events/bus.py`): PUBLISH, half-open after a probe interval. A failed
  PUBLISH costs events (hints: clients refetch over REST), never a distrusted mirror and
  a full reseed; a failed mirror read never stops events.

The first failed operation opens a breaker, so an outage costs one timeout, not one per
request. Every failure, and every operation skipped while open, is counted in the
domain's counter (label `operation`; skipped ones as `<operation>_skipped`).
"""

from __future__ import annotations

import time

from prometheus_client import Counter

from ..logs import get_logger

log = get_logger(__name__)


class Breaker:
    """`domain` names it in logs; `errors` is the domain's counter. `retry_after`
    (seconds): an open breaker lets operations try again after it (half-open; the first
    success closes it, a failure opens it for another `retry_after`); None: only
    `close()` closes it."""

    def __init__(
        self,
        domain: str,
        errors: Counter,
        *,
        retry_after: float | None = None,
        closed: bool = True,
    ) -> None:
        self.domain = domain
        self.errors = errors
        self.retry_after = retry_after
        self._closed = closed
        self._opened_at = 0.0

    @property
    def closed(self) -> bool:
        """Commands may be sent (the last operation worked, or the probe says so)."""
        return self._closed

    def allows(self) -> bool:
        """Closed, or open long enough to try again (half-open)."""
        if self._closed:
            return True
        if self.retry_after is None:
            return False
        return time.monotonic() - self._opened_at >= self.retry_after

    def failed(self, operation: str, exc: BaseException) -> None:
        """An operation failed: counted, logged when this opens the breaker, open."""
        self.errors.labels(operation=operation).inc()
        if self._closed:
            log.warning(
                "valkey_unreachable", domain=self.domain, operation=operation, error=repr(exc)
            )
        self.open()

    def skipped(self, operation: str) -> None:
        """An operation not even tried because the breaker is open: counted."""
        self.errors.labels(operation=f"{operation}_skipped").inc()

    def open(self) -> None:
        self._closed = False
        self._opened_at = time.monotonic()

    def close(self) -> None:
        if not self._closed:
            log.info("valkey_reachable", domain=self.domain)
        self._closed = True
