"""Apply migrations with alembic, programmatically (no alembic.ini to ship)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

_SCRIPTS = Path(__file__).parent / "migrations"


def alembic_config(dsn: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    url = dsn.replace("postgres://", "postgresql://", 1).replace(
        "postgresql://", "postgresql+asyncpg://", 1
    )
    cfg.attributes["sqlalchemy_url"] = url
    return cfg


def run_migrations(dsn: str) -> None:
    """Upgrade to head. Blocking: call it from a thread when inside an event loop."""
    command.upgrade(alembic_config(dsn), "head")
