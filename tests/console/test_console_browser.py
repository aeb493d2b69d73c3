"""The operator console in a real browser: headless Chromium (Debian's `chromium`,
installed by scripts/test) driven by Playwright, against a real server with demo traffic,
real Postgres and a Valkey behind a fault proxy. Screenshots go to test-artifacts/."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Dialog, Page, async_playwright, expect

from halobestie.clock import SystemClock
from tests.conftest import Servers
from tests.events.live import Live, LiveFactory
from tests.factories import PASSWORD, Person, make_user
from tests.failures import helpers
from tests.simulator.helpers import simulation
from tests.support.proxy import FaultProxy

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]
valkey_proxy_fixture = helpers.valkey_proxy_fixture

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WAIT_MS = 15_000  # the longest any one thing may take to show on the page
# Fast cadences, but a heartbeat stays fresh long enough for the test's own mitra.
SERVER = {
    "TIMERS_ENABLED": True,
    "SWEEPS_ENABLED": True,
    "HEARTBEAT_INTERVAL_SECONDS": 1,
    "HEARTBEAT_STALE_SECONDS": 10,
    "MITRA_AUTO_OFFLINE_SWEEP_SECONDS": 1,
    "PAIRING_OFFER_TTL_SECONDS": 3,
    "PAYMENT_TIMEOUT_SECONDS": 5,
    "AVAILABILITY_SNAPSHOT_TTL_SECONDS": 1,
}


def chromium_path() -> str | None:
    for candidate in (shutil.which("chromium"), "/usr/bin/chromium", "/usr/lib/chromium/chromium"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    path = chromium_path()
    if path is None:
        message = "Debian's chromium is not installed (scripts/test installs it as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=path)
        try:
            yield launched
        finally:
            await launched.close()


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)


async def keep_alive(live: Live, mitra: Person) -> None:
    """The test's own mitra: online and heartbeating until cancelled."""
    r = await live.client.post("/api/mitra/status/online", headers=mitra.headers)
    assert r.status_code == 200, r.text
    while True:
        await live.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)
        await asyncio.sleep(1)


async def number(page: Page, element_id: str) -> int:
    text = await page.locator(f"#{element_id}").inner_text()
    return int(text) if text.strip().isdigit() else -1


async def test_the_console_shows_the_demo_live_deactivates_and_shows_the_fallback(
    live_app: LiveFactory, clean: Servers, valkey_proxy: FaultProxy, browser: Browser
) -> None:
    valkey_url = helpers.valkey_url_via(clean, valkey_proxy)
    async with live_app(clock=SystemClock(), VALKEY_URL=valkey_url, **SERVER) as live:
        admin = await make_user(live.ctx, "admin")
        watched = await make_user(live.ctx, "mitra")
        page = await browser.new_page(viewport={"width": 1366, "height": 900})
        page.set_default_timeout(WAIT_MS)
        try:
            await page.goto(f"http://127.0.0.1:{live.port}/admin")
            await page.get_by_label("Email").fill(admin.user.email)
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Log in").click()
            await expect(page.locator("#live")).to_have_text("live")
            await expect(page.locator("#count-online")).to_have_text("0")

            # Demo traffic: the counts move on the page, pushed over the socket.
            async with simulation(live, admin=admin, churn=False):
                await page.wait_for_function(
                    "() => Number(document.getElementById('count-online').textContent) >= 2"
                )
                await page.wait_for_function(
                    "() => ['sessions-pending_payment', 'sessions-active', 'sessions-ended']"
                    ".some(id => Number(document.getElementById(id).textContent) > 0)"
                )
                await expect(page.locator("#mitra-rows tr")).to_have_count(5)  # 4 + watched
                await shot(page, "demo")
            # Stopped: its mitras went offline; the test's own mitra is the one available.
            heartbeats = asyncio.create_task(keep_alive(live, watched))
            try:
                await expect(page.locator("#count-online")).to_have_text("1")
                await expect(page.locator("#count-available")).to_have_text("1")
                name = watched.user.display_name

                async def confirm(dialog: Dialog) -> None:
                    await dialog.accept()

                page.once("dialog", confirm)
                await page.get_by_role("button", name=f"Deactivate {name}", exact=True).click()
                await expect(page.locator("#count-available")).to_have_text("0")
                await expect(page.locator("#count-deactivated")).to_have_text("1")
                row = page.locator(f"#mitra-rows tr[data-id='{watched.id}']")
                await expect(row.locator(".badge")).to_have_text("deactivated")
                await expect(
                    page.get_by_role("button", name=f"Reactivate {name}", exact=True)
                ).to_be_visible()
                await shot(page, "deactivated")
            finally:
                heartbeats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeats

            # Valkey gone: the next push says availability is read from Postgres.
            await expect(page.locator("#fallback")).to_be_hidden()
            await valkey_proxy.cut()
            await expect(page.locator("#fallback")).to_be_visible()
            await expect(page.locator("#health-source")).to_have_text("Postgres (fallback)")
            await expect(page.locator("#count-deactivated")).to_have_text("1")  # from Postgres
            await shot(page, "fallback")
            await page.set_viewport_size({"width": 390, "height": 844})  # a phone
            await shot(page, "phone")
        except BaseException:
            await shot(page, "failure")
            raise
        finally:
            await valkey_proxy.restore()
            await page.close()
