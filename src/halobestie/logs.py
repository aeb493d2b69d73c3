"""Structured logs (structlog, JSON). Secrets never reach a log line: the redactor masks
known-sensitive keys whatever the caller passes."""

from __future__ import annotations

import logging
import re
from collections.abc import MutableMapping
from typing import Any

import structlog

_SENSITIVE = re.compile(r"pass(word)?|secret|token|authorization|signature|dsn|url", re.I)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if key == "event":
            continue
        if _SENSITIVE.search(key):
            event[key] = redact_url(value) if isinstance(value, str) and "://" in value else "***"
        elif isinstance(value, str) and "://" in value:
            event[key] = redact_url(value)
    return event


def redact_url(url: str) -> str:
    """Hide the password of a connection URL; keep host and database for operators."""
    return _URL_PASSWORD.sub(r"\1***@", url)


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(format="%(message)s", level=level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
