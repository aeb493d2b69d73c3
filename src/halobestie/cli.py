"""The `halobestie` command: serve, migrate, create-admin, dev."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from pydantic import ValidationError

from .config import DatabaseSettings, Settings, describe_error, load_settings
from .logs import redact_url

if TYPE_CHECKING:
    from .simulator import DemoConfig

T = TypeVar("T")


def _settings(factory: Callable[[], T]) -> T:
    try:
        return factory()
    except ValidationError as exc:
        raise click.ClickException(describe_error(exc)) from None


def _migrate(dsn: str) -> None:
    from asyncpg import TargetServerAttributeNotMatched

    from .migrate import run_migrations

    try:
        run_migrations(dsn)
    except (OSError, TargetServerAttributeNotMatched) as exc:  # down, or only standbys
        raise click.ClickException(
            f"cannot reach Postgres at {redact_url(dsn)} to migrate: {exc}"
        ) from None


def _app_and_options(settings: Settings) -> tuple[Any, dict[str, Any]]:
    """The app and uvicorn's options, as `serve` and `dev` both serve it."""
    import gc

    from .api.app import create_app

    app = create_app(settings)
    # What exists now (every imported module, the app) lives as long as the process:
    # take it out of the cyclic GC's sight, so that collections triggered by request
    # garbage stop walking it. Measured (benchmarks/ab.py): heartbeat +27 % req/s, p99
    # 50 -> 8.5 ms.
    gc.collect()
    gc.freeze()
    return app, {
        "loop": "uvloop" if sys.platform != "win32" else "asyncio",
        "http": "httptools",
        "log_level": settings.log_level.lower(),
        "access_log": False,
        "proxy_headers": True,
    }


