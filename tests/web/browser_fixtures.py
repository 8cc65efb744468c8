"""Fixtures for the touchscreen page tests (imported by test_page.py): the real kiosk as a subprocess and a headless Debian chromium.

Nothing here touches the network: the kiosk listens on 127.0.0.1, chromium runs with every background service
off, and selenium never looks for a driver (the path is explicit and SE_OFFLINE is set).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "tests" / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
READY_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kiosk_command() -> list[str]:
    exe = Path(sys.executable).with_name("storeclerk")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "runtime.cli"]


def _wait_ready(proc: subprocess.Popen, url: str, log: Path) -> dict:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the kiosk exited with {proc.returncode} before it was ready:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                body = r.read()
                if r.status == 200:
                    return json.loads(body or b"{}")
                last = f"HTTP {r.status}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError) as e:
            last = repr(e)
        time.sleep(0.25)
    raise RuntimeError(f"the kiosk was not ready after {READY_TIMEOUT_S} s ({last}):\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def kiosk(tmp_path_factory):
    """The real kiosk (`storeclerk run`) on a free port; yields its base URL; stopped with SIGTERM, must exit 0."""
    state = tmp_path_factory.mktemp("kiosk-state")
    log = state.parent / "kiosk.log"
    port = _free_port()
    cmd = [*_kiosk_command(), "run", "--host", "127.0.0.1", "--port", str(port), "--no-voice", "--no-camera",
           "--state-dir", str(state)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, log)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail(f"the kiosk did not stop within 20 s of SIGTERM:\n{log.read_text()[-3000:]}")
    assert proc.returncode == 0, f"the kiosk exited with {proc.returncode} on SIGTERM:\n{log.read_text()[-3000:]}"


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Headless Debian chromium through Debian's chromedriver, portrait 1080×1920 like the kiosk screen."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e .[dev])")
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never try to download a driver or a browser
    profile = tmp_path_factory.mktemp("chromium-profile")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1080,1920", f"--user-data-dir={profile}", "--disable-dev-shm-usage",
                "--hide-scrollbars", "--lang=en-US", "--force-prefers-reduced-motion"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(profile.parent / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(30)
    # The whole 1080×1920 is the page, as on the kiosk's portrait screen (--window-size includes the window frame).
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 1080, "height": 1920, "deviceScaleFactor": 1, "mobile": False})
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
