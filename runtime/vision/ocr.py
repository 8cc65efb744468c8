"""Reading order numbers off receipts and phone screens held up to the camera (rapidocr: PP-OCR on ONNX Runtime).

    lines = read_text(frame)          # [TextLine(text="Order # 00004587345", score=0.99, box=((x, y), ...x4))]
    ids = find_order_ids(frame)       # ["00004587345"]

The models are the ones the ``rapidocr`` wheel ships (PP-OCRv6 small detector and recogniser, the v2 angle
classifier). rapidocr downloads a model it cannot find, so :class:`OcrReader` names the packaged files
explicitly and refuses to start (``ConfigError``) if one is missing: nothing is ever fetched. It is also only
ever handed arrays, because rapidocr fetches an image given as an ``http`` string. The engine loads on first
use (~1 s), not at import, so a kiosk that never sees a receipt never pays for it.

Order numbers are what ``runtime.orders.normalize_id`` accepts (6-15 digits, leading zeros kept). On a
receipt the order number sits next to other digit runs (phone, date, store number, totals), so a number is
taken first from a line that says "order" (or ``#``), or from the line right of / below such a label;
only when no line is labelled are lines that consist of nothing but one number taken.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from runtime.errors import ConfigError
from runtime.orders import normalize_id
from runtime.vision.images import as_bgr

__all__ = ["OcrReader", "TextLine", "default_reader", "find_order_ids", "read_text"]

log = logging.getLogger(__name__)

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]

_MODEL_FILES = {
    "Det": "PP-OCRv6_det_small.onnx",
    "Rec": "PP-OCRv6_rec_small.onnx",
    "Cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
}
_LABEL_RE = re.compile(r"\b(?:order|ord|bestell\w*|commande|pedido)\b|#", re.IGNORECASE)
_BARE_NUMBER_RE = re.compile(r"#?\s*\d{3,}(?: \d{3,})*")  # no dashes/dots: dates and phone numbers have them
# what PP-OCR confuses with digits inside a mostly-digit token
_DIGIT_LOOKALIKES = str.maketrans({"O": "0", "o": "0", "D": "0", "I": "1", "l": "1", "|": "1", "S": "5", "B": "8"})


class TextLine(NamedTuple):
    """One line of text: ``box`` is its four corners (top-left, top-right, bottom-right, bottom-left)."""

    text: str
    score: float
    box: Box


class OcrReader:
    """A lazily loaded rapidocr engine. ``max_side``: frames larger than this are scaled down for detection
    (640x480 is detected as is: rapidocr's default would upscale it to 981x736, ~1.5x slower for nothing on
    camera-sized text). ``threads``: ONNX Runtime threads (None: its default). ``use_cls``: also handle text
    upside down. ``min_score``: lines below it are dropped."""

    def __init__(self, *, max_side: int = 960, threads: int | None = None, use_cls: bool = True,
                 min_score: float = 0.5, model_dir: str | os.PathLike[str] | None = None):
        self.max_side, self.threads, self.use_cls, self.min_score = int(max_side), threads, use_cls, float(min_score)
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self._engine: Any = None
        self._lock = threading.Lock()
        self.load_seconds: float | None = None

    def _params(self) -> dict[str, Any]:
        model_dir = self.model_dir
        if model_dir is None:
            try:
                import rapidocr
            except ImportError as exc:
                raise ConfigError("OCR needs the 'rapidocr' package: pip install 'rapidocr>=3,<4' "
                                  "'opencv-python-headless>=4.10,<5'") from exc
            model_dir = Path(rapidocr.__file__).parent / "models"
        params: dict[str, Any] = {
            "Global.log_level": "error",
            "Global.use_cls": self.use_cls,
            "Global.text_score": self.min_score,
            "Det.limit_type": "max",
            "Det.limit_side_len": self.max_side,
        }
        for stage, name in _MODEL_FILES.items():
            path = model_dir / name
            if not path.is_file():
                raise ConfigError(f"the OCR model {path} is missing (reinstall rapidocr 3.x, whose wheel ships it); "
                                  "the kiosk never downloads models")
            params[f"{stage}.model_path"] = str(path)
        if self.threads:
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = int(self.threads)
        return params

    def load(self) -> OcrReader:
        """Load the engine now (it is otherwise loaded on first use)."""
        with self._lock:
            if self._engine is None:
                params = self._params()
                from rapidocr import RapidOCR

                t0 = time.perf_counter()
                self._engine = RapidOCR(params=params)
                self.load_seconds = time.perf_counter() - t0
                log.info("OCR engine loaded in %.2f s", self.load_seconds)
        return self

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    def read_text(self, frame: Any) -> list[TextLine]:
        """Every text line in ``frame`` (BGR/gray uint8 or a camera ``Frame``), top to bottom. ``[]`` for a
        frame with no text; ``InputError`` for an unusable frame."""
        img = as_bgr(frame)
        if float(img.max()) - float(img.min()) < 8:  # flat frame (lens cap, black screen): nothing to read
            return []
        self.load()
        with self._lock:  # rapidocr's engine is not documented thread-safe, and two OCRs at once on 2-6 cores only slow both
            out = self._engine(img)
        if out is None or out.txts is None or out.boxes is None:
            return []
        lines = []
        for text, score, box in zip(out.txts, out.scores, out.boxes, strict=True):
            if score < self.min_score or not str(text).strip():
                continue
            pts = tuple((int(round(x)), int(round(y))) for x, y in np.asarray(box).reshape(4, 2))
            lines.append(TextLine(str(text), float(score), pts))  # type: ignore[arg-type]
        lines.sort(key=lambda ln: (_top(ln.box), _left(ln.box)))
        return lines

    def find_order_ids(self, frame: Any) -> list[str]:
        """Order numbers shown in ``frame``, most trustworthy first, each once (see the module docstring)."""
        return order_ids_in(self.read_text(frame))


def _top(box: Box) -> float:
    return min(p[1] for p in box)


def _bottom(box: Box) -> float:
    return max(p[1] for p in box)


def _left(box: Box) -> float:
    return min(p[0] for p in box)


def _right(box: Box) -> float:
    return max(p[0] for p in box)


def _normalize(text: str) -> str | None:
    found = normalize_id(text)
    if found is not None:
        return found
    fixed = " ".join(
        tok.translate(_DIGIT_LOOKALIKES)
        if len(tok) >= 6 and sum(c.isdigit() for c in tok) >= 0.7 * len(tok) else tok
        for tok in text.split()
    )
    return normalize_id(fixed) if fixed != text else None


def _neighbour(label: TextLine, lines: list[TextLine]) -> TextLine | None:
    """The line right of ``label`` on the same row, else the nearest one just below it."""
    h = max(1.0, _bottom(label.box) - _top(label.box))
    mid = (_top(label.box) + _bottom(label.box)) / 2
    right = [ln for ln in lines if ln is not label and _top(ln.box) <= mid <= _bottom(ln.box)
             and _left(ln.box) >= _right(label.box) - h]
    if right:
        return min(right, key=lambda ln: _left(ln.box))
    below = [ln for ln in lines if ln is not label and 0 <= _top(ln.box) - _bottom(label.box) <= 2.5 * h
             and _left(ln.box) < _right(label.box) + 2 * h and _right(ln.box) > _left(label.box) - 2 * h]
    return min(below, key=lambda ln: _top(ln.box)) if below else None


def order_ids_in(lines: list[TextLine]) -> list[str]:
    """The order numbers in OCR'd ``lines`` (the logic of :meth:`OcrReader.find_order_ids`, without OCR)."""
    labelled: list[str] = []
    for ln in lines:
        if not _LABEL_RE.search(ln.text):
            continue
        found = _normalize(ln.text)
        if found is None:
            nb = _neighbour(ln, lines)
            found = _normalize(nb.text) if nb is not None else None
        if found is not None and found not in labelled:
            labelled.append(found)
    if labelled:
        return labelled
    bare: list[str] = []
    for ln in lines:
        if _BARE_NUMBER_RE.fullmatch(ln.text.strip()):
            found = _normalize(ln.text)
            if found is not None and found not in bare:
                bare.append(found)
    return bare


_default: OcrReader | None = None
_default_lock = threading.Lock()


def default_reader() -> OcrReader:
    """The process-wide reader (created, not loaded, on first call)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = OcrReader()
        return _default


def read_text(frame: Any) -> list[TextLine]:
    """``default_reader().read_text(frame)``."""
    return default_reader().read_text(frame)


def find_order_ids(frame: Any) -> list[str]:
    """``default_reader().find_order_ids(frame)``."""
    return default_reader().find_order_ids(frame)