def _serve(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    app, options = _app_and_options(settings)
    uvicorn.run(app, host=host, port=port, **options)


def _serve_dev(
    settings: Settings,
    sock: socket.socket,
    demo: DemoConfig | None,
    on_serving: Callable[[], None],
) -> None:
    """Serve on `sock` until SIGINT/SIGTERM, with the demo traffic when asked; call
    `on_serving` once requests are answered (devserve.py)."""
    import uvicorn

    from .devserve import STARTUP_FAILURE, DemoTraffic, serve_dev

    app, options = _app_and_options(settings)
    config = uvicorn.Config(app, **options)
    traffic = DemoTraffic(demo) if demo is not None else None
    if not serve_dev(config, traffic, sock, on_serving):
        sys.exit(STARTUP_FAILURE)


@click.group()
def main() -> None:
    """halobestie: backend of a 1:1 paid chat-listening marketplace."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
def serve(host: str, port: int) -> None:
    """Serve the API against DATABASE_URL / VALKEY_URL, migrating the schema first."""
    settings = _settings(load_settings)
    _migrate(settings.direct_dsn)
    _serve(settings, host, port)


@main.command()
def migrate() -> None:
    """Apply database migrations (DATABASE_URL)."""
    settings = _settings(lambda: DatabaseSettings())  # type: ignore[call-arg]
    _migrate(settings.direct_dsn)
    click.echo("migrations applied")


@main.command("create-admin")
@click.option("--email", required=True)
@click.option("--password", required=True)
def create_admin(email: str, password: str) -> None:
    """Create an admin, or reset an existing admin's password (idempotent)."""
    if not 8 <= len(password) <= 128:
        raise click.BadParameter("must be 8 to 128 characters", param_hint="--password")
    if len(email) > 254 or "@" not in email:
        raise click.BadParameter("must be an email address", param_hint="--email")
    settings = _settings(lambda: DatabaseSettings())  # type: ignore[call-arg]
    _migrate(settings.direct_dsn)
    from .demo import ensure_admin
    from .errors import EmailTaken

    try:
        created = asyncio.run(ensure_admin(settings.direct_dsn, email, password))
    except EmailTaken as exc:  # the email belongs to a customer or mitra: never promote it
        raise click.ClickException(exc.detail) from None
    click.echo(f"admin {email} {'created' if created else 'already existed; password updated'}")


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path(".halobestie-dev"),
    show_default=True,
    help="Where the embedded Postgres and Valkey keep their files.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="0: any free port (the banner says which).",
)
@click.option(
    "--demo/--no-demo",
    default=False,
    show_default=True,
    help="Also run simulated mitras, customers and an admin against the server, through "
    "its public API (docs/subsystems/console.md).",
)
@click.option(
    "--demo-rate",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.1, 50),
    help="How busy the simulated people are: 2 acts twice as often.",
)
@click.option("--demo-mitras", default=8, show_default=True, type=click.IntRange(1, 500))
@click.option("--demo-customers", default=5, show_default=True, type=click.IntRange(1, 500))
def dev(
    data_dir: Path,
    host: str,
    port: int,
    demo: bool,
    demo_rate: float,
    demo_mitras: int,
    demo_customers: int,
) -> None:
    """One-command demo: embedded Postgres and Valkey (when the URLs are unset),
    migrations, demo users, then serve; with --demo, simulated traffic too."""
    from .devserve import Refused, bind_port, data_dir_lock, stop_signals
    from .devservers.extra import EmbeddedServersMissing, require_embedded

    database_url = os.environ.get("DATABASE_URL")
    valkey_url = os.environ.get("VALKEY_URL")
    embedded = not database_url or not valkey_url
    with contextlib.ExitStack() as held:
        # Everything that can refuse is checked before anything starts: a refused run
        # touches nothing (above all, never the servers of the run that holds the folder).
        try:
            if embedded:
                require_embedded(postgres=not database_url, valkey=not valkey_url)
            sock = bind_port(host, port)
            held.callback(sock.close)
            port = int(sock.getsockname()[1])  # the one picked, for --port 0
            if embedded:
                held.enter_context(data_dir_lock(data_dir))
        except (Refused, EmbeddedServersMissing) as exc:
            raise click.ClickException(str(exc)) from None
        # A process manager's SIGTERM while the schema migrates ends the run like Ctrl-C
        # (KeyboardInterrupt), through the `finally` that stops the servers; while they
        # start, both wait for them (_dev); while serving, devserve.py handles both.
        for sig in stop_signals()[1:]:  # SIGTERM, and SIGHUP (a closed terminal) unless nohup
            signal.signal(sig, signal.default_int_handler)
        demo_options = (demo, demo_rate, demo_mitras, demo_customers)
        _dev(data_dir, host, port, sock, database_url, valkey_url, demo_options)


