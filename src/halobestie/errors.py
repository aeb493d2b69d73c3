"""The domain's error tree. `api/errors.py` alone maps these to HTTP status codes."""

from __future__ import annotations


class DomainError(Exception):
    """Base: `code` is the machine-readable error, the message is the human detail."""

    code = "error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRequest(DomainError):
    code = "invalid_request"


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class EmailTaken(Conflict):
    code = "email_taken"


class InvalidState(Conflict):
    code = "invalid_state"


class NotOnline(Conflict):
    code = "not_online"


class AuthError(DomainError):
    code = "invalid_token"


class InvalidToken(AuthError):
    code = "invalid_token"


class InvalidCredentials(AuthError):
    code = "invalid_credentials"


class Forbidden(DomainError):
    code = "forbidden"


class AccountDeactivated(Forbidden):
    code = "account_deactivated"


class MitraDeactivated(Forbidden):
    code = "mitra_deactivated"


class Gone(DomainError):
    """What was asked for existed once and is no longer kept (410)."""

    code = "gone"


class EventsExpired(Gone):
    """Events after the client's position are past EVENT_RETENTION_SECONDS (or the
    position is beyond the user's last event): the client refetches its state (SPEC §6)."""

    code = "events_expired"


class ServiceUnavailable(DomainError):
    """Retryable: the request may succeed unchanged in a moment (503 + Retry-After)."""

    code = "service_unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """Postgres cannot be reached (connect refused, timed out, connection lost)."""

    code = "database_unavailable"


class DatabaseBusy(ServiceUnavailable):
    """Postgres is up, but this request could not be served within its bounds. Retry
    loops treat it like DatabaseUnavailable; clients see what happened."""

    code = "database_busy"


class Overloaded(DatabaseBusy):
    """Every pooled connection stayed busy for DATABASE_TIMEOUT_SECONDS."""

    code = "overloaded"


class LockTimeout(DatabaseBusy):
    """A lock was held by someone else for DATABASE_LOCK_TIMEOUT_SECONDS (SQLSTATE 55P03)."""

    code = "lock_timeout"


class StatementTimeout(DatabaseBusy):
    """A statement ran for DATABASE_STATEMENT_TIMEOUT_SECONDS (SQLSTATE 57014)."""

    code = "statement_timeout"


class ConflictRetry(DatabaseBusy):
    """Postgres aborted this transaction to let a conflicting one through: a deadlock
    (SQLSTATE 40P01) or a serialization failure (40001). Nothing of it was committed, so
    the same request, sent again, runs against the winner's committed state."""

    code = "conflict_retry"


class HashingOverloaded(ServiceUnavailable):
    """Every password-hashing slot of this instance is busy and its short queue is full
    (LOGIN_MAX_CONCURRENT_HASHES): answered at once instead of queued behind the CPU."""

    code = "overloaded"


class RateLimited(DomainError):
    """Too many requests of one kind: refused for `retry_after` seconds (429 + Retry-After)."""

    code = "rate_limited"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = max(1, retry_after)


class TooManyAttempts(RateLimited):
    """LOGIN_FAILURE_LIMIT failed logins for one email within LOGIN_FAILURE_WINDOW_SECONDS:
    every login for it, right password or not, is refused until the window ends."""

    code = "too_many_attempts"


class MirrorUnavailable(Exception):
    """Valkey cannot be trusted right now: callers fall back to Postgres. Never reaches HTTP."""


class ValkeyUnavailable(DomainError):
    """An admin tool that needs Valkey itself (reseed, drift) while it is unreachable."""

    code = "valkey_unavailable"


class NoMitraAvailable(Conflict):
    code = "no_mitra_available"


class AlreadyTaken(Conflict):
    code = "already_taken"


class RequestClosed(Conflict):
    code = "request_closed"


class AtCapacity(Conflict):
    code = "at_capacity"


class NotOffered(Forbidden):
    code = "not_offered"


class InvalidSignature(AuthError):
    code = "invalid_signature"


class PaymentReferenceReused(Conflict):
    """A payment reference already recorded for another chat session."""

    code = "payment_reference_reused"


class SessionTooLong(Conflict):
    """An extension would make a chat session last longer than SESSION_MAX_TOTAL_MINUTES."""

    code = "session_too_long"


class IdempotencyKeyReused(InvalidRequest):
    """An Idempotency-Key already used for another request (other fields) on the same
    resource: not a retry, refused rather than answered with the first one's result."""

    code = "idempotency_key_reused"
