"""Settings: the only module that reads the environment.

Every duration accepts small values (1 s) so tests and demos run fast; a bad value
fails at startup with pydantic's message, which names the variable.
"""

from __future__ import annotations

import os
from functools import cached_property
from urllib.parse import urlsplit

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import pghosts
from .settings_types import (
    Origins,
    Seconds,
    SentinelAddresses,
    WaitSeconds,
    WarningSeconds,
    check_valkey_topology,
)

# Secrets that are fine on a laptop and fatal anywhere else.
DEV_JWT_SECRET = "dev-only-jwt-secret-change-me-0123456789abcdef"  # noqa: S105
DEV_WEBHOOK_SECRET = "dev-only-webhook-secret-change-me"  # noqa: S105
# CORS_ALLOWED_ORIGINS of `halobestie dev` when unset: the usual front-end dev servers
# (React/Next 3000, Vite 5173, Angular 4200, Vue CLI 8080), by both local names.
DEV_CORS_ALLOWED_ORIGINS = ",".join(
    f"http://{host}:{port}"
    for port in (3000, 5173, 4200, 8080)
    for host in ("localhost", "127.0.0.1")
)


class DatabaseSettings(BaseSettings):
    """What `migrate` and `create-admin` need: only the database."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str = Field(alias="DATABASE_URL")
    # A connection that bypasses a pooler in front of DATABASE_URL (PgBouncer in transaction
    # mode) for what needs a server session of its own: LISTEN, the seed's advisory lock,
    # the stall reaper, migrations (docs/subsystems/failures.md, "PgBouncer").
    database_direct_url: str | None = Field(default=None, alias="DATABASE_DIRECT_URL")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("DATABASE_URL must start with postgresql:// or postgres://")
        if not parts.path.strip("/"):
            raise ValueError("DATABASE_URL must name a database (postgresql://host/dbname)")
        pghosts.check_database_url(value)  # several hosts (SPEC §8): each well formed
        return value

    @cached_property
    def asyncpg_dsn(self) -> str:
        """What every connection uses (pghosts.connect): the postgresql:// scheme, and
        target_session_attrs=read-write when DATABASE_URL names several hosts."""
        return pghosts.asyncpg_dsn(self.database_url)

    @field_validator("database_direct_url")
    @classmethod
    def _check_database_direct_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if urlsplit(value).scheme not in ("postgresql", "postgres"):
            raise ValueError("DATABASE_DIRECT_URL must start with postgresql:// or postgres://")
        if not urlsplit(value).path.strip("/"):
            raise ValueError("DATABASE_DIRECT_URL must name a database (postgresql://host/dbname)")
        pghosts.check_database_url(value)
        return value

    @cached_property
    def direct_dsn(self) -> str:
        """DATABASE_DIRECT_URL normalised like `asyncpg_dsn`; `asyncpg_dsn` when unset."""
        if self.database_direct_url is None:
            return self.asyncpg_dsn
        return pghosts.asyncpg_dsn(self.database_direct_url)

    @property
    def database_pooled(self) -> bool:
        """DATABASE_URL goes through a transaction pooler: a distinct direct URL says so
        (db.Database then sends no session settings through the pooler)."""
        return self.direct_dsn != self.asyncpg_dsn


class Settings(DatabaseSettings):
    env: str = Field(default="production", alias="HALOBESTIE_ENV")
    valkey_url: str = Field(alias="VALKEY_URL")
    valkey_key_prefix: str = Field(default="", alias="VALKEY_KEY_PREFIX", max_length=64)
    # SPEC §8: with Sentinels, they name the primary; VALKEY_URL keeps credentials, db, TLS.
    valkey_sentinels: SentinelAddresses = Field(default=(), alias="VALKEY_SENTINELS")
    valkey_sentinel_master: str = Field(
        default="mymaster", alias="VALKEY_SENTINEL_MASTER", pattern=r"^[A-Za-z0-9._-]{1,64}$"
    )
    # The Sentinels' own credentials (their `requirepass`, or an ACL user), distinct from
    # the primary's in VALKEY_URL; empty is unset. A SecretStr: never in a repr or a log.
    valkey_sentinel_username: str | None = Field(
        default=None, alias="VALKEY_SENTINEL_USERNAME", pattern=r"^\S{1,128}$"
    )
    valkey_sentinel_password: SecretStr | None = Field(
        default=None, alias="VALKEY_SENTINEL_PASSWORD", max_length=512
    )
    # TLS to the Sentinels; unset, it follows VALKEY_URL (rediss://, valkeys://), whose
    # ssl_* options (CA, client certificate) then apply to the Sentinels too.
    valkey_sentinel_tls: bool | None = Field(default=None, alias="VALKEY_SENTINEL_TLS")
    # SPEC §8: VALKEY_URL names a node of a Valkey Cluster; the prefix then holds a hash
    # tag so that every key of the mirror shares one slot (valkey/cluster.py).
    valkey_cluster: bool = Field(default=False, alias="VALKEY_CLUSTER")
    jwt_secret: str = Field(alias="JWT_SECRET", min_length=32)
    payment_webhook_secret: str = Field(alias="PAYMENT_WEBHOOK_SECRET", min_length=16)

    access_token_ttl_seconds: PositiveInt = Field(default=900, alias="ACCESS_TOKEN_TTL_SECONDS")
    refresh_token_ttl_seconds: PositiveInt = Field(
        default=2_592_000, alias="REFRESH_TOKEN_TTL_SECONDS"
    )
    # A rotated refresh token presented again this soon answers with the pair its rotation
    # issued (concurrent tabs, a retry after a lost response); later it is taken as theft.
    # 0 turns the window off: every replay revokes the login.
    refresh_reuse_leeway_seconds: NonNegativeInt = Field(
        default=10, alias="REFRESH_REUSE_LEEWAY_SECONDS"
    )
    heartbeat_interval_seconds: PositiveInt = Field(default=20, alias="HEARTBEAT_INTERVAL_SECONDS")
    heartbeat_stale_seconds: PositiveInt = Field(default=60, alias="HEARTBEAT_STALE_SECONDS")
    availability_snapshot_ttl_seconds: PositiveInt = Field(
        default=10, alias="AVAILABILITY_SNAPSHOT_TTL_SECONDS"
    )
    mitra_max_concurrent_sessions: PositiveInt = Field(
        default=1, alias="MITRA_MAX_CONCURRENT_SESSIONS"
    )
    pairing_fanout: PositiveInt = Field(default=5, alias="PAIRING_FANOUT")
    pairing_offer_ttl_seconds: PositiveInt = Field(default=30, alias="PAIRING_OFFER_TTL_SECONDS")
    payment_timeout_seconds: PositiveInt = Field(default=600, alias="PAYMENT_TIMEOUT_SECONDS")
    # session.ending_soon goes out this many seconds before a session's ends_at (SPEC §7).
    session_warning_seconds: WarningSeconds = Field(
        default=(300, 60), alias="SESSION_WARNING_SECONDS"
    )

    # The longest a chat session may last in all, booking plus extensions (ends_at -
    # started_at): an extension past it is refused. 480 = the longest booking (240) plus
    # one longest extension (240); at most a week.
    session_max_total_minutes: int = Field(
        default=480, ge=1, le=10080, alias="SESSION_MAX_TOTAL_MINUTES"
    )
    mitra_auto_offline_sweep_seconds: Seconds = Field(
        default=30, alias="MITRA_AUTO_OFFLINE_SWEEP_SECONDS"
    )
    heartbeat_mirror_interval_seconds: Seconds = Field(
        default=60, alias="HEARTBEAT_MIRROR_INTERVAL_SECONDS"
    )
    valkey_online_mirror_sweep_seconds: Seconds = Field(
        default=300, alias="VALKEY_ONLINE_MIRROR_SWEEP_SECONDS"
    )

    # Valkey timeouts are short on purpose: a slow mirror is worse than the Postgres
    # fallback, and the breaker makes sure only one request pays the timeout.
    valkey_operation_timeout_seconds: Seconds = Field(
        default=0.25, alias="VALKEY_OPERATION_TIMEOUT_SECONDS"
    )
    valkey_probe_interval_seconds: Seconds = Field(
        default=1.0, alias="VALKEY_PROBE_INTERVAL_SECONDS"
    )
    # How often each instance checks its open sockets' logins against Postgres (one query
    # for all of them): the bound on a logout or deactivation reaching a socket on another
    # instance while Valkey pub/sub is down.
    ws_login_recheck_seconds: Seconds = Field(default=5.0, alias="WS_LOGIN_RECHECK_SECONDS")
    # Open /ws sockets per user on one instance; the one past it closes that user's oldest
    # (1008 `too_many_sockets`). A real client holds a few (tabs, devices): this bounds
    # what one token can pin in memory (~85 KB a socket).
    ws_max_sockets_per_user: PositiveInt = Field(
        default=10, alias="WS_MAX_SOCKETS_PER_USER", le=1000
    )
    # Password hashes (argon2, ~0.3 s of CPU each here, in worker threads) run at once per
    # instance; 16 times as many (at least 32) may wait, beyond that 503 `overloaded`
    # (auth/throttle.py). Unset: the CPU count.
    # At most 32: asyncio.to_thread's pool has min(32, CPUs + 4) threads.
    login_max_concurrent_hashes: PositiveInt | None = Field(
        default=None, alias="LOGIN_MAX_CONCURRENT_HASHES", le=32
    )
    # Failed logins per email per fixed window (a Valkey counter); past it every login
    # for that email gets 429 `too_many_attempts` until the window ends.
    login_failure_limit: PositiveInt = Field(default=10, alias="LOGIN_FAILURE_LIMIT", le=10_000)
    login_failure_window_seconds: Seconds = Field(
        default=300.0, alias="LOGIN_FAILURE_WINDOW_SECONDS", le=86_400
    )
    # How long the event log keeps each user's events (SPEC §6): a socket reconnecting with
    # `since` older than this is told to resync; the retention sweep deletes older events.
    event_retention_seconds: Seconds = Field(default=86400.0, alias="EVENT_RETENTION_SECONDS")
    database_timeout_seconds: Seconds = Field(default=5.0, alias="DATABASE_TIMEOUT_SECONDS")
    database_pool_size: PositiveInt = Field(default=10, alias="DATABASE_POOL_SIZE")
    # How long startup keeps retrying an unreachable Postgres before it gives up (0: not
    # at all): an app started beside its database, or on a box so busy that one connect
    # outlasts DATABASE_TIMEOUT_SECONDS, waits instead of exiting.
    database_startup_wait_seconds: WaitSeconds = Field(
        default=30.0, alias="DATABASE_STARTUP_WAIT_SECONDS"
    )
    # asyncpg's prepared-statement cache per connection; 0 behind PgBouncer in transaction
    # mode before 1.21 (a named statement prepared on one server connection is unknown on
    # the next: "prepared statement ... does not exist").
    database_statement_cache_size: NonNegativeInt = Field(
        default=100, alias="DATABASE_STATEMENT_CACHE_SIZE", le=10_000
    )
    # Bounds Postgres enforces on every app connection (db.Bounds). Unset, they follow
    # DATABASE_TIMEOUT_SECONDS (see the `*_bound` properties for the ratios and why).
    database_statement_timeout_seconds: Seconds | None = Field(
        default=None, alias="DATABASE_STATEMENT_TIMEOUT_SECONDS"
    )
    database_lock_timeout_seconds: Seconds | None = Field(
        default=None, alias="DATABASE_LOCK_TIMEOUT_SECONDS"
    )
    database_idle_in_transaction_timeout_seconds: Seconds | None = Field(
        default=None, alias="DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS"
    )
    valkey_mirror_enabled: bool = Field(default=True, alias="VALKEY_MIRROR_ENABLED")
    sweeps_enabled: bool = Field(default=True, alias="SWEEPS_ENABLED")
    timers_enabled: bool = Field(default=True, alias="TIMERS_ENABLED")
    log_level: str = Field(default="INFO", alias="LOG_LEVEL")
    # Browser front ends on other origins allowed to call the API (api/app.py, CORS).
    # None by default: production names its front ends; `halobestie dev` allows the local
    # dev servers' (DEV_CORS_ALLOWED_ORIGINS) unless this is set.
    cors_allowed_origins: Origins = Field(default=(), alias="CORS_ALLOWED_ORIGINS")

    @field_validator("valkey_url")
    @classmethod
    def _check_valkey_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "valkey", "valkeys"):
            raise ValueError(
                "VALKEY_URL must start with redis://, rediss://, valkey:// or valkeys://"
            )
        try:
            parts.port  # noqa: B018 - urlsplit validates the port lazily
        except ValueError as exc:
            raise ValueError(f"VALKEY_URL has a bad port: {exc}") from None
        return value

    @field_validator(
        "valkey_sentinel_username", "valkey_sentinel_password", "valkey_sentinel_tls",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`VALKEY_SENTINEL_PASSWORD=` (e.g. `${VAR:-}` in a compose file) means none:
        Valkey has no empty password either."""
        return None if value == "" else value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
        return upper

    @model_validator(mode="after")
    def _refuse_dev_secrets(self) -> Settings:
        if self.is_dev:
            return self
        for name, value, dev_value in (
            ("JWT_SECRET", self.jwt_secret, DEV_JWT_SECRET),
            ("PAYMENT_WEBHOOK_SECRET", self.payment_webhook_secret, DEV_WEBHOOK_SECRET),
        ):
            if value == dev_value or "change-me" in value:
                raise ValueError(
                    f"{name} is the development default; set a real secret "
                    "(or HALOBESTIE_ENV=dev on a laptop)"
                )
        return self

    @model_validator(mode="after")
    def _check_valkey_topology(self) -> Settings:
        """The Valkey variables that only make sense together (settings_types.py)."""
        check_valkey_topology(
            url=self.valkey_url,
            sentinels=bool(self.valkey_sentinels),
            sentinel_username=self.valkey_sentinel_username,
            sentinel_password_set=self.valkey_sentinel_password is not None,
            sentinel_tls=self.valkey_sentinel_tls,
            cluster=self.valkey_cluster,
            key_prefix=self.valkey_key_prefix,
        )
        return self

    @model_validator(mode="after")
    def _order_database_bounds(self) -> Settings:
        """Postgres must give up before the client does (else a slow statement or a lock
        wait would surface as the client's timeout, i.e. as "unreachable"), and a lock
        waiter must outlast a stalled holder (else it fails where waiting would succeed)."""
        client = self.database_timeout_seconds
        for name, bound in (
            ("DATABASE_STATEMENT_TIMEOUT_SECONDS", self.statement_timeout_bound),
            ("DATABASE_LOCK_TIMEOUT_SECONDS", self.lock_timeout_bound),
        ):
            if bound >= client:
                raise ValueError(
                    f"{name} ({bound:g}) must be below DATABASE_TIMEOUT_SECONDS ({client:g})"
                )
        if self.idle_in_transaction_bound >= self.lock_timeout_bound:
            raise ValueError(
                "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS"
                f" ({self.idle_in_transaction_bound:g}) must be below"
                f" DATABASE_LOCK_TIMEOUT_SECONDS ({self.lock_timeout_bound:g})"
            )
        return self

    @property
    def statement_timeout_bound(self) -> float:
        """Seconds; default 0.8 x DATABASE_TIMEOUT_SECONDS. The longest statements (the
        heartbeat write-back, the seed's reads) take ~1.2-2 s at 100k online mitras: the
        default 4 s leaves them twice that."""
        value = self.database_statement_timeout_seconds
        return value if value is not None else 0.8 * self.database_timeout_seconds

    @property
    def lock_timeout_bound(self) -> float:
        """Seconds; default 0.7 x DATABASE_TIMEOUT_SECONDS. Above the idle-in-transaction
        bound, so a waiter behind a frozen holder gets the lock once it is cut off (by
        Postgres, or by stalls.py within a quarter of that bound more); above the seed's
        hold of its advisory lock (~2 s at 100k), which mirror writers wait for."""
        value = self.database_lock_timeout_seconds
        return value if value is not None else 0.7 * self.database_timeout_seconds

    @property
    def idle_in_transaction_bound(self) -> float:
        """Seconds; default 0.4 x DATABASE_TIMEOUT_SECONDS. Between its statements a
        transaction here waits only for Postgres or a Valkey read bounded by
        VALKEY_OPERATION_TIMEOUT_SECONDS (writes and events come after commit), so only a
        stalled process, or an event loop starved for that long, reaches it."""
        value = self.database_idle_in_transaction_timeout_seconds
        return value if value is not None else 0.4 * self.database_timeout_seconds

    @property
    def hash_concurrency(self) -> int:
        """LOGIN_MAX_CONCURRENT_HASHES, or this machine's CPU count (at most 32)."""
        value = self.login_max_concurrent_hashes
        return value if value is not None else min(32, os.cpu_count() or 1)

    @property
    def is_dev(self) -> bool:
        return self.env in ("dev", "test")

    @cached_property
    def valkey_client_url(self) -> str:
        """valkey-py understands redis(s):// and valkey(s)://; normalise to redis(s)://."""
        for scheme, replacement in (("valkeys://", "rediss://"), ("valkey://", "redis://")):
            if self.valkey_url.startswith(scheme):
                return replacement + self.valkey_url[len(scheme) :]
        return self.valkey_url


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; overrides (tests, the dev command) win. Overrides
    use the environment names (DATABASE_URL=...)."""
    return Settings(**overrides)  # type: ignore[arg-type]


def describe_error(exc: ValidationError) -> str:
    """One line per bad variable, naming it: what operators need at startup."""
    lines = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "settings"
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
