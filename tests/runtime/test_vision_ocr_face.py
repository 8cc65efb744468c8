"""OCR of order numbers on rendered receipts and phone screens (rapidocr's packaged models, no network), and
face presence: the bundled cascade, a drawn face, and the arrive/leave hysteresis."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.camera import Frame
from runtime.errors import ConfigError, InputError
from runtime.vision import FaceDetector, FacePresence, OcrReader, PresenceEvent, TextLine, load_image
from runtime.vision.ocr import order_ids_in

KB_DIR = Path(__file__).resolve().parents[2] / "data" / "kb"


@pytest.fixture(scope="module")
def order_ids() -> list[str]:
    with open(KB_DIR / "orders.csv", newline="", encoding="utf-8") as f:
        return [r["order_id"] for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def ocr() -> OcrReader:
    """One engine for the module, loaded with every socket connection refused: the models must be local."""

    def refuse(*a, **k):
        raise AssertionError("OCR tried to reach the network")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        reader = OcrReader(threads=2).load()
        reader.read_text(receipt("00123842"))  # first inference, still offline
    return reader


def receipt(order_id: str, *, angle: float = 0.0) -> np.ndarray:
    """A 640x480 camera view of a till receipt: the order number among other digit runs."""
    img = np.full((480, 640, 3), (70, 90, 80), np.uint8)
    cv2.rectangle(img, (60, 10), (580, 470), (238, 240, 242), -1)
    lines = ["FRESH MARKET", "Store 0042  Tel 415-555-0132", "2026-11-20  14:32", f"Order # {order_id}",
             "1 x Tropicana Apple Juice   2.49", "3 x Banana   1.29", "TOTAL EUR   6.27"]
    for i, text in enumerate(lines):
        cv2.putText(img, text, (80, 60 + 58 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.75, (25, 25, 25), 2, cv2.LINE_AA)
    if angle:
        m = cv2.getRotationMatrix2D((320, 240), angle, 1.0)
        img = cv2.warpAffine(img, m, (640, 480), borderValue=(70, 90, 80))
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(img, (0, 0), 0.8)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def phone_screen(order_id: str, *, label_beside: bool = False) -> np.ndarray:
    """A dark-mode order confirmation on a phone held up to the camera."""
    img = np.full((480, 640, 3), (40, 40, 48), np.uint8)
    cv2.rectangle(img, (150, 10), (490, 470), (18, 18, 18), -1)
    cv2.rectangle(img, (165, 40), (475, 440), (32, 30, 28), -1)
    cv2.putText(img, "Thanks for shopping!", (180, 90), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (170, 170, 170), 1, cv2.LINE_AA)
    if label_beside:
        cv2.putText(img, "Order no.", (180, 200), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (200, 200, 200), 2, cv2.LINE_AA)
        cv2.putText(img, order_id, (300, 200), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
    else:
        cv2.putText(img, "Your order", (180, 170), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (200, 200, 200), 2, cv2.LINE_AA)
        cv2.putText(img, order_id, (180, 225), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2, cv2.LINE_AA)
    cv2.putText(img, "Pick up at 5 pm", (180, 330), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (170, 170, 170), 1, cv2.LINE_AA)
    return img


# ----------------------------------------------------------------------------------------------- OCR


def test_receipt_order_number_is_found_among_other_numbers(ocr, order_ids):
    for oid in order_ids[:2]:
        assert ocr.find_order_ids(receipt(oid)) == [oid]


def test_slightly_tilted_receipt(ocr, order_ids):
    assert ocr.find_order_ids(receipt(order_ids[2], angle=4)) == [order_ids[2]]


def test_phone_screen_label_above_or_beside_the_number(ocr, order_ids):
    oid = order_ids[3]
    assert ocr.find_order_ids(phone_screen(oid)) == [oid]
    assert ocr.find_order_ids(Frame(0.0, phone_screen(order_ids[0], label_beside=True), 1)) == [order_ids[0]]


def test_read_text_gives_lines_with_scores_and_boxes(ocr, order_ids):
    oid = order_ids[0]
    lines = ocr.read_text(receipt(oid))
    assert all(isinstance(ln, TextLine) and 0.5 <= ln.score <= 1 and len(ln.box) == 4 for ln in lines)
    texts = [ln.text for ln in lines]
    assert texts[0] == "FRESH MARKET"  # top to bottom
    (order_line,) = [ln for ln in lines if oid in ln.text.replace(" ", "")]
    text, score, box = order_line  # a plain (text, score, box) tuple too
    xs, ys = [p[0] for p in box], [p[1] for p in box]
    assert 60 <= min(xs) < 200 and 200 < min(ys) < max(ys) < 260  # the 4th printed line, at y ~ 234


def test_blank_and_black_frames_read_nothing_without_loading_the_engine():
    fresh = OcrReader()
    for frame in (np.zeros((480, 640, 3), np.uint8), np.full((480, 640, 3), 255, np.uint8),
                  np.full((480, 640), 90, np.uint8)):
        assert fresh.read_text(frame) == [] and fresh.find_order_ids(frame) == []
    assert not fresh.loaded


def test_textured_frame_without_text(ocr):
    img = cv2.resize(load_image(KB_DIR / "images" / "banana.jpg"), (640, 480))
    assert ocr.find_order_ids(img) == []


def test_read_only_camera_frames(ocr, order_ids):
    img = receipt(order_ids[1])
    img.flags.writeable = False
    assert ocr.find_order_ids(img) == [order_ids[1]]


@pytest.mark.parametrize("frame, words", [(None, "None"), (np.zeros((48, 64, 3), np.float64), "dtype"),
                                          (np.zeros((48, 64, 5), np.uint8), "shape"), (b"\xff\xd8", "numpy")])
def test_bad_frames(frame, words):
    fresh = OcrReader()
    with pytest.raises(InputError, match=words):
        fresh.read_text(frame)
    assert not fresh.loaded


def test_missing_models_are_a_config_error_not_a_download(tmp_path):
    with pytest.raises(ConfigError, match="never downloads"):
        OcrReader(model_dir=tmp_path).load()


def line(text, x, y, w=200, h=24):
    return TextLine(text, 0.99, ((x, y), (x + w, y), (x + w, y + h), (x, y + h)))


def test_order_ids_prefer_labelled_lines():
    lines = [line("Store 004211", 10, 10), line("Order # 00004587345", 10, 50), line("EAN 2142000000005", 10, 90)]
    assert order_ids_in(lines) == ["00004587345"]


def test_order_label_with_number_beside_or_below():
    assert order_ids_in([line("Order number:", 10, 50, w=120), line("732201349959", 150, 52)]) == ["732201349959"]
    assert order_ids_in([line("Your order", 10, 50), line("732201349959", 12, 85)]) == ["732201349959"]
    # a number far below the label is not its value
    assert order_ids_in([line("Your order", 10, 50), line("Thanks", 10, 80), line("732201349959", 12, 400)]) == [
        "732201349959"]  # ... but, nothing else being labelled, the lone bare number is still offered


def test_bare_numbers_only_when_nothing_is_labelled():
    assert order_ids_in([line("113542617735902", 10, 10)]) == ["113542617735902"]
    assert order_ids_in([line("Call 415-555-0132", 10, 10), line("2026-11-20", 10, 40), line("EUR 12.50", 10, 80)]) == []
    assert order_ids_in([line("Order #12588", 10, 10)]) == []  # a bill number: too short to be an order


def test_ocr_digit_lookalikes_in_order_numbers():
    assert order_ids_in([line("Order # 0OO45873S5", 10, 10)]) == ["0004587355"]
    assert order_ids_in([line("Order # INV-2023", 10, 10)]) == []


# ---------------------------------------------------------------------------------------------- faces


def drawn_face(size: int = 200, at=(320, 240), background: np.ndarray | None = None) -> np.ndarray:
    """A shaded frontal face (brows, eyes, nose bridge, mouth): the light/dark layout Haar features respond to."""
    img = np.full((480, 640), 120, np.uint8) if background is None else cv2.cvtColor(background, cv2.COLOR_BGR2GRAY)
    cx, cy = at
    s = size / 200

    def pt(dx, dy):
        return cx + int(dx * s), cy + int(dy * s)

    def ax(a, b):
        return int(a * s), int(b * s)

    cv2.ellipse(img, (cx, cy), ax(80, 105), 0, 0, 360, 200, -1)
    for dx in (-35, 35):
        cv2.ellipse(img, pt(dx, -35), ax(30, 8), 0, 0, 360, 70, -1)
        cv2.ellipse(img, pt(dx, -15), ax(20, 10), 0, 0, 360, 40, -1)
    cv2.rectangle(img, pt(-8, -10), pt(8, 30), 215, -1)
    cv2.ellipse(img, pt(0, 35), ax(20, 6), 0, 0, 360, 120, -1)
    cv2.ellipse(img, pt(0, 60), ax(35, 10), 0, 0, 360, 60, -1)
    return cv2.cvtColor(cv2.GaussianBlur(img, (0, 0), 3), cv2.COLOR_GRAY2BGR)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector().load()


def test_bundled_cascade_loads(detector):
    assert detector.cascade_path.is_file() and detector.cascade_path.parent == Path(cv2.data.haarcascades)


def test_drawn_face_is_found_where_it_is(detector):
    for size, at in ((200, (320, 240)), (140, (150, 150)), (260, (450, 260))):
        boxes = detector.detect(drawn_face(size, at))
        assert len(boxes) == 1, (size, at, boxes)
        x, y, w, h = boxes[0]
        assert x <= at[0] <= x + w and y <= at[1] <= y + h and 0.6 * size < w < 2 * size


def test_face_too_small_for_the_kiosk_is_ignored(detector):
    assert detector.detect(drawn_face(40, (100, 100))) == []


def test_no_faces_in_blank_frames_or_product_photos(detector):
    assert detector.detect(np.zeros((480, 640, 3), np.uint8)) == []
    assert detector.detect(np.full((480, 640), 255, np.uint8)) == []
    photos = sorted((KB_DIR / "images").glob("*.jpg"))[:25]
    assert [p.name for p in photos if detector.detect(cv2.resize(load_image(p), (640, 480)))] == []


def test_bad_cascades_and_frames(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        FaceDetector("haarcascade_no_such.xml").load()
    bad = tmp_path / "cascade.xml"
    bad.write_text("<?xml version='1.0'?><opencv_storage></opencv_storage>")
    with pytest.raises(ConfigError, match="could not be loaded"):
        FaceDetector(str(bad)).load()
    with pytest.raises(ConfigError):
        FaceDetector(min_face=0)
    with pytest.raises(InputError, match="None"):
        FaceDetector().detect(None)
    with pytest.raises(InputError, match="dtype"):
        FaceDetector().detect(np.zeros((480, 640), np.int32))


def test_blank_frames_give_no_events():
    presence = FacePresence()
    for i in range(60):
        r = presence.update(np.zeros((480, 640, 3), np.uint8), ts=i / 15)
        assert r.event is None and r.boxes == [] and not r.present
    assert presence.visits == 0


def run(presence: FacePresence, counts: list[int]) -> list[tuple[int, str]]:
    events = []
    for i, n in enumerate(counts):
        e = presence.observe(n, ts=float(i))
        if e is not None:
            events.append((i, e.kind))
    return events


def test_hysteresis_arrival_needs_n_frames_and_ignores_flicker():
    p = FacePresence(detector=object(), arrive_frames=3, leave_frames=4)  # type: ignore[arg-type]
    # single-frame blips (a poster face, a false detection) never wake the kiosk
    assert run(p, [1, 0, 1, 0, 0, 1, 1, 0, 1]) == [] and not p.present
    p = FacePresence(detector=object(), arrive_frames=3, leave_frames=4)  # type: ignore[arg-type]
    assert run(p, [1, 1, 1]) == [(2, "arrived")] and p.present


def test_hysteresis_leave_needs_n_empty_frames_and_survives_dropouts():
    p = FacePresence(detector=object(), arrive_frames=2, leave_frames=4)  # type: ignore[arg-type]
    counts = [1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 1, 1]
    assert run(p, counts) == [(1, "arrived"), (14, "left"), (18, "arrived")]
    assert p.visits == 2 and p.visitors == 3  # first visit peaked at 2 faces, second 1


def test_events_carry_counts_and_duration():
    p = FacePresence(detector=object(), arrive_frames=1, leave_frames=2)  # type: ignore[arg-type]
    assert p.observe(1, ts=10.0) == PresenceEvent("arrived", 10.0, 1, 1)
    assert p.observe(3, ts=11.0) is None
    assert p.observe(0, ts=12.0) is None
    assert p.observe(0, ts=13.0) == PresenceEvent("left", 13.0, 3, 1, 3.0)
    with pytest.raises(ValueError):
        p.observe(-1)
    with pytest.raises(ConfigError):
        FacePresence(detector=object(), arrive_frames=0)  # type: ignore[arg-type]


def test_presence_from_frames_of_a_visit():
    presence = FacePresence(arrive_frames=3, leave_frames=5)
    empty = np.full((480, 640, 3), 120, np.uint8)
    visit = [drawn_face(200)] * 6 + [empty] * 6
    readings = [presence.update(Frame(100 + i / 15, img, i + 1)) for i, img in enumerate(visit)]
    kinds = [(i, r.event.kind) for i, r in enumerate(readings) if r.event]
    assert kinds == [(2, "arrived"), (10, "left")]
    left = readings[10].event
    assert left.duration == pytest.approx(8 / 15) and left.faces == 1
    # presence only: the reading holds boxes (four ints each), no pixels
    r = readings[4]
    assert r.count == 1 and all(isinstance(v, int) for v in r.boxes[0])
    assert not any(isinstance(v, np.ndarray) for v in vars(r).values())
