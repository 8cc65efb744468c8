"""The expression reader on the bundled ONNX model: drawn faces in camera frames, bad boxes and frames,
and the crop matching fer's own preprocessing."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_vision_ocr_face import drawn_face

from runtime.bundle import load_bundle
from runtime.errors import BundleError, InputError
from runtime.vision.expression import LABELS, ExpressionReader, crop_face, preprocess

REPO = Path(__file__).resolve().parents[2]
# The kiosk bundle once the expression model is added to it; build/bundle-expression is the export's scratch copy.
CANDIDATES = (REPO / "models" / "bundles" / "kiosk", REPO / "build" / "bundle-expression")


def _bundle_with_expression() -> Path | None:
    for path in CANDIDATES:
        try:
            if "expression" in load_bundle(path, verify=False).models:
                return path
        except BundleError:
            continue
    return None


@pytest.fixture(scope="module")
def reader() -> ExpressionReader:
    path = _bundle_with_expression()
    if path is None:
        pytest.skip("no bundle holds the expression model yet: python -m export.expression --bundle models/bundles/kiosk")
    r = ExpressionReader.from_bundle(path, providers=["cpu"], threads=1)
    yield r
    r.close()


def smiling_frame() -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """drawn_face with its mouth line bent into a smile; the box is where the Haar cascade puts such a face."""
    img = drawn_face()
    cv2.ellipse(img, (320, 290), (40, 22), 0, 15, 165, (40, 40, 40), 6)
    return img, (208, 128, 230, 230)


BOX = (212, 134, 220, 220)  # FaceDetector().detect(drawn_face()) on this machine


def test_reading_is_a_distribution_over_fer2013_labels(reader):
    r = reader.read(drawn_face(), BOX)
    assert r.labels == LABELS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert len(r.probabilities) == 7 and all(0.0 <= p <= 1.0 for p in r.probabilities)
    assert math.isclose(sum(r.probabilities), 1.0, abs_tol=1e-5)
    assert math.isclose(r.frustration_cue, r.prob("angry") + r.prob("disgust"), abs_tol=1e-9)
    assert r.top in LABELS and set(r.as_dict()) == {"top", "frustration_cue", "probabilities"}
    with pytest.raises(InputError, match="no expression 'bored'"):
        r.prob("bored")


def test_reading_is_deterministic_and_colour_blind(reader):
    frame = drawn_face()
    a, b = reader.read(frame, BOX), reader.read(frame, BOX)
    assert a.probabilities == b.probabilities
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    assert np.allclose(reader.read(gray, BOX).probabilities, a.probabilities, atol=1e-6)


def scowling_frame() -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A drawn face with brows slanting down to the nose and a downturned mouth (box from FaceDetector)."""
    g = np.full((480, 640), 120, np.uint8)
    cv2.ellipse(g, (320, 240), (80, 105), 0, 0, 360, 200, -1)
    for dx in (-35, 35):
        s = 1 if dx > 0 else -1
        cv2.line(g, (320 + dx + s * 30, 195), (320 + dx - s * 25, 215), 60, 10)
        cv2.ellipse(g, (320 + dx, 225), (20, 8), 0, 0, 360, 40, -1)
    cv2.rectangle(g, (312, 230), (328, 270), 215, -1)
    cv2.ellipse(g, (320, 310), (35, 18), 0, 200, 340, 50, 7)
    return cv2.cvtColor(cv2.GaussianBlur(g, (0, 0), 3), cv2.COLOR_GRAY2BGR), (218, 138, 208, 208)


def test_drawn_faces_order_the_cues(reader):
    """Drawn faces are not evidence of accuracy on people; they show the reader's crop, scaling and label order
    are wired to the model (measured here: smile 0.98 happy, cue 0.001; plain 0.54 neutral, cue 0.017;
    scowl cue 0.135)."""
    smile, plain, scowl = (reader.read(*fb) for fb in (smiling_frame(), (drawn_face(), BOX), scowling_frame()))
    assert smile.top == "happy" and smile.prob("happy") > plain.prob("happy")
    assert scowl.frustration_cue > 3 * plain.frustration_cue and plain.frustration_cue > smile.frustration_cue


def test_edge_face_is_padded_not_refused(reader):
    frame = drawn_face(at=(60, 240))  # the face runs off the left edge
    r = reader.read(frame, (-30, 134, 220, 220))  # 150 of 220 columns inside
    assert math.isclose(sum(r.probabilities), 1.0, abs_tol=1e-5)


