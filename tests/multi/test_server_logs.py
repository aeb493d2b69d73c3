"""What a real `halobestie serve` writes to its log at INFO: never a token, even where
uvicorn logs a WebSocket's path (`/ws?token=...`)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from tests.conftest import Servers
from tests.multi.processes import serve_process


async def test_a_sockets_access_token_never_reaches_the_server_log(
    clean: Servers, tmp_path: Path
) -> None:
    async with serve_process(clean, tmp_path, "logs", LOG_LEVEL="INFO") as server:
        await server.wait_serving()
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            r = await client.post(
                "/api/auth/register",
                json={
                    "email": "log-reader@example.com",
                    "password": "correct horse battery",
                    "display_name": "Reader",
                },
            )
            assert r.status_code == 201, r.text
            token = r.json()["access_token"]
            ws_url = server.url.replace("http://", "ws://") + f"/ws?token={token}"
            async with connect(ws_url, open_timeout=10) as ws:
                ready = json.loads(await ws.recv())
                assert ready["type"] == "ready", ready
        log = server.tail()

    assert "WebSocket /ws?token=***" in log, log  # the line is there, the secret is not
    assert token not in log
    assert token.split(".")[2] not in log  # not even the signature
