"""The touchscreen page in a real browser (headless Debian chromium) against the real kiosk (`storeclerk run`).

Each test loads the page afresh and ends by checking that no request left the machine and that the browser
logged no error. Screenshots go to tests/artifacts/screenshots/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

# Fixtures live beside this file, not in a conftest.py: a second module named "conftest" would shadow the
# suite's own (tests/conftest.py) for tests that import helpers from it.
from browser_fixtures import browser, kiosk, screenshots  # noqa: F401

pytestmark = pytest.mark.browser

WEB = Path(__file__).resolve().parents[2] / "runtime" / "web"
QUESTION = "where can I find the oat milk"
WAIT_S = 15

# Relative luminance / contrast ratio (WCAG 2.x) of every visible text against its effective background.
CONTRAST_JS = r"""
const parse = (c) => { const m = /rgba?\(([^)]+)\)/.exec(c || ''); if (!m) return null;
  const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
const lum = ({r, g, b}) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
const bgOf = (el) => { const layers = [];
  for (let n = el; n; n = n.parentElement) { const c = parse(getComputedStyle(n).backgroundColor);
    if (c && c.a > 0) { layers.push(c); if (c.a >= 1) break; } }
  let base = {r: 255, g: 255, b: 255};
  for (let i = layers.length - 1; i >= 0; i--) { const c = layers[i];
    base = {r: c.r * c.a + base.r * (1 - c.a), g: c.g * c.a + base.g * (1 - c.a), b: c.b * c.a + base.b * (1 - c.a)}; }
  return base; };
const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
const out = [];
const check = (el, color, what) => { const fg = parse(color); if (!fg) return;
  const r = ratio(fg, bgOf(el)); if (r < 4.5) out.push(`${what}: ${r.toFixed(2)} (${color} on ${JSON.stringify(bgOf(el))})`); };