@pytest.mark.parametrize(("frame", "box", "code"), [
    (np.zeros((480, 640, 3), np.uint8), BOX, "face_flat"),
    (np.full((480, 640, 3), 255, np.uint8), BOX, "face_flat"),
    (drawn_face(), (300, 200, 20, 20), "face_too_small"),
    (drawn_face(), (600, 440, 100, 100), "face_outside"),
    (drawn_face(), (-500, 0, 100, 100), "face_outside"),
    (drawn_face(), (10, 10, 0, 50), "face_box"),
    (drawn_face(), (10, 10, 50), "face_box"),
    (drawn_face(), ("x", 1, 2, 3), "face_box"),
    (drawn_face(), (10, 10, float("nan"), 50), "face_box"),
    (drawn_face(), None, "face_box"),
])
def test_unreadable_faces_are_coded_input_errors(reader, frame, box, code):
    with pytest.raises(InputError) as exc:
        reader.read(frame, box)
    assert exc.value.code == code, exc.value.message


@pytest.mark.parametrize(("frame", "fragment"), [
    (None, "got None"),
    (drawn_face().astype(np.float32), "dtype float32"),
    (np.zeros((3, 480, 640), np.uint8), "shape (3, 480, 640)"),
    ("frame.jpg", "numpy image array"),
])
def test_bad_frames_are_input_errors(reader, frame, fragment):
    with pytest.raises(InputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        reader.read(frame, BOX)


def test_read_all_batches_and_skips_unreadable_boxes(reader):
    frame = drawn_face()
    out = reader.read_all(frame, [BOX, (300, 200, 10, 10), (-900, 0, 50, 50), BOX])
    assert out[1] is None and out[2] is None
    assert np.allclose(out[0].probabilities, reader.read(frame, BOX).probabilities, atol=1e-5)
    assert out[0].probabilities == out[3].probabilities
    assert reader.read_all(frame, []) == []
    with pytest.raises(InputError):
        reader.read_all(None, [BOX])


def test_no_face_pixels_are_kept(reader):
    reader.read(drawn_face(), BOX)
    for obj in (reader, reader.read(drawn_face(), BOX)):
        arrays = [v for v in vars(obj).values() if isinstance(v, np.ndarray) and v.size >= 64]
        assert not arrays, f"{type(obj).__name__} holds image-sized arrays"
    assert all(isinstance(p, float) for p in reader.read(drawn_face(), BOX).probabilities)


def fer_crop(gray: np.ndarray, box) -> np.ndarray:
    """fer 25.10.3's detect_emotions crop (tosquare, 10 px offsets, 40 px border, INTER_LINEAR resize, [-1, 1]),
    transcribed from the wheel for a square box well inside the frame."""
    x, y, w, h = box
    padded = cv2.copyMakeBorder(gray, 40, 40, 40, 40, cv2.BORDER_CONSTANT, value=0)
    x1, x2, y1, y2 = x - 10 + 40, x + w + 10 + 40, y - 10 + 40, y + h + 10 + 40
    face = cv2.resize(padded[y1:y2, x1:x2], (64, 64)).astype(np.float32)
    return (face / 255.0 - 0.5) * 2.0


def test_preprocess_matches_fer_for_a_100px_face():
    # fer adds 10 px a side; the bundle's relative margin (0.1) is the same crop for a 100 px face.
    gray = cv2.cvtColor(drawn_face(size=90), cv2.COLOR_BGR2GRAY)
    box = (270, 190, 100, 100)
    ours = preprocess(gray, box, {"margin": 0.1, "size": [64, 64]})
    assert ours.shape == (1, 64, 64) and ours.dtype == np.float32
    assert np.abs(ours[0] - fer_crop(gray, box)).max() < 1e-6
    assert -1.0 <= ours.min() and ours.max() <= 1.0


def test_crop_is_square_centred_and_filled_from_the_face():
    gray = np.tile(np.arange(100, dtype=np.uint8), (80, 1))
    crop = crop_face(gray, (40, 20, 30, 40), margin=0.0)  # taller than wide: widened to 40 around x = 55
    assert crop.shape == (40, 40) and crop[0, 0] == 35 and crop[0, -1] == 74
    edge = crop_face(gray, (-10, 0, 40, 40), margin=0.0)  # 10 columns off the left edge, filled with the mean
    assert edge.shape == (40, 40) and (edge[:, :10] == round(float(gray[:, :30].mean()))).all()


def test_bundle_without_the_model_is_a_clear_error():
    class FakeBundle:
        root = Path("/nowhere/bundle")
        models: dict = {}

    class FakeEngine:
        bundle = FakeBundle()

    with pytest.raises(BundleError, match="no 'expression' model.*export.expression") as exc:
        ExpressionReader(FakeEngine())
    assert exc.value.code == "bundle_no_expression"
