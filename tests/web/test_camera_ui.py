"""The camera end to end in a real browser: `storeclerk run --camera FOLDER` (an image-folder camera showing a
product barcode), headless Chromium on the attract screen. The held-up code wakes the page, the product's card
appears, and "is this gluten-free?" is answered about that product."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import zxingcpp

# Re-exported pytest fixtures (see test_page.py).
from browser_fixtures import _free_port, _kiosk_command, _wait_ready, browser, screenshots  # noqa: F401
from test_page import ask, count, js, last_text, open_page, wait_for

REPO = Path(__file__).resolve().parents[2]
KB = REPO / "data" / "kb"


@pytest.fixture(scope="module")
def camera_kiosk(tmp_path_factory):
    from runtime.kb import KnowledgeBase

    kb = KnowledgeBase.load(KB)
    oat = kb.product("oatly-oat-milk")
    cam = tmp_path_factory.mktemp("camera")
    code = np.asarray(zxingcpp.write_barcode_to_image(zxingcpp.create_barcode(oat.ean13, zxingcpp.BarcodeFormat.EAN13), scale=2))
    shot = cv2.resize(cv2.imread(str(KB / "images" / oat.image)), (640, 480))
    h, w = code.shape
    shot[100:100 + h, 150:150 + w] = code[:, :, None]  # the label's barcode, held up flat
    cv2.imwrite(str(cam / "frame.png"), shot)
    state = tmp_path_factory.mktemp("camera-kiosk-state")
    log = state.parent / "camera-kiosk.log"
    port = _free_port()
    cmd = [*_kiosk_command(), "run", "--host", "127.0.0.1", "--port", str(port), "--no-voice", "--camera", str(cam),
           "--state-dir", str(state)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        health = _wait_ready(proc, url, log)
        yield url, health, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_held_up_barcode_wakes_the_page_and_this_one_is_that_product(browser, camera_kiosk, screenshots):  # noqa: F811
    url, _, log = camera_kiosk
    open_page(browser, url)
    # Nobody touched the screen: the code in front of the camera starts the conversation and shows its card.
    wait_for(browser, lambda d: count(d, "#log .card-product") >= 1, timeout=30,
             message=f"no product card from the camera:\n{log.read_text()[-2000:]}")
    assert "Shown to the camera: Oat milk (Oatly)" in js(browser, "return document.querySelector('#log').innerText")
    assert "Oatly" in last_text(browser, "#log .msg-kiosk .bubble")
    ask(browser, "is this gluten-free?")
    answer = last_text(browser, "#log .msg-kiosk .bubble")
    assert "Oatly" in answer or "Oat milk" in answer, answer
    browser.save_screenshot(str(screenshots / "camera-scan.png"))
    # One code held up for seconds is one answer, not one per frame.
    assert count(browser, "#log .msg-customer") == 2


def test_healthz_reports_the_camera(camera_kiosk):
    import json
    import urllib.request

    url, _, _ = camera_kiosk
    with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
        vision = json.loads(r.read())["vision"]
    assert vision["state"] == "on" and vision["camera"] == "ok" and vision["frames"] > 0, vision
    assert vision["detectors"]["products"] == "on"
