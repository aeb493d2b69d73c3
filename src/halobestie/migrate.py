"""Apply migrations with alembic, programmatically (no alembic.ini to ship)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from .pghosts import asyncpg_dsn

_SCRIPTS = Path(__file__).parent / "migrations"
# How long migrations wait to connect (per attempt, shared among DATABASE_URL's hosts).
CONNECT_TIMEOUT_SECONDS = 10.0


def alembic_config(dsn: str) -> Config:
    """migrations/env.py connects through pghosts.connect (SQLAlchemy's async_creator),
    so a DSN naming several hosts reaches the writable one as the app's pool does; no
    translation into SQLAlchemy's own URL form (which spells several hosts differently)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["asyncpg_dsn"] = asyncpg_dsn(dsn)
    cfg.attributes["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    return cfg


def run_migrations(dsn: str) -> None:
    """Upgrade to head. Blocking: call it from a thread when inside an event loop."""
    command.upgrade(alembic_config(dsn), "head")
