"""The `halobestie` command (SPEC §3): migrate and create-admin against the test database.

The commands call asyncio.run themselves, so they run as the real executable in a
subprocess (as an operator would run them), never inside the test's event loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import asyncpg
import pytest
from click.testing import CliRunner

from halobestie.cli import main
from tests.conftest import AppFactory, Servers
from tests.factories import PASSWORD, make_user

EXE = Path(sys.executable).parent / "halobestie"
SCHEMA_TABLES = {"users", "mitras", "auth_sessions", "chat_sessions", "alembic_version"}


@dataclass
class Run:
    code: int
    out: str
    err: str


async def halobestie(*args: str, database_url: str) -> Run:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "VALKEY_URL")}
    env["DATABASE_URL"] = database_url
    proc = await asyncio.create_subprocess_exec(
        str(EXE), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def tables(database_url: str) -> set[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


async def login_status(make_app: AppFactory, email: str, password: str) -> int:
    async with make_app() as inst:
        r = await inst.client.post("/api/auth/login", json={"email": email, "password": password})
        return r.status_code


# --- migrate ------------------------------------------------------------------------------


async def test_migrate_builds_the_schema_in_an_empty_database_and_is_idempotent(
    pg: asyncpg.Connection, clean: Servers
) -> None:
    name = f"cli_fresh_{uuid4().hex[:8]}"
    await pg.execute(f'CREATE DATABASE "{name}"')
    url = with_database(clean.database_url, name)
    try:
        assert await tables(url) == set()
        first = await halobestie("migrate", database_url=url)
        assert first.code == 0, first
        assert "migrations applied" in first.out
        assert SCHEMA_TABLES <= await tables(url)
        again = await halobestie("migrate", database_url=url)
        assert again.code == 0, again
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM alembic_version") == 1
        finally:
            await conn.close()
    finally:
        await pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_migrate_on_an_up_to_date_database_changes_nothing(
    pg: asyncpg.Connection, clean: Servers, make_app: AppFactory
) -> None:
    async with make_app() as inst:
        person = await make_user(inst.ctx, "customer")
    result = await halobestie("migrate", database_url=clean.database_url)
    assert result.code == 0, result
    assert await pg.fetchval("SELECT email FROM users") == person.user.email


async def test_migrate_reports_an_unreachable_database_without_a_traceback() -> None:
    result = await halobestie("migrate", database_url="postgresql://127.0.0.1:1/halobestie")
    assert result.code == 1, result
    assert "Postgres" in result.err
    assert "Traceback" not in result.err + result.out


# --- create-admin -------------------------------------------------------------------------


async def test_create_admin_is_idempotent_and_the_second_run_sets_the_password(
    pg: asyncpg.Connection, clean: Servers, make_app: AppFactory
) -> None:
    url = clean.database_url
    first = await halobestie(
        "create-admin", "--email", "root@example.com", "--password", "first password",
        database_url=url,
    )  # fmt: skip
    assert first.code == 0, first
    assert "created" in first.out
    row = await pg.fetchrow("SELECT id, role, password_hash FROM users")
    assert row is not None
    assert row["role"] == "admin" and row["password_hash"].startswith("$argon2id$")
    assert await login_status(make_app, "root@example.com", "first password") == 200

    second = await halobestie(
        "create-admin", "--email", "Root@Example.com", "--password", "second password",
        database_url=url,
    )  # fmt: skip
    assert second.code == 0, second
    assert "already existed" in second.out
    assert "second password" not in second.out + second.err
    rows = await pg.fetch("SELECT id, role, password_hash FROM users")
    assert [(r["id"], r["role"]) for r in rows] == [(row["id"], "admin")]
    assert rows[0]["password_hash"] != row["password_hash"]
    assert await login_status(make_app, "root@example.com", "second password") == 200
    assert await login_status(make_app, "root@example.com", "first password") == 401


@pytest.mark.parametrize("role", ["customer", "mitra"])
async def test_create_admin_with_an_email_owned_by_another_role_fails_cleanly(
    pg: asyncpg.Connection, clean: Servers, make_app: AppFactory, role: str
) -> None:
    async with make_app() as inst:
        person = await make_user(inst.ctx, role, email=f"{role}@example.com")
    before = await pg.fetchrow("SELECT role, password_hash FROM users")
    result = await halobestie(
        "create-admin", "--email", f"{role.upper()}@example.com", "--password", "takeover!!",
        database_url=clean.database_url,
    )  # fmt: skip
    assert result.code == 1, result
    assert f"{role}@example.com" in result.err.lower()
    assert "Traceback" not in result.err + result.out
    assert await pg.fetchrow("SELECT role, password_hash FROM users") == before
    assert await pg.fetchval("SELECT count(*) FROM users") == 1
    assert await login_status(make_app, person.user.email, PASSWORD) == 200
    assert await login_status(make_app, person.user.email, "takeover!!") == 401


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--email", "root@example.com", "--password", "7chars!"], "--password"),
        (["--email", "root@example.com", "--password", "p" * 129], "--password"),
        (["--email", "not-an-email", "--password", "long enough"], "--email"),
        (["--email", "a" * 250 + "@x.co", "--password", "long enough"], "--email"),
        (["--password", "long enough"], "--email"),
    ],
)
def test_create_admin_refuses_bad_arguments_before_touching_the_database(
    args: list[str], hint: str
) -> None:
    """Refused before any database work: DATABASE_URL points nowhere and is never used."""
    result = CliRunner().invoke(
        main, ["create-admin", *args], env={"DATABASE_URL": "postgresql://127.0.0.1:1/x"}
    )
    assert result.exit_code == 2, result.output
    assert hint in result.output
    assert "Traceback" not in result.output
