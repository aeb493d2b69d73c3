"""Postgres advisory locks that order mirror writes against each other and the seed.

Per-mitra writers hold the seed lock *shared* and the mitra's lock exclusive while they
read the mitra's committed state and write it to Valkey; the seed holds the seed lock
exclusive while it reads its snapshot and swaps the sets in. So the last writer to take
a mitra's lock always writes the newest committed state, and no write can fall between a
seed's snapshot and its swap. Two-int keys (seed, sweeps) and bigint keys (mitras) live
in separate lock spaces in Postgres, so they cannot collide.
"""

from __future__ import annotations

NAMESPACE = 4242
SEED = 1
AUTO_OFFLINE = 2
HEARTBEAT_WRITEBACK = 3
RESEED_SWEEP = 4

# hashtextextended maps a uuid to a bigint; a collision only serialises two mitras.
LOCK_MITRAS = """
SELECT pg_advisory_lock_shared($1::int, $2::int),
       (SELECT count(pg_advisory_lock(k)) FROM (
            SELECT DISTINCT hashtextextended(id::text, 0) AS k
            FROM unnest($3::uuid[]) AS id ORDER BY 1) AS keys)
"""
UNLOCK_MITRAS = """
SELECT (SELECT count(pg_advisory_unlock(k)) FROM (
            SELECT DISTINCT hashtextextended(id::text, 0) AS k
            FROM unnest($3::uuid[]) AS id) AS keys),
       pg_advisory_unlock_shared($1::int, $2::int)
"""