for (const el of document.body.querySelectorAll('*')) {
  if (el.closest('.visually-hidden, [hidden], svg')) continue;
  if (!el.getClientRects().length) continue;
  const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
  const name = el.className && typeof el.className === 'string' ? '.' + el.className.split(' ')[0] : el.tagName;
  const label = name + ' "' + el.textContent.trim().slice(0, 30) + '"';
  if (own) check(el, getComputedStyle(el).color, label);
  if (el.tagName === 'INPUT') check(el, getComputedStyle(el, '::placeholder').color, 'placeholder of ' + label);
}
return out;
"""


# ---------------------------------------------------------------------------------------------- helpers


def wait_for(driver, predicate, timeout=WAIT_S, message=""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: predicate(d), message)


def set_viewport(driver, width, height):
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)


def js(driver, script, *args):
    return driver.execute_script(script, *args)


def open_page(driver, url):
    """A fresh page with no saved preferences, once its strings are applied."""
    driver.get(url + "/")
    js(driver, "localStorage.clear()")
    driver.get(url + "/")
    wait_for(driver, lambda d: js(d, "return document.body.dataset.ready === 'true'"), message="the page never became ready")
    driver.get_log("browser")  # forget the first load's log (the fixture cleared storage on it)


def shown(driver, css) -> bool:
    return bool(js(driver, "const e = document.querySelector(arguments[0]); return !!e && e.getClientRects().length > 0 && "
                           "getComputedStyle(e).visibility !== 'hidden'", css))


def count(driver, css) -> int:
    return js(driver, "return document.querySelectorAll(arguments[0]).length", css)


def text_of(driver, css) -> str:
    return js(driver, "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", css)


def last_text(driver, css) -> str:
    """innerText of the last element matching css."""
    return js(driver, "const all = document.querySelectorAll(arguments[0]); return all.length ? all[all.length - 1].innerText : ''", css)


def click(driver, css):
    driver.find_element("css selector", css).click()


def start_conversation(driver):
    click(driver, "#start-button")
    wait_for(driver, lambda d: shown(d, "#conversation") and js(d, "return !!storeclerk.state().session"),
             message="no session after tapping the attract screen")


def ask(driver, text):
    before = count(driver, "#log .msg-kiosk")
    box = driver.find_element("css selector", "#composer-input")
    box.send_keys(text)
    box.send_keys("\n")
    wait_for(driver, lambda d: count(d, "#log .msg-kiosk") > before, message=f"no kiosk reply to {text!r}")
    return before


def assert_local_and_clean(driver, url):
    """No request left localhost, and chromium logged nothing at SEVERE."""
    urls = js(driver, "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]")
    host = urlsplit(url).hostname
    for u in urls:
        parts = urlsplit(u)
        assert parts.scheme in {"http", "https", "ws", "data", "blob"}, u
        if parts.scheme in {"http", "https", "ws"}:
            assert parts.hostname in {host, "localhost", "127.0.0.1"}, f"a request left the kiosk: {u}"
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, "console errors:\n" + "\n".join(e.get("message", "") for e in severe)


def assert_touch_targets(driver):
    small = js(driver, """
        return [...document.querySelectorAll('button, input, [role=button]')]
          .filter(e => e.getClientRects().length && !e.closest('[hidden], .visually-hidden'))
          .map(e => [e.id || e.className || e.tagName, e.getBoundingClientRect()])
          .filter(([, r]) => r.width < 48 || r.height < 48)
          .map(([n, r]) => `${n}: ${Math.round(r.width)}x${Math.round(r.height)}`);""")
    assert not small, f"touch targets under 48 px: {small}"


def assert_no_sideways_scroll(driver):
    wide = js(driver, """
        return [document.documentElement.scrollWidth, innerWidth,
                [...document.querySelectorAll('body *')]
                  .filter(e => e.getClientRects().length && e.getBoundingClientRect().right > innerWidth + 1
                               && !e.closest('.visually-hidden'))
                  .map(e => e.className || e.tagName).slice(0, 5)];""")
    assert wide[0] <= wide[1] and not wide[2], f"content wider than the screen: {wide}"


# ---------------------------------------------------------------------------------------------- tests


def test_attract_screen(browser, kiosk, screenshots):
    open_page(browser, kiosk)
    assert shown(browser, "#attract") and not shown(browser, "#conversation")
    assert js(browser, "return document.documentElement.lang") == "en"
    assert "Touch to start" in text_of(browser, "#start-button")
    assert "Ask me anything" in text_of(browser, "#start-button")
    assert shown(browser, "#staff-button") and "Call staff" in text_of(browser, "#staff-button")
    assert not shown(browser, "#done-button")
    assert not shown(browser, "#mic-button"), "the microphone button stays hidden until voice lands"
    # Landmarks, a polite live region, and a label on every control.
    assert count(browser, "header") == 1 and count(browser, "main") == 1
    assert count(browser, "[aria-live=polite]") >= 1
    unlabeled = js(browser, """
        return [...document.querySelectorAll('button, input')].filter(e => {
          const name = (e.getAttribute('aria-label') || e.labels?.[0]?.textContent || e.textContent || '').trim();
          return !name; }).map(e => e.id || e.outerHTML.slice(0, 60));""")
    assert not unlabeled, unlabeled
    assert_touch_targets(browser)
    assert js(browser, "return getComputedStyle(document.body).userSelect") == "none"
    failures = js(browser, CONTRAST_JS)
    assert not failures, failures
    browser.save_screenshot(str(screenshots / "attract.png"))
    assert_local_and_clean(browser, kiosk)


def test_ask_for_a_product(browser, kiosk, screenshots):
    open_page(browser, kiosk)
    start_conversation(browser)
    assert shown(browser, "#composer-input") and shown(browser, "#done-button") and shown(browser, "#staff-button")
    ask(browser, QUESTION)
    assert QUESTION in last_text(browser, "#log .msg-customer")
    reply = last_text(browser, "#log .msg-kiosk .bubble")
    assert reply.strip(), "the kiosk reply has no text"
    assert not shown(browser, "#typing")
    wait_for(browser, lambda d: count(d, "#log .card-product") >= 1, message="no product card")
    card = text_of(browser, "#log .card-product")
    price = text_of(browser, "#log .card-product .price")
    assert re.search(r"\d[.,]\d\d", price) and re.search(r"[€$£¥]|[A-Z]{3}", price), f"price not formatted: {price!r}"
    assert "from:" in card, "the card names its source"
    # Product images load (or fall back to a placeholder), never a broken image.
    broken = js(browser, "return [...document.querySelectorAll('#log .card-product img')]"
                         ".filter(i => i.complete && !i.naturalWidth).length")
    assert broken == 0
    # The new kiosk message was handed to the polite live region.
    wait_for(browser, lambda d: text_of(d, "#announcer").strip() != "", timeout=3)
    assert_touch_targets(browser)
    failures = js(browser, CONTRAST_JS)
    assert not failures, failures
    browser.save_screenshot(str(screenshots / "answer.png"))

    chips = browser.find_elements("css selector", "#quick-replies .chip")
    if chips:
        label = chips[0].text
        before = count(browser, "#log .msg-kiosk")
        chips[0].click()
        wait_for(browser, lambda d: count(d, "#log .msg-kiosk") > before, message="no reply to a quick reply")
        assert label in last_text(browser, "#log .msg-customer")
    assert_local_and_clean(browser, kiosk)


def test_call_staff_from_the_attract_screen(browser, kiosk, screenshots):
    open_page(browser, kiosk)
    click(browser, "#staff-button")
    wait_for(browser, lambda d: shown(d, "#staff-banner") and "coming" in text_of(d, "#staff-banner").lower()
             and not js(d, "return document.getElementById('staff-banner').classList.contains('is-pending')"),
             message="no 'someone is coming' message")
    assert js(browser, "return !!storeclerk.state().session"), "call staff started a session first"
    assert shown(browser, "#conversation")
    assert js(browser, "return document.getElementById('staff-banner').getAttribute('role')") == "alert"
    browser.save_screenshot(str(screenshots / "staff.png"))
    click(browser, "#done-button")
    wait_for(browser, lambda d: shown(d, "#attract"), message="Done did not return to the attract screen")
    assert count(browser, "#log .msg") == 0 and not shown(browser, "#staff-banner"), "the next customer sees nothing of this one"
    assert js(browser, "return storeclerk.state().session") is None
    assert_local_and_clean(browser, kiosk)


def test_keyboard_only(browser, kiosk):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    open_page(browser, kiosk)
    active = lambda: js(browser, "return document.activeElement && document.activeElement.id")  # noqa: E731

    def tab_to(element_id, limit=12, back=False):
        for _ in range(limit):
            if back:
                ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
            else:
                ActionChains(browser).send_keys(Keys.TAB).perform()
            if active() == element_id:
                return
        pytest.fail(f"could not reach #{element_id} with the keyboard (stuck on {active()!r})")

    tab_to("start-button")
    outline = js(browser, "const s = getComputedStyle(document.activeElement); return [s.outlineStyle, parseFloat(s.outlineWidth)]")
    assert outline[0] != "none" and outline[1] >= 2, f"no visible focus: {outline}"
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait_for(browser, lambda d: active() == "composer-input", message="focus did not move to the text box")
    before = count(browser, "#log .msg-kiosk")
    ActionChains(browser).send_keys(QUESTION).send_keys(Keys.ENTER).perform()
    wait_for(browser, lambda d: count(d, "#log .msg-kiosk") > before, message="Enter did not send")
    assert active() == "composer-input", "focus stays in the text box after a reply"
    if count(browser, "#quick-replies .chip"):
        tab_to_chip = js(browser, "return document.querySelector('#quick-replies .chip') !== null")
        assert tab_to_chip
        ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
        assert js(browser, "return document.activeElement.classList.contains('chip')"), "quick replies sit just before the text box"
    tab_to("done-button")
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait_for(browser, lambda d: shown(d, "#attract"), message="Done (Enter) did not end the session")
    assert active() == "start-button", "focus returns to the attract screen's button"
    assert_local_and_clean(browser, kiosk)


def test_font_size_and_contrast_toggles(browser, kiosk, screenshots):
    open_page(browser, kiosk)
    size = lambda: js(browser, "return parseFloat(getComputedStyle(document.documentElement).fontSize)")  # noqa: E731
    headline = lambda: js(browser, "return parseFloat(getComputedStyle(document.querySelector('.attract-headline')).fontSize)")  # noqa: E731
    s0, h0 = size(), headline()
    click(browser, "[data-font-level='1']")
    s1, h1 = size(), headline()
    click(browser, "[data-font-level='2']")
    s2, h2 = size(), headline()
    assert s0 < s1 < s2 and h0 < h1 < h2, (s0, s1, s2, h0, h1, h2)
    assert js(browser, "return document.querySelector(\"[data-font-level='2']\").getAttribute('aria-pressed')") == "true"

    bg = lambda: js(browser, "return getComputedStyle(document.body).backgroundColor")  # noqa: E731
    fg = lambda: js(browser, "return getComputedStyle(document.body).color")  # noqa: E731
    normal_bg, normal_fg = bg(), fg()
    click(browser, "#contrast-toggle")
    assert bg() != normal_bg and fg() != normal_fg
    assert bg() == "rgb(0, 0, 0)" and fg() == "rgb(255, 255, 255)"
    assert js(browser, "return document.getElementById('contrast-toggle').getAttribute('aria-pressed')") == "true"

    browser.refresh()  # both settings persist (localStorage)
    wait_for(browser, lambda d: js(d, "return document.body.dataset.ready === 'true'"))
    assert size() == s2 and bg() == "rgb(0, 0, 0)"
    start_conversation(browser)
    ask(browser, QUESTION)
    assert_no_sideways_scroll(browser)
    failures = js(browser, CONTRAST_JS)
    assert not failures, failures
    assert_touch_targets(browser)
    browser.save_screenshot(str(screenshots / "high-contrast-large.png"))
    click(browser, "#contrast-toggle")
    click(browser, "[data-font-level='0']")
    assert bg() == normal_bg and size() == s0
    saved = js(browser, "return [localStorage.getItem('storeclerk.fontLevel'), localStorage.getItem('storeclerk.contrast')]")
    assert saved == ["0", "normal"]
    click(browser, "#done-button")
    wait_for(browser, lambda d: shown(d, "#attract"))
    assert_local_and_clean(browser, kiosk)


def test_reduced_motion_is_respected(browser, kiosk):
    # The browser fixture runs with --force-prefers-reduced-motion.
    open_page(browser, kiosk)
    assert js(browser, "return matchMedia('(prefers-reduced-motion: reduce)').matches")
    durations = js(browser, "return getComputedStyle(document.querySelector('.pulse')).animationDuration")
    assert all(float(d.rstrip("ms")) < 0.01 for d in durations.split(",")), durations
    assert_local_and_clean(browser, kiosk)


def test_cards_errors_and_escaping(browser, kiosk, screenshots):
    """Every card type, an unknown one, hostile text and an error, fed to the page's message handler."""
    open_page(browser, kiosk)
    start_conversation(browser)
    hostile = '<img src=x onerror="window.__pwned=1"><b>bold</b>'
    ask(browser, hostile)
    assert hostile in last_text(browser, "#log .msg-customer")
    session = js(browser, "return storeclerk.state().session")
    cards = [
        {"type": "product", "id": "x", "name": hostile, "price": 3.5, "currency": "EUR", "unit": "kg", "aisle": "7",
         "image": "http://example.com/x.jpg", "tags": ["new"], "source": "catalog:x"},
        {"type": "order", "order_id": "113542617735902", "status": "shipped", "items": ["Oat milk", "Granny Smith apple"],
         "updated": "2026-11-20", "eta": "2026-11-25", "source": "orders:113542617735902"},
        {"type": "info", "title": "Returns", "text": "Bring the item and your receipt within 30 days.", "source": "faq:returns"},
        {"type": "staff", "text": "Someone is coming to help you.", "source": None},
        {"type": "hologram", "source": "future:thing"},
        None, "text", {"type": "product"},
    ]
    js(browser, "storeclerk.receive(arguments[0])", {
        "type": "reply", "reply": "Here is everything. " + hostile, "intent": "x", "confidence": 0.9, "entities": [],
        "cards": cards, "quick_replies": [{"label": "Yes", "text": "yes"}, {"bogus": 1}], "handoff": False,
        "session": session, "turn": 9})
    last = "#log .msg-kiosk:last-of-type"
    kinds = js(browser, "return [...document.querySelectorAll(arguments[0] + ' .card')].map(c => c.dataset.card)", last)
    assert kinds == ["product", "order", "info", "staff"], kinds
    assert count(browser, "#log img, #log b, #log script") == 0, "server text is never parsed as HTML"
    assert js(browser, "return window.__pwned === undefined")
    assert hostile in text_of(browser, last + " .bubble")
    assert count(browser, last + " .product-media.is-missing") == 1, "an off-box image is never fetched"
    assert "€3.50" in text_of(browser, last + " .card-product .price")
    assert "/ kg" in text_of(browser, last + " .card-product .price")
    order = text_of(browser, last + " .card-order")
    assert "113542617735902" in order and "Shipped" in order and "2026" in order and "Oat milk" in order
    assert "from: faq:returns" in text_of(browser, last + " .card-info")
    assert [c.text for c in browser.find_elements("css selector", "#quick-replies .chip")] == ["Yes"]
    browser.save_screenshot(str(screenshots / "cards.png"))

    js(browser, "storeclerk.receive(arguments[0])", {"type": "error", "code": "bad_input", "message": "That message was too long."})
    wait_for(browser, lambda d: "too long" in last_text(d, "#log .msg-notice"))
    assert "Sorry" in last_text(browser, "#log .msg-notice")
    js(browser, "storeclerk.receive(arguments[0])", {"type": "mystery", "session": session})
    js(browser, "storeclerk.receive(arguments[0])", {"type": "ended", "session": "someone-else", "reason": "idle"})
    assert shown(browser, "#conversation"), "an end for another session is ignored"
    js(browser, "storeclerk.receive(arguments[0])", {"type": "ended", "session": session, "reason": "idle"})
    wait_for(browser, lambda d: shown(d, "#attract"))
    assert count(browser, "#log .msg") == 0
    assert_local_and_clean(browser, kiosk)