def _dev(
    data_dir: Path,
    host: str,
    port: int,
    sock: socket.socket,
    database_url: str | None,
    valkey_url: str | None,
    demo_options: tuple[bool, float, int, int],
) -> None:
    from .config import DEV_CORS_ALLOWED_ORIGINS, DEV_JWT_SECRET, DEV_WEBHOOK_SECRET
    from .demo import DEMO_LOGINS, DEMO_TIMINGS, seed_demo
    from .devserve import signals_held
    from .devservers import start_local_servers

    demo, demo_rate, demo_mitras, demo_customers = demo_options
    click.echo("starting the servers (embedded where DATABASE_URL / VALKEY_URL are unset) ...")
    # A signal while they start waits for them (interrupted half-way, one could be left
    # running with nobody to stop it), then ends the run through the `finally` below.
    with signals_held() as received:
        servers = start_local_servers(
            data_dir, database="halobestie", database_url=database_url, valkey_url=valkey_url
        )
    try:
        if received:
            raise KeyboardInterrupt
        env: dict[str, Any] = {
            "HALOBESTIE_ENV": os.environ.get("HALOBESTIE_ENV", "dev"),
            "DATABASE_URL": servers.database_url,
            "VALKEY_URL": servers.valkey_url,
        }
        env.setdefault("JWT_SECRET", os.environ.get("JWT_SECRET", DEV_JWT_SECRET))
        env.setdefault(
            "PAYMENT_WEBHOOK_SECRET", os.environ.get("PAYMENT_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET)
        )
        if "CORS_ALLOWED_ORIGINS" not in os.environ:  # a front end's dev server may call us
            env["CORS_ALLOWED_ORIGINS"] = DEV_CORS_ALLOWED_ORIGINS
        if demo:  # cadences short enough to watch, unless the environment sets them
            env.update({k: v for k, v in DEMO_TIMINGS.items() if k not in os.environ})
        settings = _settings(lambda: load_settings(**env))
        _migrate(settings.direct_dsn)
        asyncio.run(seed_demo(settings.asyncpg_dsn))
        base = f"http://{_client_host(host)}:{port}"
        banner = [
            "\nhalobestie dev is up\n"
            f"  API        {base}/docs  (OpenAPI)\n"
            f"  beacon     {base}/api/availability\n"
            f"  health     {base}/readyz   metrics {base}/metrics\n"
            f"  Postgres   {redact_url(settings.database_url)}\n"
            f"  Valkey     {redact_url(settings.valkey_url)}\n"
            f"  console    {base}/admin  (log in as the admin below)\n"
            f"  payments   PAYMENT_WEBHOOK_SECRET={settings.payment_webhook_secret}\n"
            f"             pay a session: halobestie pay SESSION_ID --base-url {base}\n"
            + textwrap.fill(
                ", ".join(settings.cors_allowed_origins) or "no other origin",
                width=100,
                initial_indent="  CORS       ",
                subsequent_indent=" " * 13,
                break_on_hyphens=False,
            )
            + "\n  logins (POST /api/auth/login):"
        ]
        admin_email, admin_password = "", ""
        for role, email, password in DEMO_LOGINS:
            banner.append(f"    {role:<9} {email:<28} {password}")
            if role == "admin":
                admin_email, admin_password = email, password
        demo_config = None
        if demo:
            from .simulator import DemoConfig

            demo_config = DemoConfig(
                base_url=base,
                admin_email=admin_email,
                admin_password=admin_password,
                webhook_secret=settings.payment_webhook_secret,
                mitras=demo_mitras,
                customers=demo_customers,
                rate=demo_rate,
            )
            banner.append(
                f"  demo       {demo_mitras} simulated mitras and {demo_customers} customers"
                f" (rate {demo_rate:g}): watch them on the console; Ctrl-C stops everything"
            )
        banner.append("")
        # Printed by the server once it answers on `sock` (devserve.py), never before.
        _serve_dev(settings, sock, demo_config, lambda: click.echo("\n".join(banner)))
    finally:
        # Stopping is bounded (pg_ctl -t 30, valkey 5 s): let it finish rather than leave
        # a server behind because an impatient second signal interrupted it.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)
        servers.stop()


def _client_host(host: str) -> str:
    """Where a local client reaches a server bound to `host`."""
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host)  # noqa: S104
    return wildcard or (f"[{host}]" if ":" in host else host)  # an IPv6 address in a URL


@main.command()
@click.argument("session_id", type=click.UUID)
@click.option("--base-url", default="http://127.0.0.1:8000", show_default=True)
@click.option(
    "--secret",
    default=None,
    help="The server's PAYMENT_WEBHOOK_SECRET (default: the dev secret `halobestie dev` uses).",
)
@click.option("--reference", default=None, help="The provider's reference (default: random).")
def pay(session_id: Any, base_url: str, secret: str | None, reference: str | None) -> None:
    """Tell the server a session was paid: the signed payment webhook (for dev and demos)."""
    import uuid

    from .config import DEV_WEBHOOK_SECRET
    from .simulator.client import ApiError, ServerGone, send_payment

    try:
        answer = asyncio.run(
            send_payment(
                base_url,
                secret or DEV_WEBHOOK_SECRET,
                str(session_id),
                reference or f"dev-{uuid.uuid4().hex}",
            )
        )
    except (ApiError, ServerGone) as exc:
        raise click.ClickException(str(exc)) from None
    session = answer["session"]
    click.echo(f"session {session['id']} is {session['status']} until {session['ends_at']}")
