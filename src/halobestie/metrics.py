"""Prometheus metrics. One registry per app so tests and several in-process instances
do not share counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.valkey_errors = Counter(
            "halobestie_valkey_errors_total",
            "Availability mirror Valkey operations that failed (reads fell back, writes were"
            " skipped).",
            ["operation"],
            registry=r,
        )
        self.event_bus_errors = Counter(
            "halobestie_event_bus_errors_total",
            "Event bus Valkey operations that failed (publish, subscribe) or were skipped"
            " while its breaker was open (publish_skipped); the availability mirror's are"
            " in halobestie_valkey_errors_total.",
            ["operation"],
            registry=r,
        )
        for operation in ("publish", "publish_skipped", "subscribe"):
            self.event_bus_errors.labels(operation=operation)
        self.event_log_reads = Counter(
            "halobestie_event_log_reads_total",
            "Reads of the event log by sockets (events/stream.py): hole (a delivery out of"
            " order or lost, read after a 50 ms grace), behind (a since replay or the bus"
            " catch-up), resync (events asked for were no longer kept).",
            ["reason"],
            registry=r,
        )
        for reason in ("hole", "behind", "resync"):
            self.event_log_reads.labels(reason=reason)
        self.after_commit_failures = Counter(
            "halobestie_after_commit_failures_total",
            "Effects of a committed write (mirror write-through, events) that failed; the"
            " write stood and was answered as a success, the sweeps heal what the effect"
            " missed (aftercommit.py).",
            ["effect"],
            registry=r,
        )
        self.timers_unhandled_due = Gauge(
            "halobestie_timers_unhandled_due",
            "Due timers of a kind no handler of this instance fires (left unfired, for an"
            " instance that knows the kind), as last seen by this instance's timer runner.",
            registry=r,
        )
        self.fallback_reads = Counter(
            "halobestie_fallback_reads_total",
            "Reads answered from Postgres because the Valkey mirror was not usable.",
            ["reader"],
            registry=r,
        )
        self.drift_found = Counter(
            "halobestie_mirror_drift_found_total",
            "Differences between Valkey and Postgres found by a reseed.",
            registry=r,
        )
        self.drift_healed = Counter(
            "halobestie_mirror_drift_healed_total",
            "Differences between Valkey and Postgres repaired by a reseed.",
            registry=r,
        )
        self.sweep_duration = Histogram(
            "halobestie_sweep_duration_seconds",
            "Duration of each sweep run.",
            ["sweep"],
            registry=r,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
        )
        self.seeds = Counter(
            "halobestie_mirror_seeds_total",
            "Full seeds of the Valkey mirror from Postgres.",
            ["reason"],
            registry=r,
        )
        # Pre-create the known series so that a scrape shows them at 0 from the start
        # (an absent series and a zero one look different to alerting rules).
        for operation in (
            "heartbeat",
            "beacon",
            "reachability",
            "find_available",
            "dashboard",
            "sync_mitras",
            "seed",
            "auto_offline",
            "writeback",
        ):
            self.valkey_errors.labels(operation=operation)
        for reader in (
            "heartbeat",
            "beacon",
            "reachability",
            "find_available",
            "dashboard",
            "pairing",
        ):
            self.fallback_reads.labels(reader=reader)
        for sweep in ("auto_offline", "heartbeat_writeback", "reseed"):
            self.sweep_duration.labels(sweep=sweep)
        self.db_pool_exhausted = Counter(
            "halobestie_db_pool_exhausted_total",
            "Requests answered 503 overloaded: every pooled Postgres connection stayed busy"
            " for DATABASE_TIMEOUT_SECONDS (Postgres itself was reachable).",
            registry=r,
        )
        self.db_bounds_reached = Counter(
            "halobestie_db_bounds_reached_total",
            "Statements Postgres stopped at a bound: bound=lock_timeout (a lock stayed held"
            " for DATABASE_LOCK_TIMEOUT_SECONDS), statement_timeout (ran for"
            " DATABASE_STATEMENT_TIMEOUT_SECONDS), conflict_retry (aborted by Postgres for a"
            " conflicting transaction: deadlock or serialization failure).",
            ["bound"],
            registry=r,
        )
        for bound in ("lock_timeout", "statement_timeout", "conflict_retry"):
            self.db_bounds_reached.labels(bound=bound)
        self.stalled_backends_terminated = Counter(
            "halobestie_db_stalled_backends_terminated_total",
            "Backends of a stalled instance (frozen mid-statement, or idle holding an"
            " advisory lock) that this instance terminated to free their locks.",
            ["kind"],
            registry=r,
        )
        for kind in ("mid_statement", "idle_holding_advisory_lock"):
            self.stalled_backends_terminated.labels(kind=kind)
        self.snapshot_computations = Counter(
            "halobestie_availability_snapshot_computations_total",
            "Beacon snapshots computed (the rest were served from the shared cache).",
            ["source"],
            registry=r,
        )
