"""Demo data for `halobestie dev` and the idempotent `create-admin`, through the same
actions the API uses."""

from __future__ import annotations

from dataclasses import dataclass

from .auth.actions import do_create_user, do_ensure_admin
from .db import Database
from .errors import EmailTaken

DEMO_PASSWORD_ADMIN = "halobestie-admin"  # noqa: S105 - printed demo logins, dev only
DEMO_PASSWORD_MITRA = "halobestie-mitra"  # noqa: S105
DEMO_PASSWORD_CUSTOMER = "halobestie-customer"  # noqa: S105
DEMO_LOGINS = [
    ("admin", "admin@halobestie.dev", DEMO_PASSWORD_ADMIN),
    *[("mitra", f"mitra{i}@halobestie.dev", DEMO_PASSWORD_MITRA) for i in range(1, 6)],
    ("customer", "customer@halobestie.dev", DEMO_PASSWORD_CUSTOMER),
]

# `halobestie dev --demo`: cadences short enough to watch mitras go silent and be swept
# offline, offers expire and unpaid sessions time out (each overridable by its variable).
DEMO_TIMINGS = {
    "HEARTBEAT_INTERVAL_SECONDS": "5",
    "HEARTBEAT_STALE_SECONDS": "15",
    "MITRA_AUTO_OFFLINE_SWEEP_SECONDS": "5",
    "PAIRING_OFFER_TTL_SECONDS": "20",
    "PAYMENT_TIMEOUT_SECONDS": "60",
}


@dataclass(frozen=True)
class _DbOnly:
    """The slice of Context that user creation needs, without a Valkey client."""

    db: Database


async def _with_db(dsn: str) -> Database:
    db = Database(dsn, pool_size=2, timeout=10)
    await db.open()
    return db


async def ensure_admin(dsn: str, email: str, password: str) -> bool:
    db = await _with_db(dsn)
    try:
        _, created = await do_ensure_admin(_DbOnly(db), email=email, password=password)
        return created
    finally:
        await db.close()


async def seed_demo(dsn: str) -> None:
    db = await _with_db(dsn)
    ctx = _DbOnly(db)
    try:
        for role, email, password in DEMO_LOGINS:
            if role == "admin":
                await do_ensure_admin(ctx, email=email, password=password)
                continue
            name = email.split("@", 1)[0].capitalize()
            try:
                await do_create_user(
                    ctx, email=email, password=password, display_name=name, role=role
                )
            except EmailTaken:
                pass  # seeded by an earlier run
    finally:
        await db.close()
