"""Production topologies (issue 12, SPEC §8): Sentinel failover, cluster mode, PgBouncer,
Postgres failover. Each test starts its own servers from real binaries, is bounded in time,
and stops everything it started; all carry the `topology` marker (run by default)."""
