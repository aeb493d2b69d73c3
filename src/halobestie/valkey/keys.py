"""Every Valkey key the project uses, built in one place.

The names are part of the contract (SPEC §1): operators and tests read them. A prefix
(VALKEY_KEY_PREFIX, default empty) lets several deployments share one Valkey. Every key
and the event channel start with it, the seed's temporary keys and the locks included: on
a Valkey Cluster (VALKEY_CLUSTER) the prefix holds a hash tag (`{hb}:`), so all of them
hash to one slot and the scripts and the seed's swap, which touch several, run there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from uuid import UUID

ONLINE = "mitras:online"
DEACTIVATED = "mitras:deactivated"
CAPACITY = "mitra:capacity:"
HEARTBEAT = "mitra:heartbeat:"
SNAPSHOT = "availability:snapshot"
# Not in SPEC §1's table (an addition): the pairing blast's ranked index of who may be
# offered (see ranked.py).
RANKED = "mitras:ranked"
# Not in the contract table; internal bookkeeping of the engine.
SNAPSHOT_LOCK = "availability:snapshot:lock"
# The last snapshot stored, kept longer than its TTL: served (stale, marked by its
# computed_at) while another instance computes the next one.
SNAPSHOT_LAST = "availability:snapshot:last"
SEED_TMP = "mitras:seed-tmp:"
SEEDED = "availability:seeded"
EVENTS = "events:users"
# Not in the contract table: the failed-login counter of one email (auth/throttle.py).
LOGIN_FAILURES = "auth:login-failures:"


@dataclass(frozen=True)
class Keys:
    prefix: str = ""

    @property
    def online(self) -> str:
        return self.prefix + ONLINE

    @property
    def deactivated(self) -> str:
        return self.prefix + DEACTIVATED

    @property
    def ranked(self) -> str:
        """ZSET of online, active mitras below capacity; score = open sessions * 1e13 +
        idle-since (epoch ms). Built by the seed, kept by the write-through (ranked.py)."""
        return self.prefix + RANKED

    def capacity(self, mitra_id: UUID | str) -> str:
        return f"{self.prefix}{CAPACITY}{mitra_id}"

    def heartbeat(self, mitra_id: UUID | str) -> str:
        return f"{self.prefix}{HEARTBEAT}{mitra_id}"

    @property
    def capacity_pattern(self) -> str:
        return f"{self.prefix}{CAPACITY}*"

    @property
    def heartbeat_pattern(self) -> str:
        return f"{self.prefix}{HEARTBEAT}*"

    def id_from(self, key: str | bytes) -> str:
        """The mitra id at the end of a capacity or heartbeat key."""
        text = key.decode() if isinstance(key, bytes) else key
        return text.rsplit(":", 1)[1]

    @property
    def snapshot(self) -> str:
        return self.prefix + SNAPSHOT

    @property
    def snapshot_lock(self) -> str:
        return self.prefix + SNAPSHOT_LOCK

    @property
    def snapshot_last(self) -> str:
        return self.prefix + SNAPSHOT_LAST

    def seed_tmp(self, name: str) -> str:
        return f"{self.prefix}{SEED_TMP}{name}"

    @property
    def seeded(self) -> str:
        return self.prefix + SEEDED

    @property
    def events(self) -> str:
        """The pub/sub channel carrying user events between instances."""
        return self.prefix + EVENTS

    def login_failures(self, email: str) -> str:
        """The failed-login counter of `email` (any case): a string holding an integer,
        with the window's TTL. Named by the first 32 hex digits of the SHA-256 of the
        lower-cased email, so Valkey never holds the address itself."""
        digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        return f"{self.prefix}{LOGIN_FAILURES}{digest}"
