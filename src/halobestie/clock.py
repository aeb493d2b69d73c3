"""Time as a dependency: every timer and sweep takes `now` so tests control time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock tests move by hand; starts at the real time so JWT expiry still works."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        self._now += timedelta(seconds=seconds)
        return self._now

    def set(self, when: datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("ManualClock.set needs a timezone-aware datetime")
        self._now = when


def iso(when: datetime) -> str:
    """Fixed-width ISO-8601 UTC, so that string order equals time order (Lua compares them)."""
    if when.tzinfo is not UTC:  # astimezone costs as much as the formatting
        when = when.astimezone(UTC)
    # isoformat is twice as fast as strftime (the heartbeat formats on every ping);
    # timespec pins the width even when the microseconds are zero.
    return when.isoformat(timespec="microseconds")[:-6] + "Z"


def parse_iso(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed
