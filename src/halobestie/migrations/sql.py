"""Run a plain SQL script from a migration.

SQLAlchemy's asyncpg driver prepares every statement, and Postgres cannot prepare
several at once, so a script is split at statement ends (`;` closing a line). Keep
function bodies out of migrations, or give them their own op.execute call.
"""

from __future__ import annotations

import re

from alembic import op

_STATEMENT_END = re.compile(r";\s*$", re.M)


def run_sql(script: str) -> None:
    for statement in _STATEMENT_END.split(script):
        lines = [ln for ln in statement.splitlines() if not ln.strip().startswith("--")]
        if "".join(lines).strip():
            op.execute("\n".join(lines))
