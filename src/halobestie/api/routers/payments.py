"""The payment provider's webhook (SPEC §4).

The signature is checked first, over the raw bytes exactly as received (`X-Signature`:
hex HMAC-SHA256 with PAYMENT_WEBHOOK_SECRET, compared in constant time); only then is
the body parsed, strictly. Replays of a reference are answered 200 with the session as it
is now, so the provider can retry safely.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Header, Request
from pydantic import StringConstraints, ValidationError

from ...errors import Conflict, InvalidRequest, InvalidSignature, NotFound
from ...sessions.actions import do_pay_session
from ...sessions.transitions import public_session
from ..bodies import Storable, Strict
from ..deps import CtxDep, NowDep
from ..models import SessionOut
from ..openapi import documented

router = APIRouter(prefix="/api/payments", tags=["payments"])

# Provider references: 1-200 printable ASCII characters, no spaces.
Reference = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[!-~]+$"), Storable
]


class PaymentWebhookBody(Strict):
    session_id: UUID
    reference: Reference
    status: Literal["paid"]


def expected_signature(secret: str, raw: bytes) -> str:
    return hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def verify_signature(secret: str, raw: bytes, signature: str | None) -> None:
    if not signature:
        raise InvalidSignature("missing X-Signature header (hex HMAC-SHA256 of the body)")
    given = signature.strip().lower().encode("latin-1", errors="replace")
    if not hmac.compare_digest(given, expected_signature(secret, raw).encode()):
        raise InvalidSignature("X-Signature does not match the body")


def parse_body(raw: bytes) -> PaymentWebhookBody:
    try:
        return PaymentWebhookBody.model_validate_json(raw)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors(include_url=False)[:10]
        ]
        raise InvalidRequest("; ".join(problems)) from None


# The body is read raw (the signature covers its bytes), so FastAPI cannot see its model:
# described here, for the API docs and the fuzz pass (tests/api/test_fuzz.py).
_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PaymentWebhookBody.model_json_schema()}},
    }
}


@router.post(
    "/webhook",
    openapi_extra=_BODY_DOC,
    responses=documented(InvalidSignature, InvalidRequest, NotFound, Conflict),
)
async def payment_webhook(
    request: Request,
    ctx: CtxDep,
    now: NowDep,
    x_signature: Annotated[
        str | None,
        Header(
            alias="X-Signature",
            description="hex HMAC-SHA256 of the raw body (PAYMENT_WEBHOOK_SECRET)",
        ),
    ] = None,
) -> SessionOut:
    raw = await request.body()
    verify_signature(ctx.settings.payment_webhook_secret, raw, x_signature)
    body = parse_body(raw)
    row = await do_pay_session(ctx, session_id=body.session_id, reference=body.reference, now=now)
    return SessionOut.model_validate({"session": public_session(row, now)})
