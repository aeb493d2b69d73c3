"""What one benchmark run (run.py) measures and for how long: the full run of
`./scripts/bench`, or `--quick`."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import pairing_scale


@dataclass(frozen=True)
class Plan:
    quick: bool
    sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    trials: int = 5  # interleaved HTTP trials per target
    seconds: float = 6.0  # one wrk trial
    warmup: float = 2.0
    connections: int = 50
    beacon_trials: int = 3
    beacon_seconds: float = 4.0
    pairing: pairing_scale.ScalePlan = field(default_factory=pairing_scale.ScalePlan)
    sweep_trials: int = 5
    counted_requests: int = 500
    profile: bool = False  # py-spy flamegraphs of the heartbeat and of find-available
    # Closed sessions per mitra, for stages up to this size (larger: none); quick skips
    # the 100k stage's 1.8M rows.
    history_up_to: int = 10**9

    @classmethod
    def make(cls, quick: bool, profile: bool = False) -> Plan:
        if not quick:
            return cls(quick=False, profile=profile)
        return cls(
            quick=True,
            profile=profile,
            trials=2,
            seconds=2.0,
            warmup=1.0,
            beacon_trials=1,
            beacon_seconds=2.0,
            pairing=pairing_scale.ScalePlan.quick(),
            history_up_to=10_000,
            sweep_trials=2,
            counted_requests=200,
        )

    def iterations(self, size: int) -> int:
        full = {1_000: 30, 10_000: 20, 100_000: 7}
        quick = {1_000: 10, 10_000: 7, 100_000: 3}
        return (quick if self.quick else full).get(size, 5)
