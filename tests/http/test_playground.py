"""The playground page in a real headless browser (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import shutil

import pytest

from tokenwire.server.app import Server

from ..helpers import async_wait_for, sample
from .conftest import HttpServerFactory, base_url

CHROMIUM = shutil.which("chromium")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed: make test installs it"
)

# The flags a sandboxed root CI needs; background networking would try hosts we cannot reach.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def metric(server: Server, name: str, **labels: str) -> float:
    return sample(server.metrics.text().decode(), name, labels)


async def test_type_stream_stop_and_the_engine_request_is_freed(
    make_http_server: HttpServerFactory,
) -> None:
    from playwright.async_api import async_playwright

    server = await make_http_server(sim_ttft_ms=5, sim_itl_ms=20)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = await browser.new_page()
            await page.goto(base_url(server) + "/")
            assert await page.title() == "tokenwire playground"

            # A short answer streams to its end, with its figures.
            await page.fill("#max-tokens", "8")
            await page.fill("#prompt", "Tell me about rivers")
            await page.click("#send")
            await page.wait_for_function(
                "document.getElementById('finish').textContent === 'length'", timeout=10_000
            )
            assert (await page.text_content("#usage") or "").endswith("+ 8")
            assert (await page.text_content("#ttft") or "").endswith("ms")
            assert await page.locator(".turn").count() == 2

            # A long one is stopped part-way: the engine request is aborted.
            await page.fill("#max-tokens", "5000")
            await page.fill("#prompt", "Go on and on")
            await page.click("#send")
            await page.wait_for_function(
                "Number(document.getElementById('tokens').textContent) >= 3", timeout=10_000
            )
            assert server.engine.in_flight() == 1
            await page.click("#stop")
            await page.wait_for_function(
                "document.getElementById('finish').textContent === 'stopped'", timeout=10_000
            )
            await async_wait_for(lambda: server.engine.in_flight() == 0, within=5)
            await async_wait_for(
                lambda: metric(server, "tokenwire_aborts_total", reason="cancelled") == 1
            )
        finally:
            await browser.close()
