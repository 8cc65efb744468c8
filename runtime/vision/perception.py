"""One camera frame → what the kiosk should know about it (DESIGN §2: ``Frame`` → ``Sighting``).

Synchronous and free of asyncio so it runs in a worker thread and can be tested frame by frame. Each detector
runs at its own pace, because they cost very different amounts on a 2-core box (measured in docs/vision.md):

* barcodes/QR (zxing-cpp, ~10 ms at 640×480): every frame — a scan is a deliberate act and must feel instant;
* the product model (~5 ms INT8 + preprocessing): every ``product_every_s``, and only while no code is in view;
  a product counts once the same answer came ``stable_runs`` times in a row, so a hand moving an apple past
  the lens does not flash three product cards;
* face presence (Haar cascade on a 320 px copy): every ``face_every_n`` frames;
* OCR (~1 s): only when asked (``want_ocr``: the conversation waits for an order number), at most every
  ``ocr_every_s``.

A detector that throws is counted and skipped for that frame: a bad frame or a flaky model never stops the
camera. Black or blank frames (lens covered, camera warming up) skip the product model, which would otherwise
be asked to name a picture of nothing.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.events import Sighting

log = logging.getLogger("storeclerk.vision")

BLANK_STD = 4.0  # grey-level spread below which a frame shows nothing (covered lens, black frame, flat wall)


@dataclass
class FrameResult:
    sightings: list[Sighting] = field(default_factory=list)
    presence: Any = None  # runtime.vision.face.PresenceEvent
    faces: int | None = None  # faces counted this frame (None: not checked)
    expression: Any = None  # runtime.vision.expression.ExpressionReading of the largest face, when read
    blank: bool = False


class Perception:
    def __init__(self, kb=None, orders=None, *, recognizer=None, presence=None, ocr=None, expression=None,
                 product_every_s: float = 0.5, stable_runs: int = 2, face_every_n: int = 3,
                 ocr_every_s: float = 2.0, clock=time.monotonic) -> None:
        self._kb = kb  # a KnowledgeBase, or a callable returning the current one (the KB hot-reloads)
        self.orders = orders
        self.recognizer = recognizer  # runtime.vision.products.ProductRecognizer or None
        self.presence = presence  # runtime.vision.face.FacePresence or None
        self.ocr = ocr  # runtime.vision.ocr.OcrReader or None
        self.expression = expression  # runtime.vision.expression.ExpressionReader or None (needs presence)
        self.product_every_s = float(product_every_s)
        self.stable_runs = max(1, int(stable_runs))
        self.face_every_n = max(1, int(face_every_n))
        self.ocr_every_s = float(ocr_every_s)
        self.clock = clock
        self.errors: Counter[str] = Counter()
        self.frames = 0
        self.blank_frames = 0
        self._next_product = 0.0
        self._next_ocr = 0.0
        self._streak: tuple[str | None, int] = (None, 0)  # (product id or "unknown", runs in a row)

    @property
    def kb(self):
        return self._kb() if callable(self._kb) else self._kb

    # ------------------------------------------------------------------------------------------ detectors
    def _guard(self, name: str, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # one detector failing on one frame: count it, keep the others going
            self.errors[name] += 1
            if self.errors[name] in (1, 10, 100) or self.errors[name] % 1000 == 0:
                log.warning("vision: %s failed (%d so far): %s", name, self.errors[name], exc)
            return None

    def codes(self, image: np.ndarray, ts: float) -> list[Sighting]:
        from runtime.vision.barcode import OrderCode, ProductCode, decode, resolve

        out = []
        for code in decode(image):
            r = resolve(code, self.kb, self.orders)
            if isinstance(r, ProductCode):
                name = getattr(r.product, "display_name", None) or getattr(r.product, "name", "")
                out.append(Sighting("product", r.product.id, 1.0, "barcode", name, code.box, ts))
            elif isinstance(r, OrderCode):
                out.append(Sighting("order", r.order_id, 1.0, "qr" if code.format == "QR" else "barcode",
                                    "order", code.box, ts))
            else:  # the reason is for logs; the payload itself is never shown or followed
                out.append(Sighting("code", None, 0.0, code.format, r.reason, code.box, ts))
        return out

    def product(self, image: np.ndarray, ts: float) -> Sighting | None:
        """The recognizer's answer once it has been the same ``stable_runs`` times in a row, else None."""
        pred = self.recognizer.predict_one(image)
        pid = None if pred.unknown else self._catalog_id(pred.fine_id, pred.label)
        key = pid or "unknown"
        last, n = self._streak
        self._streak = (key, n + 1 if key == last else 1)
        if self._streak[1] != self.stable_runs:  # report once, when it becomes stable
            return None
        if pid is None:
            return Sighting("unknown", None, float(pred.score), "recognizer", "", None, ts)
        p = self.kb.product(pid) if self.kb is not None else None
        label = (getattr(p, "display_name", None) or pred.label) if p is not None else pred.label
        top_k = tuple((int(g.fine_id), float(g.prob)) for g in getattr(pred, "top_k", ()))
        return Sighting("product", pid, float(pred.prob), "recognizer", label, None, ts, top_k)

    def _catalog_id(self, fine_id: int, label: str) -> str | None:
        """The knowledge-base id of the recognizer's class: the catalog row named like the class label (the data
        set's class name), else the row with that ``fine_id``. A store that dropped a product from its catalog gets
        None: better "I don't recognize this" than a card for something not sold here."""
        kb = self.kb
        if kb is None:
            return None
        p = next((q for q in kb.products if q.name == label), None) or kb.by_fine_id(fine_id)
        return p.id if p is not None else None

    def receipt(self, image: np.ndarray, ts: float) -> Sighting | None:
        ids = self.ocr.find_order_ids(image)
        return Sighting("order", ids[0], 0.9, "ocr", "order", None, ts) if ids else None

    # ---------------------------------------------------------------------------------------------- frame
    def step(self, frame: Any, *, want_ocr: bool = False) -> FrameResult:
        """Everything due for this frame (a ``device.camera.Frame`` or a BGR array)."""
        image = getattr(frame, "image", frame)
        ts = float(getattr(frame, "ts", self.clock()))
        res = FrameResult()
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 \
                or image.shape[0] < 16 or image.shape[1] < 16:
            self.errors["bad_frame"] += 1
            return res
        self.frames += 1
        now = self.clock()
        codes = self._guard("barcode", self.codes, image, ts) or []
        res.sightings.extend(codes)
        # std of a 1/8 subsample: enough to tell a black frame from a scene, at no real cost
        res.blank = float(image[::8, ::8].std()) < BLANK_STD
        if res.blank:
            self.blank_frames += 1
            self._streak = (None, 0)
        if self.recognizer is not None and not codes and not res.blank and now >= self._next_product:
            self._next_product = now + self.product_every_s
            seen = self._guard("product", self.product, image, ts)
            if seen is not None:
                res.sightings.append(seen)
        if self.ocr is not None and want_ocr and not codes and not res.blank and now >= self._next_ocr:
            self._next_ocr = now + self.ocr_every_s
            seen = self._guard("ocr", self.receipt, image, ts)
            if seen is not None:
                res.sightings.append(seen)
        if self.presence is not None and self.frames % self.face_every_n == 0:
            reading = self._guard("face", self.presence.update, image, ts)
            if reading is not None:
                res.faces, res.presence = reading.count, reading.event
                if self.expression is not None and reading.boxes:
                    # the customer is the largest face (nearest the screen); a face too small or flat to read is
                    # simply no cue this time
                    box = max(reading.boxes, key=lambda b: int(b[2]) * int(b[3]))
                    res.expression = self._guard("expression", self.expression.read, image, box)
        return res

    def health(self) -> dict[str, Any]:
        return {"frames": self.frames, "blank_frames": self.blank_frames, "errors": dict(self.errors),
                "products": self.recognizer is not None, "faces": self.presence is not None, "ocr": self.ocr is not None,
                "expression": self.expression is not None}
