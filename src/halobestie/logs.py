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
# A secret in a query string: browsers cannot set headers on a WebSocket, so `/ws` takes
# the access token as `?token=`, and uvicorn logs every socket's path at INFO.
_QUERY_SECRET = re.compile(r"((?:access_|refresh_)?token=|signature=|password=)[^&\s\"']+", re.I)
# The loggers of the server that write request paths (uvicorn: "WebSocket /ws?token=..."
# on uvicorn.error, and the access log if an operator turns it on).
_SERVER_LOGGERS = ("uvicorn.error", "uvicorn.access", "uvicorn")


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if key == "event":
            continue
        if _SENSITIVE.search(key):
            event[key] = redact_url(value) if isinstance(value, str) and "://" in value else "***"
        elif isinstance(value, str) and "://" in value:
            event[key] = redact_url(value)
        elif isinstance(value, str) and "=" in value:
            event[key] = redact_query(value)
    return event


def redact_url(url: str) -> str:
    """Hide the password of a connection URL; keep host and database for operators."""
    return _URL_PASSWORD.sub(r"\1***@", url)


def redact_query(text: str) -> str:
    """Mask secrets passed in query strings (`?token=...` -> `?token=***`)."""
    return _QUERY_SECRET.sub(r"\1***", text)


class RedactQuerySecrets(logging.Filter):
    """Masks query-string secrets in records of loggers we do not format ourselves
    (uvicorn's): the message and its %-arguments, before any handler sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        return True


def install_server_log_redaction() -> None:
    """Idempotent: uvicorn (re)configures its loggers' handlers, never their filters."""
    for name in _SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQuerySecrets) for f in logger.filters):
            logger.addFilter(RedactQuerySecrets())


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(format="%(message)s", level=level)
    install_server_log_redaction()
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
