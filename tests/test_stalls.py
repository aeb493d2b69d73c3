"""Which backends the stall reaper terminates (stalls.pick_stalled), look by look. The
reaper against real processes is in tests/multi/test_stalled_instance.py and
tests/failures/test_stalled_holders.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from halobestie.stalls import pick_stalled

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BOUNDS = {"mid_statement": 2.0, "idle_holding": 5.0}


def row(pid: int, state: str, age: float, *, advisory: bool = False, since: int = 0) -> Any:
    return {
        "pid": pid,
        "state": state,
        "state_change": T0 + timedelta(seconds=since),
        "application_name": f"halobestie pid={pid}",
        "age": age,
        "advisory": advisory,
    }


def test_a_backend_waiting_mid_statement_is_terminated_only_when_seen_twice_past_the_bound() -> (
    None
):
    seen: dict[int, datetime] = {}
    assert pick_stalled([row(1, "active", 2.5)], seen, **BOUNDS) == []  # first look
    [stalled] = pick_stalled([row(1, "active", 3.0)], seen, **BOUNDS)
    assert (stalled.pid, stalled.kind) == (1, "mid_statement")


def test_a_backend_mid_statement_under_the_bound_is_left_alone() -> None:
    seen: dict[int, datetime] = {}
    for age in (0.5, 1.0, 1.9):
        assert pick_stalled([row(1, "active", age)], seen, **BOUNDS) == []


def test_a_backend_that_moved_on_between_two_looks_is_left_alone() -> None:
    """Another statement began (a new state_change), or it was not waiting at the last
    look: a healthy client that happened to be caught twice in a microsecond gap."""
    seen: dict[int, datetime] = {}
    pick_stalled([row(1, "active", 2.5, since=0)], seen, **BOUNDS)
    assert pick_stalled([row(1, "active", 2.6, since=1)], seen, **BOUNDS) == []
    pick_stalled([], seen, **BOUNDS)
    assert pick_stalled([row(1, "active", 3.0, since=1)], seen, **BOUNDS) == []


def test_an_idle_backend_is_terminated_only_when_it_holds_an_advisory_lock_past_its_bound() -> None:
    seen: dict[int, datetime] = {}
    rows = [
        row(1, "idle", 60.0),  # an idle pooled connection: none of our business
        row(2, "idle", 4.0, advisory=True),  # the seed writing Valkey under its lock
        row(3, "idle", 6.0, advisory=True),  # stalled holding it
    ]
    [stalled] = pick_stalled(rows, seen, **BOUNDS)
    assert (stalled.pid, stalled.kind) == (3, "idle_holding_advisory_lock")
