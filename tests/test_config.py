"""Configuration (SPEC §2): bad values fail at startup, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from halobestie.cli import main
from halobestie.config import (
    DEV_JWT_SECRET,
    DEV_WEBHOOK_SECRET,
    Settings,
    describe_error,
    load_settings,
)

INT_DURATIONS = [
    "ACCESS_TOKEN_TTL_SECONDS",
    "REFRESH_TOKEN_TTL_SECONDS",
    "HEARTBEAT_INTERVAL_SECONDS",
    "HEARTBEAT_STALE_SECONDS",
    "AVAILABILITY_SNAPSHOT_TTL_SECONDS",
    "PAIRING_OFFER_TTL_SECONDS",
    "PAYMENT_TIMEOUT_SECONDS",
]
FLOAT_DURATIONS = [
    "MITRA_AUTO_OFFLINE_SWEEP_SECONDS",
    "HEARTBEAT_MIRROR_INTERVAL_SECONDS",
    "VALKEY_ONLINE_MIRROR_SWEEP_SECONDS",
    "VALKEY_OPERATION_TIMEOUT_SECONDS",
    "VALKEY_PROBE_INTERVAL_SECONDS",
    "DATABASE_TIMEOUT_SECONDS",
]
DURATIONS = INT_DURATIONS + FLOAT_DURATIONS
COUNTS = ["MITRA_MAX_CONCURRENT_SESSIONS", "PAIRING_FANOUT", "DATABASE_POOL_SIZE"]
# Optional durations, ordered against DATABASE_TIMEOUT_SECONDS and each other.
DATABASE_BOUNDS = [
    "DATABASE_STATEMENT_TIMEOUT_SECONDS",
    "DATABASE_LOCK_TIMEOUT_SECONDS",
    "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS",
]
ALL_VARIABLES = [
    "DATABASE_URL", "VALKEY_URL", "VALKEY_KEY_PREFIX", "JWT_SECRET", "PAYMENT_WEBHOOK_SECRET",
    "HALOBESTIE_ENV", "SWEEPS_ENABLED", "LOG_LEVEL", *DURATIONS, *COUNTS, *DATABASE_BOUNDS,
    "SESSION_WARNING_SECONDS",
]  # fmt: skip
VALID = {
    "DATABASE_URL": "postgresql://app:pw@db.internal:5432/halobestie",
    "VALKEY_URL": "redis://cache.internal:6379/0",
    "JWT_SECRET": "a-real-production-jwt-secret-0123456789",
    "PAYMENT_WEBHOOK_SECRET": "a-real-webhook-secret-0123",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean, valid production environment; tests spoil one variable at a time."""
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in VALID.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def refused(variable: str) -> str:
    """Load settings from the environment; return the message, which must name `variable`."""
    with pytest.raises(ValidationError) as info:
        load_settings()
    message = describe_error(info.value)
    assert variable in message, message
    return message


