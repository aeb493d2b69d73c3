"""The domain's shared concepts (SPEC §1): one definition and one name each, used by
every query that needs them, in SQL and in Python. Plumbing: pure definitions, no I/O.

* **Open session**: a chat session in `active` or `pending_payment`. Open sessions count
  against their mitra's capacity (MITRA_MAX_CONCURRENT_SESSIONS). A mitra's number of
  them is its *open sessions*: kept on `mitras.open_sessions` in the transaction of each
  session change (`availability/load.py`) and mirrored in Valkey. The contract names the
  same count `mitra:capacity:<id>` (the Valkey key), `active_sessions` (the admin and
  mitra status API) and `capacity` (the drift report); internally it is open sessions.
* **Reachable** mitra: online, not deactivated, and a heartbeat younger than
  HEARTBEAT_STALE_SECONDS (capacity aside).
* **Available** mitra: reachable, and fewer open sessions than
  MITRA_MAX_CONCURRENT_SESSIONS.

Valkey applies the same definitions to the mirror (`availability/queries.py` reads the
pool, the Lua scripts guard heartbeats and picks); the SQL below is for Postgres.
"""

from __future__ import annotations

from typing import Literal

SessionStatus = Literal["pending_payment", "active", "ended", "expired", "cancelled", "rerouted"]
# In the order of the partial index's predicate (migration 0001).
OPEN_SESSION_STATUSES: tuple[SessionStatus, ...] = ("active", "pending_payment")


def open_session(status: str = "status") -> str:
    """SQL: the `status` column (or expression) is an open session's. The statuses are
    literals, never a parameter: the planner then matches the partial index
    `chat_sessions_open_by_mitra_idx`, which has this very predicate, in every plan."""
    return f"{status} IN ({', '.join(repr(s) for s in OPEN_SESSION_STATUSES)})"


def reachable(mitra: str, cutoff: str) -> str:
    """SQL: the `mitras` row aliased `mitra` is reachable; `cutoff` is the placeholder of
    now - HEARTBEAT_STALE_SECONDS."""
    return f"{mitra}.is_online AND {mitra}.is_active AND {mitra}.last_heartbeat_at > {cutoff}"


def available(mitra: str, cutoff: str, max_sessions: str) -> str:
    """SQL: the `mitras` row aliased `mitra` is available; `max_sessions` is the
    placeholder of MITRA_MAX_CONCURRENT_SESSIONS."""
    return f"{reachable(mitra, cutoff)} AND {mitra}.open_sessions < {max_sessions}"
