"""Postgres statements counted on the Postgres side, from the server's own log.

pg_stat_statements is not in the pgserver wheel, so: the process under measurement
connects with `log_statement=all` as a session setting (DSN query parameters become
session settings in asyncpg), and nothing else in the run logs statements. A separate
marker connection (also logging) writes a begin and an end marker around the action;
every statement is logged when it starts, so once the end marker has returned, every
statement the measured process ran during the action is in the log between the markers.
Each log entry is one statement as the server received it: `execute <name>: SQL` for
the extended protocol, `statement: SQL` for a simple query (asyncpg's pool reset
`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` is one such entry).
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from .infra import with_query

LOGGING = {"log_statement": "all", "log_parameter_max_length": "0"}
STATEMENT = re.compile(r"LOG:\s+(?:statement|execute [^:]*):\s*(.*)")
ENTRY = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def logging_dsn(url: str, app_name: str) -> str:
    return with_query(url, application_name=app_name, **LOGGING)


@dataclass
class Counted:
    statements: list[str]

    @property
    def count(self) -> int:
        return len(self.statements)

    def kinds(self) -> dict[str, int]:
        """Statements by what they are (first words), for the report."""
        out: Counter[str] = Counter()
        for sql in self.statements:
            text = " ".join(sql.split())
            if text.startswith("SELECT pg_advisory_unlock_all()"):
                out["pool reset (unlock_all; CLOSE ALL; UNLISTEN; RESET ALL)"] += 1
            elif "pg_try_advisory_lock" in text or "pg_advisory_lock" in text:
                out["advisory lock"] += 1
            elif "pg_advisory_unlock" in text or "pg_advisory_xact" in text:
                out["advisory unlock"] += 1
            elif text.startswith(("SAVEPOINT __asyncpg_", "RELEASE SAVEPOINT __asyncpg_")):
                out[text.split(" __asyncpg_")[0] + " (asyncpg)"] += 1
            else:
                out[" ".join(text.split()[:4])] += 1
        return dict(out.most_common())


class StatementLog:
    def __init__(self, log: Path, database_url: str) -> None:
        self.log = log
        self.database_url = database_url
        self._marker: Any = None

    async def open(self) -> None:
        self._marker = await asyncpg.connect(logging_dsn(self.database_url, "bench-marker"))

    async def close(self) -> None:
        if self._marker is not None:
            await self._marker.close()

    async def during(self, action: Callable[[], Awaitable[Any]]) -> Counted:
        token = uuid.uuid4().hex
        start = self.log.stat().st_size
        await self._marker.execute(f"SELECT 'statements-begin-{token}'")
        await action()
        await self._marker.execute(f"SELECT 'statements-end-{token}'")
        with self.log.open("rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        section = text[
            text.index(f"statements-begin-{token}") : text.index(f"statements-end-{token}")
        ]
        statements: list[str] = []
        # Without the rest of the begin marker's line and the start of the end marker's.
        for line in section.splitlines()[1:-1]:
            match = STATEMENT.search(line)
            if match:
                statements.append(match.group(1))
            elif statements and not ENTRY.match(line):
                statements[-1] += "\n" + line  # a statement's SQL over several lines
        return Counted(statements)
