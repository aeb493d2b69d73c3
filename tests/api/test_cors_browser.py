"""CORS from a real browser (issue 12 point 6): headless Chromium (Debian's `chromium`,
through Playwright, as in tests/console/test_console_browser.py) loads a page served on
one origin whose script calls the API on the app's origin with a bearer token: a framework
route, the hot path's heartbeat (both preflighted, for the Authorization header) and the
beacon (a simple request). From the allowed origin all three work; from another origin the
browser blocks all three, and the preflighted writes never reach the server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

import asyncpg
import pytest
from playwright.async_api import Browser, expect

from tests.console.test_console_browser import browser
from tests.events.live import Live, LiveFactory, live_app_fixture
from tests.factories import make_user

__all__ = ["browser", "live_app_fixture"]

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>front end</title></head>
<body><pre id="result">pending</pre>
<script>
const params = new URLSearchParams(location.search);
const api = params.get("api"), token = params.get("token");
async function call(method, path, withToken) {
  const headers = withToken ? {Authorization: "Bearer " + token} : {};
  try {
    const r = await fetch(api + path, {method, headers});
    return {status: r.status, body: await r.json()};
  } catch (e) {
    return {blocked: String(e)};
  }
}
(async () => {
  const result = {
    online: await call("POST", "/api/mitra/status/online", true),
    heartbeat: await call("POST", "/api/mitra/status/heartbeat", true),
    beacon: await call("GET", "/api/availability", false),
  };
  document.getElementById("result").textContent = JSON.stringify(result);
})();
</script></body></html>
"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass


@contextmanager
def front_end() -> Iterator[str]:
    """A tiny static server on its own port: its origin, e.g. http://127.0.0.1:40123."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, name="front-end", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def run_page(browser: Browser, origin: str, live: Live, token: str) -> dict[str, Any]:
    page = await browser.new_page()
    try:
        query = urlencode({"api": f"http://127.0.0.1:{live.port}", "token": token})
        await page.goto(f"{origin}/?{query}")
        await expect(page.locator("#result")).not_to_have_text("pending", timeout=15_000)
        result: dict[str, Any] = json.loads(await page.locator("#result").inner_text())
        return result
    finally:
        await page.close()


async def test_a_page_on_the_allowed_origin_calls_the_api_and_another_is_blocked(
    live_app: LiveFactory, browser: Browser, pg: asyncpg.Connection
) -> None:
    with front_end() as allowed, front_end() as other:
        async with live_app(CORS_ALLOWED_ORIGINS=allowed) as live:
            blocked_mitra = await make_user(live.ctx, "mitra")
            result = await run_page(browser, other, live, blocked_mitra.token)
            assert set(result) == {"online", "heartbeat", "beacon"}
            for name, answer in result.items():
                assert "Failed to fetch" in answer.get("blocked", ""), (name, answer)
            # The refused preflight stopped the write before it was sent.
            online = "SELECT is_online FROM mitras WHERE id = $1"
            assert await pg.fetchval(online, blocked_mitra.id) is False

            mitra = await make_user(live.ctx, "mitra")
            result = await run_page(browser, allowed, live, mitra.token)
            assert result["online"]["status"] == 200, result
            assert result["heartbeat"]["status"] == 200, result
            assert result["heartbeat"]["body"]["is_online"] is True
            assert result["beacon"]["status"] == 200, result
            assert await pg.fetchval(online, mitra.id) is True
