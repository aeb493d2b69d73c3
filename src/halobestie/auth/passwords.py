"""argon2id password hashing (argon2-cffi, its default parameters: 64 MiB, 3 passes, 4
lanes). Hashing costs ~0.3 s on this 2-core VM on purpose (more under load), so it runs
in a worker thread instead of blocking the event loop, behind auth/throttle.py's slots."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
# Verified against when the email is unknown, so that "no such user" and "wrong
# password" take the same time and cannot be told apart by a stopwatch.
_DUMMY_HASH = _hasher.hash("not-a-real-password-timing-equaliser")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)
