"""The HTTP and WebSocket surface against the real Kiosk loop with a stub understanding (fast, no bundle):
shapes, and bad input on every path. The whole kiosk over real sockets is in test_kiosk_process.py."""

import json

import pytest
from fastapi.testclient import TestClient
from test_dialogue import FakeKB, FakeOrders

from runtime.dialogue import DialogueManager, Services, load_dialogue
from runtime.loop import Kiosk
from runtime.notify import ScreenNotifier
from runtime.paths import data_dir
from runtime.server import create_app


class StubPred:
    def __init__(self, text):
        t = text.lower()
        self.intent = "find_product" if "oat" in t else "greet" if "hello" in t else "oos"
        self.confidence = 0.9
        self.out_of_scope = self.intent == "oos"
        self.alternatives = ((self.intent, 0.9),)
        self.embedding = None


class StubClassifier:
    labels = ["find_product", "greet", "oos"]

    def predict(self, texts, with_embedding=False):
        if any("explode" in t for t in texts):
            raise RuntimeError("encoder exploded")
        return [StubPred(t) for t in texts]


class StubExtractor:
    def extract(self, text):
        return []

    def redact(self, text):
        return text.replace("jane@example.com", "[EMAIL]")


class MemStore:
    def __init__(self):
        self.turns = []
        self.sessions = {}

    def start_session(self, sid, channel="touch"):
        self.sessions[sid] = None

    def end_session(self, sid, reason):
        self.sessions[sid] = reason

    def add_exchanges(self, batch):
        return [self.add_turns(sid, turns) for sid, turns in batch]

    def add_turns(self, sid, turns):
        for t in turns:
            t = dict(t)
            self.turns.append((sid, t.pop("role"), t.pop("text"), t))
        return list(range(len(self.turns) - len(turns), len(self.turns)))

    def close(self):
        pass


@pytest.fixture
def client():
    kb = FakeKB()
    spec = load_dialogue(data_dir() / "dialogue" / "dialogue.yml")
    store = MemStore()
    manager = DialogueManager(spec, Services(kb=kb, orders=FakeOrders()))
    kiosk = Kiosk(classifier=StubClassifier(), extractor=StubExtractor(), dialogue=manager, store=store, max_sessions=5)
    kiosk.notifiers = [ScreenNotifier(kiosk.broadcast)]
    app = create_app(kiosk, max_body_bytes=2048)
    with TestClient(app) as c:
        c.kiosk, c.store = kiosk, store
        yield c


def test_turn_shape(client):
    r = client.post("/api/turn", json={"session": "c1", "text": "hello"})
    assert r.status_code == 200
    d = r.json()
    assert {"reply", "intent", "confidence", "entities", "cards", "handoff"} <= set(d)
    assert d["intent"] == "greet" and isinstance(d["confidence"], float) and d["handoff"] is False
    assert [t[1] for t in client.store.turns] == ["customer", "kiosk"]