def test_a_valid_environment_loads_with_the_documented_defaults(env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.database_url == VALID["DATABASE_URL"]
    assert s.env == "production" and not s.is_dev
    assert s.access_token_ttl_seconds == 900
    assert s.refresh_token_ttl_seconds == 2_592_000
    assert s.refresh_reuse_leeway_seconds == 10
    assert s.heartbeat_interval_seconds == 20
    assert s.heartbeat_stale_seconds == 60
    assert s.availability_snapshot_ttl_seconds == 10
    assert s.mitra_max_concurrent_sessions == 1
    assert s.pairing_fanout == 5
    assert s.pairing_offer_ttl_seconds == 30
    assert s.payment_timeout_seconds == 600
    assert s.mitra_auto_offline_sweep_seconds == 30
    assert s.heartbeat_mirror_interval_seconds == 60
    assert s.valkey_online_mirror_sweep_seconds == 300
    assert s.valkey_key_prefix == ""


@pytest.mark.parametrize("variable", DURATIONS)
@pytest.mark.parametrize("value", ["ten", "", "30s", "0", "-1", "-0.5", "0.0"])
def test_bad_durations_are_refused_naming_the_variable(
    env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    env.setenv(variable, value)
    refused(variable)


@pytest.mark.parametrize("variable", FLOAT_DURATIONS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_non_finite_durations_are_refused(
    env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    env.setenv(variable, value)
    refused(variable)


@pytest.mark.parametrize("variable", COUNTS)
@pytest.mark.parametrize("value", ["many", "0", "-3", "1.5"])
def test_bad_counts_are_refused_naming_the_variable(
    env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    env.setenv(variable, value)
    refused(variable)


@pytest.mark.parametrize("value", ["ten", "", "-1", "1.5"])
def test_a_bad_refresh_reuse_leeway_is_refused(env: pytest.MonkeyPatch, value: str) -> None:
    env.setenv("REFRESH_REUSE_LEEWAY_SECONDS", value)
    refused("REFRESH_REUSE_LEEWAY_SECONDS")


@pytest.mark.parametrize("value", ["ten", "", "-1", "nan", "inf", "86401"])
def test_a_bad_database_startup_wait_is_refused(env: pytest.MonkeyPatch, value: str) -> None:
    env.setenv("DATABASE_STARTUP_WAIT_SECONDS", value)
    refused("DATABASE_STARTUP_WAIT_SECONDS")


def test_a_zero_database_startup_wait_means_do_not_wait(env: pytest.MonkeyPatch) -> None:
    assert load_settings().database_startup_wait_seconds == 30
    env.setenv("DATABASE_STARTUP_WAIT_SECONDS", "0")
    assert load_settings().database_startup_wait_seconds == 0


def test_a_zero_refresh_reuse_leeway_turns_the_window_off(env: pytest.MonkeyPatch) -> None:
    env.setenv("REFRESH_REUSE_LEEWAY_SECONDS", "0")
    assert load_settings().refresh_reuse_leeway_seconds == 0


@pytest.mark.parametrize(
    ("value", "offsets"),
    [
        (None, (300, 60)),  # the default
        ("300,60", (300, 60)),
        ("60, 300 ,60", (300, 60)),  # largest first, once each
        ("30", (30,)),
        ("86400", (86400,)),
        ("", ()),  # no warnings
    ],
)
def test_session_warning_seconds_is_a_comma_separated_list(
    env: pytest.MonkeyPatch, value: str | None, offsets: tuple[int, ...]
) -> None:
    if value is not None:
        env.setenv("SESSION_WARNING_SECONDS", value)
    assert load_settings().session_warning_seconds == offsets


@pytest.mark.parametrize(
    "value", ["0", "-60", "1.5", "five", "300,", "300;60", "[300, 60]", "86401", "²"]
)
def test_bad_session_warning_seconds_are_refused_naming_the_variable(
    env: pytest.MonkeyPatch, value: str
) -> None:
    env.setenv("SESSION_WARNING_SECONDS", value)
    refused("SESSION_WARNING_SECONDS")


@pytest.mark.parametrize(
    ("timeout", "statement", "lock", "idle"),
    [(None, 4, 3.5, 2), ("10", 8, 7, 4), ("1", 0.8, 0.7, 0.4)],
)
def test_the_database_bounds_follow_the_database_timeout_by_default(
    env: pytest.MonkeyPatch, timeout: str | None, statement: float, lock: float, idle: float
) -> None:
    if timeout is not None:
        env.setenv("DATABASE_TIMEOUT_SECONDS", timeout)
    s = load_settings()
    assert s.statement_timeout_bound == pytest.approx(statement)
    assert s.lock_timeout_bound == pytest.approx(lock)
    assert s.idle_in_transaction_bound == pytest.approx(idle)


def test_database_bounds_that_are_set_win(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_STATEMENT_TIMEOUT_SECONDS", "4.5")
    env.setenv("DATABASE_LOCK_TIMEOUT_SECONDS", "1")
    env.setenv("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS", "0.5")
    s = load_settings()
    assert (s.statement_timeout_bound, s.lock_timeout_bound) == (4.5, 1)
    assert s.idle_in_transaction_bound == 0.5


@pytest.mark.parametrize("variable", DATABASE_BOUNDS)
@pytest.mark.parametrize("value", ["ten", "", "0", "-1", "nan", "inf"])
def test_bad_database_bounds_are_refused_naming_the_variable(
    env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    env.setenv(variable, value)
    refused(variable)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        # Postgres must give up before the client does, or its answer is never heard.
        ({"DATABASE_STATEMENT_TIMEOUT_SECONDS": "5"}, "DATABASE_STATEMENT_TIMEOUT_SECONDS"),
        ({"DATABASE_LOCK_TIMEOUT_SECONDS": "6"}, "DATABASE_LOCK_TIMEOUT_SECONDS"),
        ({"DATABASE_TIMEOUT_SECONDS": "3", "DATABASE_STATEMENT_TIMEOUT_SECONDS": "4"},
         "DATABASE_STATEMENT_TIMEOUT_SECONDS"),
        # A lock waiter must outlast a stalled holder, whom Postgres cuts off.
        ({"DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS": "4"},
         "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS"),
        ({"DATABASE_LOCK_TIMEOUT_SECONDS": "1"}, "DATABASE_LOCK_TIMEOUT_SECONDS"),
    ],
)  # fmt: skip
def test_database_bounds_out_of_order_are_refused_naming_the_variable(
    env: pytest.MonkeyPatch, settings: dict[str, str], named: str
) -> None:
    for variable, value in settings.items():
        env.setenv(variable, value)
    refused(named)


def test_one_second_durations_are_accepted(env: pytest.MonkeyPatch) -> None:
    for variable in DURATIONS:
        env.setenv(variable, "1")
    settings = load_settings()
    for variable in DURATIONS:
        assert getattr(settings, variable.lower()) == 1, variable


def test_overrides_win_over_the_environment_and_are_validated_too(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("HEARTBEAT_STALE_SECONDS", "45")
    assert load_settings(HEARTBEAT_STALE_SECONDS=5).heartbeat_stale_seconds == 5
    with pytest.raises(ValidationError) as info:
        load_settings(HEARTBEAT_STALE_SECONDS=0)
    assert "HEARTBEAT_STALE_SECONDS" in describe_error(info.value)


def test_every_bad_variable_is_named_at_once(env: pytest.MonkeyPatch) -> None:
    env.setenv("HEARTBEAT_STALE_SECONDS", "0")
    env.setenv("PAIRING_FANOUT", "lots")
    env.setenv("VALKEY_URL", "http://cache:6379")
    message = refused("HEARTBEAT_STALE_SECONDS")
    assert "PAIRING_FANOUT" in message and "VALKEY_URL" in message


@pytest.mark.parametrize("variable", ["DATABASE_URL", "VALKEY_URL", "JWT_SECRET"])
def test_a_missing_required_variable_is_named(env: pytest.MonkeyPatch, variable: str) -> None:
    env.delenv(variable)
    refused(variable)


@pytest.mark.parametrize(
    "url",
    ["mysql://u:p@db/halobestie", "http://db/halobestie", "postgresql://db", "postgresql://db/",
     "db.internal/halobestie", ""],
)  # fmt: skip
def test_malformed_database_urls_are_refused(env: pytest.MonkeyPatch, url: str) -> None:
    env.setenv("DATABASE_URL", url)
    refused("DATABASE_URL")


@pytest.mark.parametrize(
    "url", ["postgresql://u:p@db:5432/halobestie", "postgres://db/halobestie",
            "postgresql:///halobestie?host=/tmp/sockets"],
)  # fmt: skip
def test_postgres_urls_in_both_schemes_are_accepted(env: pytest.MonkeyPatch, url: str) -> None:
    env.setenv("DATABASE_URL", url)
    settings = load_settings()
    assert settings.asyncpg_dsn.startswith("postgresql://")
    assert settings.asyncpg_dsn.endswith(url.split("://", 1)[1])


@pytest.mark.parametrize(
    "url",
    ["http://cache:6379", "cache:6379", "redis://cache:notaport", "redis://cache:99999",
     "redis://:6379/0", "memcached://cache:11211", ""],
)  # fmt: skip
def test_malformed_valkey_urls_are_refused(env: pytest.MonkeyPatch, url: str) -> None:
    env.setenv("VALKEY_URL", url)
    refused("VALKEY_URL")


@pytest.mark.parametrize(
    ("url", "client_url"),
    [
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("rediss://cache:6380/0", "rediss://cache:6380/0"),
        ("valkey://cache:6379/1", "redis://cache:6379/1"),
        ("valkeys://:pw@cache:6380", "rediss://:pw@cache:6380"),
    ],
)
def test_valkey_and_tls_schemes_are_accepted(
    env: pytest.MonkeyPatch, url: str, client_url: str
) -> None:
    env.setenv("VALKEY_URL", url)
    assert load_settings().valkey_client_url == client_url


@pytest.mark.parametrize(
    ("variable", "dev_value"),
    [("JWT_SECRET", DEV_JWT_SECRET), ("PAYMENT_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET)],
)
@pytest.mark.parametrize("environment", [None, "production", "staging"])
def test_dev_secrets_are_refused_outside_dev(
    env: pytest.MonkeyPatch, variable: str, dev_value: str, environment: str | None
) -> None:
    env.setenv(variable, dev_value)
    if environment:
        env.setenv("HALOBESTIE_ENV", environment)
    refused(variable)


def test_dev_secrets_are_accepted_with_halobestie_env_dev(env: pytest.MonkeyPatch) -> None:
    env.setenv("JWT_SECRET", DEV_JWT_SECRET)
    env.setenv("PAYMENT_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET)
    env.setenv("HALOBESTIE_ENV", "dev")
    settings = load_settings()
    assert settings.is_dev and settings.jwt_secret == DEV_JWT_SECRET


@pytest.mark.parametrize(
    ("variable", "value"), [("JWT_SECRET", "short"), ("PAYMENT_WEBHOOK_SECRET", "short")]
)
def test_short_secrets_are_refused(env: pytest.MonkeyPatch, variable: str, value: str) -> None:
    env.setenv(variable, value)
    refused(variable)


def test_settings_is_the_type_load_settings_returns(env: pytest.MonkeyPatch) -> None:
    assert isinstance(load_settings(), Settings)


# --- the command line refuses bad configuration cleanly ------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [("HEARTBEAT_STALE_SECONDS", "0"), ("MITRA_AUTO_OFFLINE_SWEEP_SECONDS", "soon"),
     ("VALKEY_URL", "http://cache:6379"), ("DATABASE_URL", "mysql://db/halobestie"),
     ("JWT_SECRET", DEV_JWT_SECRET)],
)  # fmt: skip
def test_serve_with_a_bad_variable_exits_naming_it_without_a_traceback(
    env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    result = CliRunner().invoke(main, ["serve"], env={variable: value})
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)  # a clean exit, not a crash
    assert variable in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [["migrate"], ["create-admin", "--email", "a@b.co",
                                                   "--password", "12345678"]])  # fmt: skip
def test_database_commands_name_a_bad_database_url(
    env: pytest.MonkeyPatch, command: list[str]
) -> None:
    result = CliRunner().invoke(main, command, env={"DATABASE_URL": "mysql://db/halobestie"})
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)
    assert "DATABASE_URL" in result.output, result.output


def test_the_installed_command_reports_bad_configuration_on_stderr() -> None:
    """The real executable, in its own process: exit status 1, the variable named, no
    traceback."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in ALL_VARIABLES}
    env.update(VALID, VALKEY_URL="valkey://cache:bad-port")
    exe = Path(sys.executable).parent / "halobestie"
    proc = subprocess.run(  # noqa: S603
        [str(exe), "serve"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 1, proc
    assert "VALKEY_URL" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# -- Valkey Sentinel (SPEC §8) ---------------------------------------------------------


@pytest.fixture
def sentinel_env(env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "VALKEY_SENTINELS", "VALKEY_SENTINEL_MASTER", "VALKEY_SENTINEL_USERNAME",
        "VALKEY_SENTINEL_PASSWORD", "VALKEY_SENTINEL_TLS",
    ):  # fmt: skip
        env.delenv(name, raising=False)
        env.delenv(name.lower(), raising=False)
    return env


def test_without_sentinels_valkey_url_names_the_server(sentinel_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.valkey_sentinels == ()
    assert settings.valkey_sentinel_master == "mymaster"


@pytest.mark.parametrize(
    ("value", "addresses"),
    [
        ("s1:26379", (("s1", 26379),)),
        (" s1:26379 , 10.0.0.2:26380,[::1]:5000 ",
         (("s1", 26379), ("10.0.0.2", 26380), ("::1", 5000))),
        ("", ()),
    ],
)  # fmt: skip
def test_valkey_sentinels_is_a_comma_separated_list_of_host_port(
    sentinel_env: pytest.MonkeyPatch, value: str, addresses: tuple[tuple[str, int], ...]
) -> None:
    sentinel_env.setenv("VALKEY_SENTINELS", value)
    sentinel_env.setenv("VALKEY_SENTINEL_MASTER", "cache-primary")
    settings = load_settings()
    assert settings.valkey_sentinels == addresses
    assert settings.valkey_sentinel_master == "cache-primary"


@pytest.mark.parametrize(
    "value",
    ["s1", "s1:", ":26379", "s1:0", "s1:65536", "s1:port", "s1:26379,", "s1:26379,,s2:1",
     "s1:-1", "s1:26 379", "s 1:26379", "redis://s1:26379"],
)  # fmt: skip
def test_bad_valkey_sentinels_are_refused_naming_the_variable(
    sentinel_env: pytest.MonkeyPatch, value: str
) -> None:
    sentinel_env.setenv("VALKEY_SENTINELS", value)
    refused("VALKEY_SENTINELS")


@pytest.mark.parametrize("url", ["redis://:pw@/0", "rediss://:pw@:6379/2", "valkey:///1"])
def test_with_sentinels_valkey_url_may_leave_out_the_host(
    sentinel_env: pytest.MonkeyPatch, url: str
) -> None:
    sentinel_env.setenv("VALKEY_URL", url)
    refused("VALKEY_URL")
    sentinel_env.setenv("VALKEY_SENTINELS", "s1:26379")
    assert load_settings().valkey_sentinels == (("s1", 26379),)


@pytest.mark.parametrize("value", ["", "my master", "a/b", "x" * 65])
def test_bad_valkey_sentinel_master_names_are_refused_naming_the_variable(
    sentinel_env: pytest.MonkeyPatch, value: str
) -> None:
    sentinel_env.setenv("VALKEY_SENTINELS", "s1:26379")
    sentinel_env.setenv("VALKEY_SENTINEL_MASTER", value)
    refused("VALKEY_SENTINEL_MASTER")


SENTINEL_SECRET = "sentinel-secret-pw"


def test_the_sentinels_own_credentials_and_tls_are_optional(
    sentinel_env: pytest.MonkeyPatch,
) -> None:
    sentinel_env.setenv("VALKEY_SENTINELS", "s1:26379")
    settings = load_settings()
    assert settings.valkey_sentinel_username is None
    assert settings.valkey_sentinel_password is None
    assert settings.valkey_sentinel_tls is None  # as VALKEY_URL's scheme says
    for name in ("VALKEY_SENTINEL_USERNAME", "VALKEY_SENTINEL_PASSWORD", "VALKEY_SENTINEL_TLS"):
        sentinel_env.setenv(name, "")  # `${VAR:-}` in a compose file: unset
    assert load_settings().valkey_sentinel_password is None
    sentinel_env.setenv("VALKEY_SENTINEL_USERNAME", "halobestie")
    sentinel_env.setenv("VALKEY_SENTINEL_PASSWORD", SENTINEL_SECRET)
    sentinel_env.setenv("VALKEY_SENTINEL_TLS", "false")
    settings = load_settings()
    assert settings.valkey_sentinel_username == "halobestie"
    password = settings.valkey_sentinel_password
    assert password is not None and password.get_secret_value() == SENTINEL_SECRET
    assert settings.valkey_sentinel_tls is False
    assert SENTINEL_SECRET not in repr(settings) and SENTINEL_SECRET not in str(settings)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("VALKEY_SENTINEL_PASSWORD", SENTINEL_SECRET), ("VALKEY_SENTINEL_USERNAME", "app"),
     ("VALKEY_SENTINEL_TLS", "true")],
)  # fmt: skip
def test_sentinel_credentials_without_sentinels_are_refused_without_echoing_them(
    sentinel_env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    sentinel_env.setenv(variable, value)
    if variable == "VALKEY_SENTINEL_USERNAME":
        sentinel_env.setenv("VALKEY_SENTINEL_PASSWORD", SENTINEL_SECRET)
    message = refused(variable)
    assert "VALKEY_SENTINELS" in message and SENTINEL_SECRET not in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [("VALKEY_SENTINEL_USERNAME", "two words"), ("VALKEY_SENTINEL_TLS", "maybe"),
     ("VALKEY_SENTINEL_PASSWORD", SENTINEL_SECRET * 40)],
)  # fmt: skip
def test_bad_sentinel_credentials_are_refused_naming_the_variable_not_the_secret(
    sentinel_env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    sentinel_env.setenv("VALKEY_SENTINELS", "s1:26379")
    sentinel_env.setenv("VALKEY_SENTINEL_PASSWORD", SENTINEL_SECRET)
    sentinel_env.setenv(variable, value)
    assert SENTINEL_SECRET not in refused(variable)


def test_a_sentinel_username_needs_a_password(sentinel_env: pytest.MonkeyPatch) -> None:
    sentinel_env.setenv("VALKEY_SENTINELS", "s1:26379")
    sentinel_env.setenv("VALKEY_SENTINEL_USERNAME", "halobestie")
    refused("VALKEY_SENTINEL_PASSWORD")


def test_serve_refuses_a_misplaced_sentinel_password_without_printing_it() -> None:
    """The startup failure message of the real executable names the variable only."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in ALL_VARIABLES}
    env.pop("VALKEY_SENTINELS", None)
    env.update(VALID, VALKEY_SENTINEL_PASSWORD=SENTINEL_SECRET)
    exe = Path(sys.executable).parent / "halobestie"
    proc = subprocess.run(  # noqa: S603
        [str(exe), "serve"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 1, proc
    assert "VALKEY_SENTINEL_PASSWORD" in proc.stderr
    assert SENTINEL_SECRET not in proc.stderr + proc.stdout


# -- behind PgBouncer (SPEC §8) ---------------------------------------------------------


@pytest.fixture
def pooler_env(env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("DATABASE_DIRECT_URL", "DATABASE_STATEMENT_CACHE_SIZE"):
        env.delenv(name, raising=False)
        env.delenv(name.lower(), raising=False)
    return env


def test_without_a_direct_url_every_connection_uses_database_url(
    pooler_env: pytest.MonkeyPatch,
) -> None:
    settings = load_settings()
    assert settings.database_statement_cache_size == 100
    assert settings.database_direct_url is None
    assert settings.direct_dsn == settings.asyncpg_dsn and not settings.database_pooled


def test_a_direct_url_beside_a_pooled_one_marks_database_url_as_pooled(
    pooler_env: pytest.MonkeyPatch,
) -> None:
    pooler_env.setenv("DATABASE_URL", "postgresql://app:pw@pgbouncer:6432/halobestie")
    pooler_env.setenv("DATABASE_DIRECT_URL", "postgres://app:pw@db.internal:5432/halobestie")
    pooler_env.setenv("DATABASE_STATEMENT_CACHE_SIZE", "0")
    settings = load_settings()
    assert settings.database_statement_cache_size == 0
    assert settings.direct_dsn == "postgresql://app:pw@db.internal:5432/halobestie"
    assert settings.database_pooled


@pytest.mark.parametrize(
    "value", ["mysql://db/halobestie", "postgresql://db", "postgresql://db/", "db:5432/x"]
)
def test_bad_direct_urls_are_refused_naming_the_variable(
    pooler_env: pytest.MonkeyPatch, value: str
) -> None:
    pooler_env.setenv("DATABASE_DIRECT_URL", value)
    refused("DATABASE_DIRECT_URL")


@pytest.mark.parametrize("value", ["-1", "10001", "lots", "1.5"])
def test_bad_statement_cache_sizes_are_refused_naming_the_variable(
    pooler_env: pytest.MonkeyPatch, value: str
) -> None:
    pooler_env.setenv("DATABASE_STATEMENT_CACHE_SIZE", value)
    refused("DATABASE_STATEMENT_CACHE_SIZE")


# -- Valkey over TLS -------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["redis", "valkey"])
def test_tls_options_on_a_plaintext_valkey_url_are_refused_naming_rediss(
    sentinel_env: pytest.MonkeyPatch, scheme: str
) -> None:
    sentinel_env.setenv("VALKEY_URL", f"{scheme}://cache:6379/0?ssl_ca_certs=/etc/ca.pem")
    message = refused("VALKEY_URL")
    assert "ssl_ca_certs" in message and "rediss://" in message


@pytest.mark.parametrize(
    "url",
    ["rediss://cache:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=true",
     "valkeys://cache:6380/0?ssl_cert_reqs=none", "redis://cache:6379/0?socket_keepalive=1"],
)  # fmt: skip
def test_tls_options_on_a_tls_valkey_url_are_accepted(
    sentinel_env: pytest.MonkeyPatch, url: str
) -> None:
    sentinel_env.setenv("VALKEY_URL", url)
    assert load_settings().valkey_url == url


def test_tls_options_on_a_plaintext_url_are_the_sentinels_with_sentinel_tls(
    sentinel_env: pytest.MonkeyPatch,
) -> None:
    sentinel_env.setenv("VALKEY_URL", "redis://:pw@/0?ssl_ca_certs=/etc/ca.pem")
    sentinel_env.setenv("VALKEY_SENTINELS", "s1:26379")
    refused("VALKEY_URL")
    sentinel_env.setenv("VALKEY_SENTINEL_TLS", "true")
    assert load_settings().valkey_sentinel_tls is True
