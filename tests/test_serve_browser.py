"""The web page in a real headless Chromium (the system's, Debian package `chromium`, driven by Playwright; no
browser is downloaded): `msjoe serve` runs on the smoke-test models as the README shows; the page indexes a
video from the server's folder and an uploaded one, asks a question, and shows the answer and the explain
timeline. A screenshot is saved in the test's temporary folder.

Without Chromium or Playwright the test is skipped with the reason (pytest -ra prints it); `.ci/run` installs
Chromium with apt-get when it can.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from _serve_helpers import free_port, wait_until
from msjoe.synthetic_video import write_video
from msjoe.tiny_models import write_smoke_models

# Flags that let Chromium run as root in a container with no network beyond localhost: without the background
# networking ones it keeps trying (and failing) to reach Google's services.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    configured = os.environ.get("MSJOE_CHROMIUM")
    if configured:
        return configured
    return next((found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None)


@pytest.fixture(scope="module")
def chromium() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    path = find_chromium()
    if path is None:
        pytest.skip(
            "no Chromium on this machine: install Debian's package (apt-get install chromium) or set MSJOE_CHROMIUM"
        )
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`msjoe serve` on the smoke-test models (a subprocess, as a user starts it); (URL, smoke folder)."""
    smoke = tmp_path_factory.mktemp("smoke") / "smoke-models"
    paths = write_smoke_models(smoke)
    port = free_port()
    command = [
        sys.executable, "-m", "msjoe", "serve", "--mllm", str(paths["mllm"]), "--clip", str(paths["clip"]),
        "--video-root", str(smoke), "--cache-dir", str(smoke / "cache"), "--state-dir", str(smoke / "state"),
        "--port", str(port), "-k", "8", "--log-level", "warning",
    ]  # fmt: skip
    log = (smoke.parent / "serve.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"msjoe serve exited: {(smoke.parent / 'serve.log').read_text()}")
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, timeout=120, what="msjoe serve to start")
        yield url, smoke
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def test_the_page_indexes_asks_and_shows_why(chromium: str, served: tuple[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, _ = served
    upload = write_video(tmp_path / "upload me.mp4", duration=5.0, fps=4.0, size=(96, 64))
    requests: list[str] = []
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda message: message.type == "error" and problems.append(message.text))
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(url)
            expect(page.locator("#health")).to_contain_text("MLLM")

            # A video from the server's folder, then an upload: both indexed, with progress shown meanwhile.
            page.select_option("#root-files", label="smoke-models/demo.mp4")
            page.click("#add-video")
            expect(page.locator("#videos li[data-state=indexed]")).to_have_count(1, timeout=120_000)
            page.set_input_files("#upload-file", str(upload))
            page.click("#upload-button")
            expect(page.locator("#videos li[data-state=indexed]")).to_have_count(2, timeout=120_000)
            expect(page.locator("#videos")).to_contain_text("upload/upload me.mp4")

            page.select_option("#ask-video", label="smoke-models/demo.mp4")
            page.fill("#question", "What colour fills the screen when the dark square appears?")
            page.fill("#options", "red\ngreen\nblue\nyellow")
            page.fill("#k", "8")
            page.click("#ask-button")
            expect(page.locator("#answer")).to_be_visible(timeout=180_000)
            expect(page.locator("#answer-letter")).not_to_be_empty()
            assert len(page.locator("#answer-frames").inner_text().split(", ")) == 8

            # The explain view: the timeline with one marker per key frame, and the key frames.
            explain = page.frame_locator("#explain-frame")
            expect(explain.locator("svg#timeline")).to_be_visible(timeout=30_000)
            expect(explain.locator("svg#timeline [id^=chosen-]")).to_have_count(8)
            expect(explain.locator("figure.chosen img")).to_have_count(8)
            expect(page.locator("#answers li")).to_have_count(1)

            screenshot = tmp_path / "serve.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    print(f"screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000
    assert not problems, problems
    # The page fetched nothing from anywhere but the server (the explain view is srcdoc, its images data: URIs).
    assert all(r.startswith(url) or r.startswith(("data:", "about:")) for r in requests), requests
