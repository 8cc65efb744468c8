"""The page's voice controls in a real browser (headless Debian chromium) against a real Kiosk loop served by
uvicorn in this process, with a fake voice stage (tests/runtime/test_server_voice.py) in place of the
microphone, Whisper and Piper: the button reaches the stage, and what the stage broadcasts reaches the screen.

Screenshots go to tests/artifacts/screenshots/ like the other page tests.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

# Fixtures live beside this file, not in a conftest.py (see test_page.py); the page helpers are test_page's own.
from browser_fixtures import browser, screenshots  # noqa: F401
from test_page import (
    CONTRAST_JS,
    assert_local_and_clean,
    assert_no_sideways_scroll,
    assert_touch_targets,
    count,
    js,
    last_text,
    open_page,
    set_viewport,
    shown,
    start_conversation,
    text_of,
    wait_for,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))  # the fake voice stage and stub kiosk
from test_server_voice import FakeVoice, make_kiosk  # noqa: E402

from runtime.server import create_app  # noqa: E402

pytestmark = pytest.mark.browser

READY_S = 20


@pytest.fixture(scope="module")
def voice_kiosk():
    """A Kiosk with a fake voice stage behind the real server on a free port; ``call`` runs a coroutine on its loop."""
    uvicorn = pytest.importorskip("uvicorn")
    kiosk = make_kiosk()
    kiosk.voice = FakeVoice(kiosk)
    ready: dict = {}

    async def on_started():
        ready["loop"] = asyncio.get_running_loop()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(kiosk, on_started=on_started, store_name="Voice test store"),
                                           host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="voice-kiosk", daemon=True)
    thread.start()
    deadline = time.monotonic() + READY_S
    while not (server.started and "loop" in ready):
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the voice test kiosk did not start")
        time.sleep(0.05)

    def call(coro):
        return asyncio.run_coroutine_threadsafe(coro, ready["loop"]).result(timeout=10)

    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", kiosk=kiosk, voice=kiosk.voice, call=call)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        assert not thread.is_alive(), "the voice test kiosk did not stop"


@pytest.fixture
def page(browser, voice_kiosk):  # noqa: F811
    v = voice_kiosk.voice
    v.current, v.muted, v.mode = "idle", False, "ptt"
    v.calls.clear()
    open_page(browser, voice_kiosk.url)
    return browser


def attr(driver, css, name):
    return js(driver, "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null", css, name)


def status(driver) -> dict:
    """What the listening indicator shows: its words, its icon, its outline (the non-colour cues)."""
    return js(driver, """
        const bar = document.getElementById('voice-bar'), box = document.querySelector('.voice-status');
        return {state: bar.dataset.state, text: document.getElementById('voice-status-text').textContent,
                icon: document.getElementById('voice-icon').dataset.icon || 'mic',
                border: getComputedStyle(box).borderTopStyle, role: box.getAttribute('role')};""")


def wait_call(voice, call, message):
    deadline = time.monotonic() + 10
    while call not in voice.calls:
        if time.monotonic() > deadline:
            pytest.fail(f"{message}: the stage got {voice.calls}")
        time.sleep(0.05)


def test_voice_turn_end_to_end(page, voice_kiosk, screenshots):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains

    v = voice_kiosk.voice
    # Nothing about voice shows before the kiosk has said it has voice.
    assert not shown(page, "#mic-button") and not shown(page, "#voice-mute")
    start_conversation(page)
    sid = js(page, "return storeclerk.state().session")
    wait_for(page, lambda d: shown(d, "#mic-button") and shown(d, "#voice-bar") and shown(d, "#voice-mute"),
             message="the voice controls did not appear for a kiosk with voice")
    assert ("attach", sid) in v.calls
    assert attr(page, "#mic-button", "aria-pressed") == "false"
    idle = status(page)
    assert idle["text"] == "Hold the microphone button and speak." and idle["role"] == "status"
    assert_touch_targets(page)

    # Hold the button with the pointer: the stage hears ptt_start, then ptt_stop on release.
    mic = page.find_element("css selector", "#mic-button")
    ActionChains(page).click_and_hold(mic).perform()
    wait_call(v, ("ptt", True), "holding the button did not start push-to-talk")
    wait_for(page, lambda d: status(d)["state"] == "listening", message="the page never showed listening")
    assert attr(page, "#mic-button", "aria-pressed") == "true"
    listening = status(page)
    voice_kiosk.call(voice_kiosk.kiosk.broadcast({"type": "caption", "session": sid, "text": "where is the oat", "final": False}))
    wait_for(page, lambda d: "where is the oat" in text_of(d, "#caption"), message="no partial caption")
    assert js(page, "return document.getElementById('caption').classList.contains('is-partial')")
    assert count(page, "#log .msg-customer") == 0, "a partial caption is not yet the customer's message"
    page.save_screenshot(str(screenshots / "voice-listening.png"))
    ActionChains(page).release(mic).perform()
    wait_call(v, ("ptt", False), "letting go did not stop push-to-talk")
    wait_for(page, lambda d: attr(d, "#mic-button", "aria-pressed") == "false")
    assert [c for c in v.calls if c[0] == "ptt"] == [("ptt", True), ("ptt", False)]

    # States are told apart by words, icon and outline, not by colour alone.
    seen = {"listening": listening}
    for state in ("thinking", "speaking"):
        voice_kiosk.call(v.set_state(state))
        wait_for(page, lambda d, s=state: status(d)["state"] == s, message=f"the page never showed {state}")
        seen[state] = status(page)
    assert [seen[s]["text"] for s in ("listening", "thinking", "speaking")] == ["Listening…", "Thinking…", "Speaking…"]
    assert len({s["icon"] for s in seen.values()}) == 3, seen
    assert len({s["border"] for s in seen.values()}) == 3, seen
    voice_kiosk.call(v.set_state("idle"))

    # The stage's "…" when speech starts is no caption and no message.
    voice_kiosk.call(voice_kiosk.kiosk.broadcast({"type": "caption", "session": sid, "text": "…", "final": False}))
    voice_kiosk.call(voice_kiosk.kiosk.broadcast({"type": "caption", "session": sid, "text": "…", "final": True}))
    time.sleep(0.3)
    assert not shown(page, "#caption") and count(page, "#log .msg-customer") == 0

    # A whole spoken turn: partial and final captions, the customer's bubble, the answer with its card.
    before = count(page, "#log .msg-kiosk")
    msg = voice_kiosk.call(v.say("where can I find the oat milk", ("where can I",)))
    wait_for(page, lambda d: count(d, "#log .msg-kiosk") > before, message="the spoken reply never showed")
    assert last_text(page, "#log .msg-customer").endswith("where can I find the oat milk")
    assert count(page, "#log .msg-customer") == 1
    assert msg["reply"] and msg["reply"] in last_text(page, "#log .msg-kiosk .bubble")
    assert count(page, "#log .msg-kiosk:last-of-type .card-product") == 1, "the spoken answer shows its product card"
    assert "Oat milk" in text_of(page, "#log .card-product")
    assert [c.text for c in page.find_elements("css selector", "#quick-replies .chip")] == \
        [q["label"] for q in msg["quick_replies"]]
    wait_for(page, lambda d: text_of(d, "#announcer").strip() != "", timeout=3)
    wait_for(page, lambda d: status(d)["state"] == "idle")
    failures = js(page, CONTRAST_JS)
    assert not failures, failures
    page.save_screenshot(str(screenshots / "voice-reply.png"))

    # The final caption line shows what was heard while the kiosk thinks.
    voice_kiosk.call(voice_kiosk.kiosk.broadcast({"type": "caption", "session": sid, "text": "thank you", "final": True}))
    wait_for(page, lambda d: "thank you" in text_of(d, "#caption"))
    assert js(page, "return document.getElementById('caption').classList.contains('is-final')")
    assert last_text(page, "#log .msg-customer").endswith("thank you")
    # Captions of another session never show here.
    voice_kiosk.call(voice_kiosk.kiosk.broadcast({"type": "caption", "session": "someone-else", "text": "secret", "final": True}))
    time.sleep(0.3)
    assert "secret" not in text_of(page, "#log")
    assert_local_and_clean(page, voice_kiosk.url)


def test_keyboard_toggles_and_mute(page, voice_kiosk, screenshots):  # noqa: F811
    from selenium.webdriver.common.keys import Keys

    v = voice_kiosk.voice
    start_conversation(page)
    wait_for(page, lambda d: shown(d, "#mic-button"))
    mic = page.find_element("css selector", "#mic-button")
    mic.send_keys(Keys.SPACE)  # one press starts…
    wait_call(v, ("ptt", True), "Space did not start push-to-talk")
    wait_for(page, lambda d: attr(d, "#mic-button", "aria-pressed") == "true" and status(d)["state"] == "listening")
    time.sleep(0.2)
    assert ("ptt", False) not in v.calls, "a keyboard press holds the microphone open until the next press"
    mic.send_keys(Keys.ENTER)  # …the next one stops
    wait_call(v, ("ptt", False), "Enter did not stop push-to-talk")
    wait_for(page, lambda d: attr(d, "#mic-button", "aria-pressed") == "false")
    mic.send_keys(Keys.ENTER)
    wait_for(page, lambda d: attr(d, "#mic-button", "aria-pressed") == "true")
    mic.send_keys(Keys.ESCAPE)  # Escape lets go too
    wait_for(page, lambda d: attr(d, "#mic-button", "aria-pressed") == "false")
    mic.send_keys(Keys.SPACE)
    wait_for(page, lambda d: attr(d, "#mic-button", "aria-pressed") == "true")
    mic.click()  # and so does a touch on the button the keyboard turned on
    wait_for(page, lambda d: attr(d, "#mic-button", "aria-pressed") == "false")
    time.sleep(0.2)
    assert [c for c in v.calls if c[0] == "ptt"] == [("ptt", True), ("ptt", False)] * 3
    assert count(page, "#log .msg") == 0, "nothing was typed into the conversation"

    mute = page.find_element("css selector", "#voice-mute")
    assert attr(page, "#voice-mute", "aria-pressed") == "false" and mute.get_attribute("aria-label")
    mute.click()
    wait_call(v, ("muted", True), "the mute toggle did not reach the stage")
    wait_for(page, lambda d: attr(d, "#voice-mute", "aria-pressed") == "true")
    assert shown(page, "#voice-mute .icon-muted") and not shown(page, "#voice-mute .icon-sound")
    page.save_screenshot(str(screenshots / "voice-muted.png"))
    mute.send_keys(Keys.ENTER)
    wait_call(v, ("muted", False), "unmuting did not reach the stage")
    wait_for(page, lambda d: attr(d, "#voice-mute", "aria-pressed") == "false")
    # The kiosk's word is final: muted from elsewhere (another page, the operator) shows here too.
    v.muted = True
    voice_kiosk.call(v.set_state("idle"))
    wait_for(page, lambda d: attr(d, "#voice-mute", "aria-pressed") == "true")
    assert_local_and_clean(page, voice_kiosk.url)


def test_voice_off_hides_everything(page, voice_kiosk):
    from selenium.webdriver.common.action_chains import ActionChains

    v = voice_kiosk.voice
    start_conversation(page)
    wait_for(page, lambda d: shown(d, "#mic-button"))
    ActionChains(page).click_and_hold(page.find_element("css selector", "#mic-button")).perform()
    wait_call(v, ("ptt", True), "holding the button did not start push-to-talk")
    voice_kiosk.call(voice_kiosk.kiosk.broadcast({"type": "voice_state", "state": "off", "muted": False, "mode": "ptt"}))
    wait_for(page, lambda d: not shown(d, "#mic-button"), message="the microphone stayed on screen with voice off")
    assert not shown(page, "#voice-mute") and not shown(page, "#voice-bar")
    assert js(page, "return document.getElementById('mic-button').disabled")
    assert js(page, "return storeclerk.state().ptt") is None, "a held button is let go when voice goes off"
    ActionChains(page).release().perform()
    # A kiosk that answers voice_off to a stale press: the page says so, and typing still works.
    js(page, "storeclerk.receive(arguments[0])", {"type": "error", "code": "voice_off", "message": "voice is off"})
    wait_for(page, lambda d: "type your question" in last_text(d, "#log .msg-notice"))
    assert shown(page, "#composer-input")
    # Voice coming back brings the controls back.
    voice_kiosk.call(v.set_state("idle"))
    wait_for(page, lambda d: shown(d, "#mic-button") and shown(d, "#voice-mute"))
    click_done = page.find_element("css selector", "#done-button")
    click_done.click()
    wait_for(page, lambda d: shown(d, "#attract"))
    assert not shown(page, "#caption")
    assert_local_and_clean(page, voice_kiosk.url)


@pytest.mark.parametrize("width, height", [(1080, 1920), (600, 1000)])
def test_high_contrast_large_text(page, voice_kiosk, screenshots, width, height):  # noqa: F811
    v = voice_kiosk.voice
    set_viewport(page, width, height)
    try:
        page.find_element("css selector", "#contrast-toggle").click()
        page.find_element("css selector", "[data-font-level='2']").click()
        start_conversation(page)
        wait_for(page, lambda d: shown(d, "#mic-button") and shown(d, "#voice-mute"))
        sid = js(page, "return storeclerk.state().session")
        for state in ("listening", "thinking", "speaking"):
            voice_kiosk.call(v.set_state(state))
            if state != "speaking":
                voice_kiosk.call(voice_kiosk.kiosk.broadcast({"type": "caption", "session": sid, "text": "is the bakery open",
                                                              "final": state == "thinking"}))
            wait_for(page, lambda d, s=state: status(d)["state"] == s)
            failures = js(page, CONTRAST_JS)
            assert not failures, (state, failures)
            assert_no_sideways_scroll(page)
            assert_touch_targets(page)
        box = js(page, "const r = document.getElementById('mic-button').getBoundingClientRect(); return [r.width, r.height]")
        assert abs(box[0] - box[1]) < 1, f"the microphone button is squeezed out of round: {box}"
        page.save_screenshot(str(screenshots / f"voice-high-contrast-{width}x{height}.png"))
    finally:
        voice_kiosk.call(v.set_state("idle"))
        js(page, "localStorage.clear()")
        set_viewport(page, 1080, 1920)


def test_a_press_while_offline_is_never_replayed(page, voice_kiosk):
    from selenium.webdriver.common.keys import Keys

    v = voice_kiosk.voice
    start_conversation(page)
    wait_for(page, lambda d: shown(d, "#mic-button"))
    js(page, "window.__RealWebSocket = window.WebSocket; window.WebSocket = function () { throw new Error('down'); };")
    try:
        js(page, "storeclerk.dropConnection()")
        wait_for(page, lambda d: not js(d, "return storeclerk.state().open"))
        page.find_element("css selector", "#mic-button").send_keys(Keys.SPACE)
        page.find_element("css selector", "#voice-mute").click()
        assert attr(page, "#mic-button", "aria-pressed") == "false", "the button cannot claim a microphone it cannot reach"
        assert attr(page, "#voice-mute", "aria-pressed") == "false"
    finally:
        js(page, "window.WebSocket = window.__RealWebSocket;")
    wait_for(page, lambda d: js(d, "return storeclerk.state().open"), timeout=20, message="the page did not reconnect")
    sid = js(page, "return storeclerk.state().session")
    deadline = time.monotonic() + 10
    while v.calls.count(("attach", sid)) < 2:  # once on start, again on the resume after the reconnect
        assert time.monotonic() < deadline, f"the reconnected page was not re-attached: {v.calls}"
        time.sleep(0.05)
    time.sleep(0.5)
    assert not [c for c in v.calls if c[0] in ("ptt", "muted")], f"an offline press reached the kiosk later: {v.calls}"
    assert_local_and_clean(page, voice_kiosk.url)
