"""Driving the sweep's UIs in tests: a headless Chromium (Playwright on the system's browser) and the
UI servers (MLflow, optuna-dashboard) on a free loopback port.

    with ui_server(["mlflow", "server", ...]) as base:   # http://127.0.0.1:<port>
        with chromium() as browser: ...

SWEEP_SCREENSHOTS=docs pytest -k browser writes the screenshots into docs/ (the README shows them);
otherwise they go to the test's temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
NO_CHROMIUM = (
    "no Chromium here: install it (Debian/Ubuntu: apt-get install -y chromium) to run the browser tests"
)
# Every <audio>'s duration once its metadata loads (-1 where it fails to load).
AUDIO_DURATIONS = """() => Promise.all([...document.querySelectorAll('audio')].map(a => a.readyState >= 1
    ? a.duration
    : new Promise(done => { a.addEventListener('loadedmetadata', () => done(a.duration));
                            a.addEventListener('error', () => done(-1)); a.load(); })))"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ui_server(command: list[str], port: int, ready_path: str = "/", timeout: float = 90.0):
    """Run `command` (which serves on 127.0.0.1:port) until the block ends; yields its base URL once
    `ready_path` answers."""
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(base + ready_path, timeout=5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read() if process.poll() is not None else "(still running)"
                    raise RuntimeError(f"{command[0]} did not come up on {base}: {output[-2000:]}") from None
                time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def chromium():
    """A headless Chromium page, 1900 x 1100 (skips the test where no Chromium is installed)."""
    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' brings Playwright")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": 1900, "height": 1100})
        finally:
            browser.close()


def frame_with_audio(page, timeout: float = 60.0):
    """The page's frame (MLflow shows an HTML artifact in an iframe) that holds <audio> elements."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in page.frames:
            with contextlib.suppress(Exception):  # a frame may navigate away while we look
                if frame.evaluate("() => document.querySelectorAll('audio').length"):
                    return frame
        page.wait_for_timeout(500)
    raise AssertionError(f"no frame with <audio> elements at {page.url}")


def close_mlflow_assistant(page) -> None:
    """MLflow 3 opens its assistant beside every page: closed, the screenshots show the page."""
    with contextlib.suppress(Exception):
        page.get_by_role("button", name="Close", exact=True).click(timeout=3000)


def screenshot(page, name: str, tmp_path: Path, full_page: bool = False) -> Path:
    """`name`.png into $SWEEP_SCREENSHOTS (the README's docs/) when set, else into tmp_path."""
    folder = Path(os.environ.get("SWEEP_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