def test_reconnects_and_keeps_the_conversation(browser, kiosk):
    open_page(browser, kiosk)
    start_conversation(browser)
    ask(browser, QUESTION)
    # Hold the kiosk out of reach long enough for the "reconnecting" pill to show: every new socket fails.
    js(browser, "window.__RealWebSocket = window.WebSocket; window.WebSocket = function () { throw new Error('down'); };")
    try:
        js(browser, "storeclerk.dropConnection()")
        wait_for(browser, lambda d: shown(d, "#conn"), timeout=8, message="no reconnecting state")
        assert "connect" in text_of(browser, "#conn").lower() or "trying" in text_of(browser, "#conn").lower()
        assert shown(browser, "#conversation") and count(browser, "#log .msg-customer") == 1
    finally:
        js(browser, "window.WebSocket = window.__RealWebSocket;")
    wait_for(browser, lambda d: js(d, "return storeclerk.state().open") and not shown(d, "#conn"), timeout=20,
             message="the page did not reconnect")
    ask(browser, QUESTION)
    wait_for(browser, lambda d: count(d, "#log .card-product") >= 2, message="no answer after reconnecting")
    assert count(browser, "#log .msg-customer") == 2, "the conversation survived the reconnect"
    assert_local_and_clean(browser, kiosk)


