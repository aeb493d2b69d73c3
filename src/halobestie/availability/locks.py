"""Postgres advisory locks that order mirror writes against each other and the seed.

Per-mitra writers hold the seed lock *shared* and the mitra's lock exclusive while they
read the mitra's committed state and write it to Valkey; the seed holds the seed lock
exclusive while it reads its snapshot and swaps the sets in. So the last writer to take
a mitra's lock always writes the newest committed state, and no write can fall between a
seed's snapshot and its swap. Two-int keys (seed, sweeps) and bigint keys (mitras) live
in separate lock spaces in Postgres, so they cannot collide.

Which kind, and where (behind PgBouncer in transaction mode a session-level lock taken and
released in separate statements can be taken on one server connection and released on
another, or released by another client's reset): the mitra writers' and the sweeps'
try-locks are transaction-level, taken inside the transaction that spans their critical
section (safe through a pooler); the seed's is session-level, because it is held across
a Valkey swap that can outlast the idle-in-transaction bound, so it is taken on a direct
connection (`Database.direct`, DATABASE_DIRECT_URL). Both kinds conflict with each other
in Postgres, so writers and the seed still exclude each other.
"""

from __future__ import annotations

NAMESPACE = 4242
SEED = 1
AUTO_OFFLINE = 2
HEARTBEAT_WRITEBACK = 3
RESEED_SWEEP = 4
# The event log's retention sweep (events/retention.py keeps a copy: it sits below us).
EVENT_RETENTION = 5

# hashtextextended maps a uuid to a bigint; a collision only serialises two mitras.
# Transaction-level: held until the writer's transaction ends (sync.py).
LOCK_MITRAS = """
SELECT pg_advisory_xact_lock_shared($1::int, $2::int),
       (SELECT count(pg_advisory_xact_lock(k)) FROM (
            SELECT DISTINCT hashtextextended(id::text, 0) AS k
            FROM unnest($3::uuid[]) AS id ORDER BY 1) AS keys)
"""