@pytest.mark.parametrize("body, code, status", [
    (b"{not json", "bad_json", 400),
    (b"[1, 2]", "bad_json", 400),
    (b'{"session": "c1"}', "bad_text", 400),
    (b'{"session": "c1", "text": 5}', "bad_text", 400),
    (b'{"session": "../../etc", "text": "hi"}', "bad_session", 400),
    (b'{"session": "c1", "text": "\xff\xfe hi"}', "bad_encoding", 400),
    (b'{"session": "c1", "text": "' + b"a" * 5000 + b'"}', "too_large", 413),
])
def test_bad_turns_get_clear_errors(client, body, code, status):
    r = client.post("/api/turn", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
    assert client.store.turns == []  # nothing stored for a rejected request
    assert client.get("/healthz").json()["status"] == "ok"


def test_no_session_gets_one(client):
    d = client.post("/api/turn", json={"text": "hello"}).json()
    assert d["session"].startswith("s-")


def test_flood_of_sessions_is_bounded(client):
    for i in range(20):
        assert client.post("/api/turn", json={"session": f"f{i}", "text": "hello"}).status_code == 200
    assert len(client.kiosk.sessions) == 5
    ended = [s for s, why in client.store.sessions.items() if why == "evicted"]
    assert len(ended) == 15
    assert len([t for t in client.store.turns if t[1] == "customer"]) == 20  # every turn kept


def test_failing_stage_degrades_not_stops(client):
    r = client.post("/api/turn", json={"session": "c1", "text": "please explode"})
    assert r.status_code == 200 and "wrong" in r.json()["reply"]
    h = client.get("/healthz").json()
    assert h["status"] == "degraded" and "exploded" in h["stages"]["understand"]["last_error"]
    assert client.post("/api/turn", json={"session": "c1", "text": "hello"}).json()["intent"] == "greet"
    assert 'storeclerk_stage_errors_total{stage="understand"} 1' in client.get("/metrics").text


def test_metrics_prometheus(client):
    client.post("/api/turn", json={"session": "c1", "text": "hello"})
    text = client.get("/metrics").text
    assert "# TYPE storeclerk_stage_seconds histogram" in text
    assert 'storeclerk_turns_total{intent="greet",kind="answer"} 1' in text
    assert 'storeclerk_http_requests_total{path="/api/turn",status="200"} 1' in text


def test_staff_and_end(client):
    d = client.post("/api/staff", json={"session": "c9"}).json()
    assert d["handoff"] is True and d["cards"][0]["type"] == "staff"
    assert client.post("/api/end", json={"session": "c9"}).json()["ended"] is True
    assert client.store.sessions["c9"] == "done"
    assert client.post("/api/staff", content=b"nope").status_code == 400


def test_websocket_flow_and_garbage(client):
    with client.websocket_connect("/ws") as ws:
        ws.send_text(json.dumps({"type": "start"}))
        sid = ws.receive_json()["session"]
        assert ws.receive_json() == {"type": "voice_state", "state": "off", "muted": False, "mode": "ptt"}
        ws.send_text(json.dumps({"type": "text", "session": sid, "text": "hello"}))
        m = ws.receive_json()
        assert m["type"] == "reply" and m["intent"] == "greet"
        for bad, code in (("not json", "bad_json"), ('{"type": "dance"}', "bad_type"), ('{"no": "type"}', "bad_json"),
                          (json.dumps({"type": "text", "session": sid, "text": 3}), "bad_text"),
                          (json.dumps({"type": "text", "session": "bad id!", "text": "x"}), "bad_session"),
                          ("x" * 9000, "too_large")):
            ws.send_text(bad)
            e = ws.receive_json()
            assert e["type"] == "error" and e["code"] == code
        ws.send_bytes(b"\xff\xfe")
        assert ws.receive_json()["code"] == "bad_encoding"
        ws.send_text(json.dumps({"type": "staff", "session": sid}))
        msgs = [ws.receive_json(), ws.receive_json()]
        assert {m["type"] for m in msgs} == {"reply", "staff"}
        assert next(m for m in msgs if m["type"] == "reply")["handoff"] is True
        assert next(m for m in msgs if m["type"] == "staff")["text"].startswith("Someone is coming")
        ws.send_text(json.dumps({"type": "end", "session": sid}))
        assert ws.receive_json() == {"type": "ended", "session": sid, "reason": "done"}


def test_websocket_resume_after_reconnect(client):
    with client.websocket_connect("/ws") as ws:
        ws.send_text(json.dumps({"type": "start"}))
        sid = ws.receive_json()["session"]
    with client.websocket_connect("/ws") as ws:  # the page reconnected
        ws.send_text(json.dumps({"type": "resume", "session": sid}))
        assert ws.receive_json() == {"type": "session", "session": sid, "store": "storeclerk", "resumed": True}
        assert ws.receive_json()["type"] == "voice_state"
        ws.send_text(json.dumps({"type": "staff", "session": sid}))
        assert {ws.receive_json()["type"], ws.receive_json()["type"]} == {"reply", "staff"}  # events reach the new page
        ws.send_text(json.dumps({"type": "resume", "session": "gone-1"}))
        assert ws.receive_json() == {"type": "ended", "session": "gone-1", "reason": "expired"}
