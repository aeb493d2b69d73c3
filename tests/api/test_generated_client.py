"""A client generated from /openapi.json alone type-checks and completes the main flow.

openapi-python-client (a well-kept generator) writes a typed package from the app's
document into a temporary directory; `mypy --strict` must accept it, and the test then
drives register -> online -> heartbeat -> pairing -> accept -> (signed webhook) ->
session -> chat -> end through it, against the real Postgres and Valkey. The webhook is
posted raw: its signature covers the exact bytes, which a generated client serializes
its own way.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Instance
from tests.factories import make_user
from tests.sessions.helpers import sign, webhook_body

BIN = Path(sys.executable).parent
PACKAGE = "hbclient"


def generate(inst: Instance, into: Path) -> Path:
    spec = into / "openapi.json"
    spec.write_text(json.dumps(inst.app.openapi()))
    config = into / "config.json"
    config.write_text(json.dumps({"post_hooks": [], "package_name_override": PACKAGE}))
    out = into / PACKAGE
    subprocess.run(  # noqa: S603 (our own tools, our own paths)
        [str(BIN / "openapi-python-client"), "generate", "--path", str(spec), "--meta", "none",
         "--config", str(config), "--output-path", str(out)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return out


def type_check(package: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (our own tools, our own paths)
        [str(BIN / "mypy"), "--strict", "--no-incremental", str(package)],
        capture_output=True, text=True, timeout=150, cwd=package.parent,
    )  # fmt: skip


@pytest.mark.timeout(180)
async def test_a_generated_client_compiles_and_completes_the_main_flow(
    inst: Instance, tmp_path: Path
) -> None:
    out = await asyncio.to_thread(generate, inst, tmp_path)
    checked = await asyncio.to_thread(type_check, out)
    assert checked.returncode == 0, checked.stdout[-2000:]

    sys.path.insert(0, str(tmp_path))
    try:
        await main_flow(inst)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _mod(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


async def main_flow(inst: Instance) -> None:
    client_mod, models = _mod("client"), _mod("models")
    transport = httpx.ASGITransport(app=inst.app)
    args = {"transport": transport}

    def as_user(token: str) -> Any:
        return client_mod.AuthenticatedClient(base_url="http://test", token=token, httpx_args=args)

    anyone = client_mod.Client(base_url="http://test", httpx_args=args)
    register = _mod("api.auth.register")
    body = models.RegisterBody(
        email="gen-client@example.com", password="a-long-password", display_name="Gen"
    )
    login = (await register.asyncio_detailed(client=anyone, body=body)).parsed
    assert isinstance(login, models.LoginOut) and login.user.role == "customer"
    customer = as_user(login.access_token)

    mitra_person = await make_user(inst.ctx, "mitra")
    mitra = as_user(mitra_person.token)
    online = await _mod("api.mitra.go_online").asyncio(client=mitra)
    assert isinstance(online, models.OnlineOut) and online.is_online
    beat = await _mod("api.mitra.heartbeat").asyncio(client=mitra)
    assert isinstance(beat, models.HeartbeatOut), beat

    opened = await _mod("api.pairing.open_request").asyncio(
        client=customer, body=models.PairingRequestBody(duration_minutes=30)
    )
    assert isinstance(opened, models.PairingRequestOut), opened
    request = opened.pairing_request
    assert request.offered_to == [str(mitra_person.id)]
    offers = await _mod("api.pairing.list_offers").asyncio(client=mitra)
    assert [o.request_id for o in offers.offers] == [request.id]
    accepted = await _mod("api.pairing.accept_request").asyncio(request.id, client=mitra)
    assert isinstance(accepted, models.SessionOut), accepted
    session_id = accepted.session.id
    assert accepted.session.status == "pending_payment"

    raw = webhook_body(session_id, "gen-ref-1")
    paid = await inst.client.post(
        "/api/payments/webhook", content=raw, headers={"X-Signature": sign(raw)}
    )
    assert paid.status_code == 200, paid.text

    session = await _mod("api.sessions.get_session").asyncio(session_id, client=customer)
    assert isinstance(session, models.SessionOut) and session.session.status == "active"
    sent = await _mod("api.chat.send_message").asyncio(
        session_id, client=customer, body=models.SendBody(client_message_id="m1", body="hi")
    )
    assert isinstance(sent, models.MessageOut) and sent.message.seq == 1, sent
    page = await _mod("api.chat.get_messages").asyncio(session_id, client=mitra)
    assert [m.body for m in page.messages] == ["hi"]
    ended = await _mod("api.sessions.end_session").asyncio(
        session_id, client=mitra, body=models.NoFields()
    )
    assert isinstance(ended, models.SessionOut) and ended.session.status == "ended", ended
