"""Voice over the page's WebSocket (runtime/server.py): the voice_state a page gets on start and resume, the
push-to-talk and mute actions reaching ``kiosk.voice``, captions and spoken replies reaching only the page whose
session they belong to, and every bad voice message answered with an error while the connection stays up.

``FakeVoice`` stands in for the real VoiceStage (same interface); the browser test in tests/web uses it too."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from test_dialogue import FakeKB, FakeOrders
from test_server import MemStore, StubClassifier

from runtime.dialogue import DialogueManager, Services, load_dialogue
from runtime.loop import Kiosk
from runtime.notify import ScreenNotifier
from runtime.paths import data_dir
from runtime.server import create_app

OFF = {"type": "voice_state", "state": "off", "muted": False, "mode": "ptt"}


class ProductExtractor:
    """Finds "oat milk" so a spoken question about it gets a real product card from the dialogue."""

    def extract(self, text):
        i = text.lower().find("oat milk")
        return [] if i < 0 else [SimpleNamespace(type="product", value="Oat milk", start=i, end=i + 8, text=text[i : i + 8])]

    def redact(self, text):
        return text


class FakeVoice:
    """The VoiceStage interface: state / push_to_talk / set_muted / attach, broadcasting voice_state on changes
    through the kiosk like the real stage. ``say()`` plays one spoken turn: captions, the kiosk's turn on channel
    "voice" in the attached session, the reply broadcast with ``channel: "voice"``."""

    def __init__(self, kiosk, mode: str = "ptt") -> None:
        self.kiosk = kiosk
        self.mode = mode
        self.current = "idle"
        self.muted = False
        self.session: str | None = None
        self.calls: list[tuple] = []
        self.fail = False
        self._tasks: set[asyncio.Task] = set()

    def state(self) -> dict:
        return {"type": "voice_state", "state": self.current, "muted": self.muted, "mode": self.mode}

    def attach(self, session_id: str) -> None:
        self.calls.append(("attach", session_id))
        self.session = session_id

    def push_to_talk(self, pressed: bool) -> None:
        if self.fail:
            raise OSError("microphone unplugged")
        self.calls.append(("ptt", pressed))
        self._set("listening" if pressed else "idle")

    def set_muted(self, muted: bool) -> None:
        self.calls.append(("muted", muted))
        self.muted = muted
        self._announce()

    def _set(self, state: str) -> None:
        if state != self.current:
            self.current = state
            self._announce()

    def _announce(self) -> None:
        task = asyncio.get_running_loop().create_task(self.kiosk.broadcast(self.state()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def set_state(self, state: str) -> None:
        self.current = state
        await self.kiosk.broadcast(self.state())

    async def say(self, text: str, partials: tuple[str, ...] = ()) -> dict:
        sid = self.session
        await self.set_state("listening")
        for p in partials:
            await self.kiosk.broadcast({"type": "caption", "session": sid, "text": p, "final": False})
        await self.kiosk.broadcast({"type": "caption", "session": sid, "text": text, "final": True})
        await self.set_state("thinking")
        reply = await self.kiosk.turn(sid, text, channel="voice")
        msg = {"type": "reply", **reply.as_dict(), "channel": "voice"}
        await self.kiosk.broadcast(msg)
        await self.set_state("speaking")
        await self.set_state("idle")
        return msg


def make_kiosk(**kw) -> Kiosk:
    spec = load_dialogue(data_dir() / "dialogue" / "dialogue.yml")
    manager = DialogueManager(spec, Services(kb=FakeKB(), orders=FakeOrders()))
    kiosk = Kiosk(classifier=StubClassifier(), extractor=ProductExtractor(), dialogue=manager, store=MemStore(), **kw)
    kiosk.notifiers = [ScreenNotifier(kiosk.broadcast)]
    return kiosk


@pytest.fixture
def kiosk():
    k = make_kiosk()
    k.voice = FakeVoice(k)
    return k


@pytest.fixture
def client(kiosk):
    with TestClient(create_app(kiosk)) as c:
        yield c


def start(ws) -> tuple[str, dict]:
    ws.send_text(json.dumps({"type": "start"}))
    sid = ws.receive_json()["session"]
    return sid, ws.receive_json()


def receive_until(ws, pred, limit: int = 10) -> tuple[dict, list[dict]]:
    """The first message matching pred, and everything received before it."""
    seen = []
    for _ in range(limit):
        m = ws.receive_json()
        if pred(m):
            return m, seen
        seen.append(m)
    raise AssertionError(f"no matching message in {seen}")


def voice(ws, action, **extra) -> None:
    ws.send_text(json.dumps({"type": "voice", "action": action, **extra}))


# ---------------------------------------------------------------------------------------------- voice off


def test_voice_off_says_so_and_refuses_actions():
    k = make_kiosk()
    assert getattr(k, "voice", None) is None  # today's Kiosk has no voice attribute at all
    with TestClient(create_app(k)) as c, c.websocket_connect("/ws") as ws:
        sid, state = start(ws)
        assert state == OFF
        for action in ("ptt_start", "ptt_stop", "mute", "unmute"):
            voice(ws, action, session=sid)
            e = ws.receive_json()
            assert e["type"] == "error" and e["code"] == "voice_off" and "type" in e["message"]
        k.voice = None  # the attribute present but None reads the same
        voice(ws, "ptt_start")
        assert ws.receive_json()["code"] == "voice_off"
        ws.send_text(json.dumps({"type": "resume", "session": sid}))
        assert ws.receive_json()["resumed"] is True
        assert ws.receive_json() == OFF
        ws.send_text(json.dumps({"type": "text", "session": sid, "text": "hello"}))
        assert ws.receive_json()["intent"] == "greet"  # typing still works


# ---------------------------------------------------------------------------------------------- voice on


def test_start_sends_state_and_attaches_the_session(client, kiosk):
    with client.websocket_connect("/ws") as ws:
        sid, state = start(ws)
        assert state == {"type": "voice_state", "state": "idle", "muted": False, "mode": "ptt"}
        assert kiosk.voice.calls == [("attach", sid)]
        # A second page's start takes the voice over: spoken turns go to whoever started last.
        with client.websocket_connect("/ws") as ws2:
            sid2, _ = start(ws2)
            assert kiosk.voice.session == sid2 != sid


def test_push_to_talk_and_mute_reach_the_stage(client, kiosk):
    with client.websocket_connect("/ws") as ws:
        sid, _ = start(ws)
        kiosk.voice.calls.clear()
        voice(ws, "ptt_start", session=sid)
        got, _ = receive_until(ws, lambda m: m.get("state") == "listening")
        assert got == {"type": "voice_state", "state": "listening", "muted": False, "mode": "ptt"}
        voice(ws, "ptt_stop", session=sid)
        receive_until(ws, lambda m: m.get("state") == "idle")
        voice(ws, "mute")
        receive_until(ws, lambda m: m.get("muted") is True)
        voice(ws, "unmute")
        receive_until(ws, lambda m: m.get("type") == "voice_state" and m.get("muted") is False)
        assert kiosk.voice.calls == [("attach", sid), ("ptt", True), ("ptt", False), ("muted", True), ("muted", False)]


def test_voice_state_goes_to_every_page(client, kiosk):
    with client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b:
        start(a)
        start(b)
        client.portal.call(kiosk.voice.set_state, "speaking")
        for ws in (a, b):
            assert ws.receive_json() == {"type": "voice_state", "state": "speaking", "muted": False, "mode": "ptt"}
        # The stage's own extras are not passed through, and a state the page cannot know reads as "off".
        client.portal.call(kiosk.broadcast, {"type": "voice_state", "state": "exploding", "secret": 1})
        assert a.receive_json() == OFF and b.receive_json() == OFF


def test_spoken_turn_reaches_only_its_page(client, kiosk):
    with client.websocket_connect("/ws") as other, client.websocket_connect("/ws") as ws:
        start(other)
        sid, _ = start(ws)  # started last: the voice is attached to this page's session
        msg = client.portal.call(kiosk.voice.say, "where is the oat milk", ("where is", "where is the oat"))
        seen = [ws.receive_json() for _ in range(8)]
        captions = [m for m in seen if m["type"] == "caption"]
        assert captions == [
            {"type": "caption", "session": sid, "text": "where is", "final": False},
            {"type": "caption", "session": sid, "text": "where is the oat", "final": False},
            {"type": "caption", "session": sid, "text": "where is the oat milk", "final": True},
        ]
        reply = next(m for m in seen if m["type"] == "reply")
        assert reply == msg and reply["channel"] == "voice" and reply["session"] == sid
        assert reply["intent"] == "find_product" and reply["cards"][0]["type"] == "product"
        assert [m["state"] for m in seen if m["type"] == "voice_state"] == ["listening", "thinking", "speaking", "idle"]
        # The other page saw the kiosk's voice state but nothing of this customer's words or answer.
        for _ in range(4):
            assert other.receive_json()["type"] == "voice_state"
        other.send_text(json.dumps({"type": "voice", "action": "nope"}))
        assert other.receive_json()["code"] == "bad_action"  # nothing else was queued for it before this error
    turns = [(s, role, text) for s, role, text, _ in kiosk.store.turns]
    assert (sid, "customer", "where is the oat milk") in turns  # stored in the page's own session


def test_resume_reattaches_voice(client, kiosk):
    with client.websocket_connect("/ws") as ws:
        sid, _ = start(ws)
    with client.websocket_connect("/ws") as ws:
        start(ws)  # someone else's page took the voice meanwhile
    with client.websocket_connect("/ws") as ws:
        ws.send_text(json.dumps({"type": "resume", "session": sid}))
        assert ws.receive_json()["resumed"] is True
        assert ws.receive_json()["type"] == "voice_state"
        assert kiosk.voice.session == sid and kiosk.voice.calls[-1] == ("attach", sid)


def test_push_to_talk_attaches_the_pressing_page(client, kiosk):
    with client.websocket_connect("/ws") as ws, client.websocket_connect("/ws") as ws2:
        sid, _ = start(ws)
        start(ws2)
        voice(ws, "ptt_start", session=sid)
        receive_until(ws, lambda m: m.get("state") == "listening")
        assert kiosk.voice.session == sid  # the customer who pressed the button gets the answer


@pytest.mark.parametrize("msg, code", [
    ({"type": "voice"}, "bad_action"),
    ({"type": "voice", "action": "shout"}, "bad_action"),
    ({"type": "voice", "action": 5}, "bad_action"),
    ({"type": "voice", "action": ["ptt_start"]}, "bad_action"),
    ({"type": "voice", "action": "ptt_start", "session": "bad id!"}, "bad_session"),
    ({"type": "voice", "action": "ptt_start", "session": 7}, "bad_session"),
])
def test_bad_voice_messages_get_clear_errors(client, kiosk, msg, code):
    with client.websocket_connect("/ws") as ws:
        sid, _ = start(ws)
        ws.send_text(json.dumps(msg))
        e = ws.receive_json()
        assert e["type"] == "error" and e["code"] == code and e["message"]
        if code == "bad_action":
            assert "ptt_start" in e["message"]  # it says what would have been right
        assert ("ptt", True) not in kiosk.voice.calls
        # The connection is still up and still works.
        voice(ws, "mute")
        assert receive_until(ws, lambda m: m.get("type") == "voice_state" and m["muted"])[0]["muted"] is True


def test_a_failing_stage_is_an_error_not_a_dropped_page(client, kiosk):
    kiosk.voice.fail = True
    with client.websocket_connect("/ws") as ws:
        sid, _ = start(ws)
        voice(ws, "ptt_start", session=sid)
        e = ws.receive_json()
        assert e == {"type": "error", "code": "voice_failed", "message": e["message"]} and "type" in e["message"]
        ws.send_text(json.dumps({"type": "text", "session": sid, "text": "hello"}))
        assert ws.receive_json()["intent"] == "greet"


def test_a_dropped_page_lets_go_of_the_microphone(client, kiosk):
    with client.websocket_connect("/ws") as ws:
        sid, _ = start(ws)
        voice(ws, "ptt_start", session=sid)
        receive_until(ws, lambda m: m.get("state") == "listening")
    # The socket closed with the button held: the server released it.
    for _ in range(100):
        if kiosk.voice.calls[-1] == ("ptt", False):
            break
        client.portal.call(asyncio.sleep, 0.01)
    assert kiosk.voice.calls[-1] == ("ptt", False) and kiosk.voice.current == "idle"
    with client.websocket_connect("/ws") as ws:  # a page that let go properly is not released twice
        sid, _ = start(ws)
        voice(ws, "ptt_start", session=sid)
        voice(ws, "ptt_stop", session=sid)
        receive_until(ws, lambda m: m.get("state") == "idle")
        n = len(kiosk.voice.calls)
    client.portal.call(asyncio.sleep, 0.05)
    assert len(kiosk.voice.calls) == n