def test_works_without_the_locale_file(browser, kiosk):
    # Built-in English and the locale file say the same (one source of truth for translators).
    open_page(browser, kiosk)
    assert js(browser, "return storeclerk.fallbackStrings()") == json.loads((WEB / "strings" / "en.json").read_text(encoding="utf-8"))
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/static/strings/*"]})
    try:
        browser.get(kiosk + "/")
        wait_for(browser, lambda d: js(d, "return document.body.dataset.ready === 'true'"))
        assert js(browser, "return performance.getEntriesByType('resource').some(e => e.name.includes('/strings/'))")
        assert "Touch to start" in text_of(browser, "#start-button")
        start_conversation(browser)
        ask(browser, QUESTION)
    finally:
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
        browser.execute_cdp_cmd("Network.disable", {})
    logs = browser.get_log("browser")
    assert all("strings" in e.get("message", "") for e in logs if e.get("level") == "SEVERE"), logs
    click(browser, "#done-button")
    wait_for(browser, lambda d: shown(d, "#attract"))


def test_landscape_screen(browser, kiosk, screenshots):
    set_viewport(browser, 1920, 1080)
    try:
        open_page(browser, kiosk)
        assert_no_sideways_scroll(browser)
        browser.save_screenshot(str(screenshots / "landscape-attract.png"))
        start_conversation(browser)
        # The suggestion chips of the empty conversation send their text as a turn, like quick replies.
        chip = browser.find_element("css selector", "#suggestions .chip")
        label = chip.text
        chip.click()
        wait_for(browser, lambda d: count(d, "#log .card-product") >= 1, message="no product card for a suggestion chip")
        assert last_text(browser, "#log .msg-customer").endswith(label) and not shown(browser, "#empty")
        assert_no_sideways_scroll(browser)
        assert_touch_targets(browser)
        assert shown(browser, "#staff-button") and shown(browser, "#done-button") and shown(browser, "#composer-input")
        browser.save_screenshot(str(screenshots / "landscape-answer.png"))
        click(browser, "#done-button")
        wait_for(browser, lambda d: shown(d, "#attract"))
        assert_local_and_clean(browser, kiosk)
    finally:
        set_viewport(browser, 1080, 1920)
