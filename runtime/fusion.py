"""The fusion model on the kiosk: one turn's text + what the camera sees + the face + how it was said →
intent, "is the customer pointing at the thing in view", and frustration (docs/fusion.md).

    fusion = load_optional(engine)                       # None when the bundle has no usable fusion model
    p = fusion.predict(pred.embedding,                   # the intent model's 384-d sentence embedding
                       image=fusion.image_vector(product="oatly-oat-milk"),   # or top_k=[(fine_id, prob), ...]
                       audio=ev.audio)                   # TouchText.audio pairs (or a prosody vector)
    p.intent, p.confidence, p.refers_to_view, p.frustration

Torch-free. The graph takes every modality as a fixed-size float32 input plus a presence ``mask`` (one column
per optional modality, in ``OPTIONAL`` order); a missing modality is a zero input with its mask at 0, and the
graph multiplies each input by its mask itself, so what a caller leaves in a masked slot cannot leak in.

The model was trained on the embeddings of one particular intent encoder and on one product recognizer's
outputs. Another encoder's embeddings live in an unrelated space, so a bundle whose intent or product model
changed since the fusion model was trained gets no fusion model (``load_optional`` logs why) rather than
confident nonsense.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import BundleError, InputError

log = logging.getLogger("storeclerk.fusion")

MODEL = "fusion"
OPTIONAL = ("image", "face", "audio")  # the mask's column order
INPUTS = ("text", "image", "face", "audio", "mask")
OUTPUTS = ("intent_logits", "refers_logit", "frustration_logit")
TEXT_DIM = 384
# FER2013's classes, in the order of the expression model's softmax (and of the ``face`` input).
FACE_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# A camera sighting carries the recognizer's best few guesses, not its whole softmax: the image input is
# those top-k probabilities scattered into the class vector, the rest zero, in training as at run time.
IMAGE_TOP_K = 3
# Probabilities may sum a little over 1 after rounding in an event; far over 1 is not a probability vector.
_SUM_SLACK = 1e-3


@dataclass(frozen=True)
class FusionPrediction:
    intent: str
    confidence: float  # calibrated probability of ``intent``
    refers_to_view: float  # P(the question is about the product in view)
    frustration: float  # P(frustrated)
    frustrated: bool  # frustration at or above the manifest's threshold
    alternatives: tuple[tuple[str, float], ...] = ()
    present: tuple[str, ...] = ()  # the optional modalities this prediction used

    def as_dict(self) -> dict:
        return {"intent": self.intent, "confidence": round(self.confidence, 4),
                "refers_to_view": round(self.refers_to_view, 4), "frustration": round(self.frustration, 4),
                "frustrated": self.frustrated, "alternatives": [[i, round(c, 4)] for i, c in self.alternatives],
                "present": list(self.present)}


def scatter_top_k(top_k: Sequence[tuple[int, float]], n: int, k: int = IMAGE_TOP_K) -> np.ndarray:
    """``[(class index, probability), ...]`` → a length-``n`` vector holding the ``k`` most probable, rest zero."""
    v = np.zeros(n, dtype=np.float32)
    pairs = sorted(((int(i), float(p)) for i, p in top_k), key=lambda t: -t[1])[:k]
    for i, p in pairs:
        if not 0 <= i < n:
            raise InputError(f"image class index {i} is outside 0..{n - 1}", code="fusion_input")
        if not (math.isfinite(p) and 0.0 <= p <= 1.0 + _SUM_SLACK):
            raise InputError(f"image probability {p!r} for class {i} is not in [0, 1]", code="fusion_input")
        v[i] = p
    return v


def truncate_probs(probs: np.ndarray, k: int = IMAGE_TOP_K) -> np.ndarray:
    """Rows of full softmax vectors → the same rows with only their ``k`` largest entries kept."""
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim == 1:
        return truncate_probs(p[None], k)[0]
    out = np.zeros_like(p)
    idx = np.argsort(-p, axis=1)[:, :k]
    rows = np.arange(len(p))[:, None]
    out[rows, idx] = p[rows, idx]
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


class FusionModel:
    def __init__(self, engine, model: str = MODEL, check_sources: bool = True):
        self.engine = engine
        bundle = engine.bundle
        spec = bundle.models.get(model)
        if spec is None:
            raise BundleError(f"{bundle.root}: the bundle has no '{model}' model (train one with "
                              "'python -m models.fusion.train' and add it with 'python -m export.fusion')",
                              code="bundle_no_fusion")
        where = f"{bundle.root}/manifest.json: models.{model}"
        names = tuple(t.name for t in spec.inputs)
        if names != INPUTS or tuple(t.name for t in spec.outputs) != OUTPUTS:
            raise BundleError(f"{where} has inputs {list(names)} and outputs {[t.name for t in spec.outputs]}; "
                              f"this kiosk reads {list(INPUTS)} → {list(OUTPUTS)}", code="bundle_manifest")
        self.dims: dict[str, int] = {}
        for t in spec.inputs:
            if t.rank != 2 or not isinstance(t.shape[1], int):
                raise BundleError(f"{where}: input {t.describe()} must be [batch, n]", code="bundle_manifest")
            self.dims[t.name] = int(t.shape[1])
        if self.dims["mask"] != len(OPTIONAL):
            raise BundleError(f"{where}: the mask has {self.dims['mask']} columns, expected {len(OPTIONAL)} "
                              f"({', '.join(OPTIONAL)})", code="bundle_manifest")
        extra = spec.extra
        try:
            self.labels: list[str] = list(extra["labels"]["intent"])
            feats = extra["features"]
            self.image_labels: list[str] = list(feats["image"]["labels"])
            self.product_ids: list[str] = list(feats["image"].get("product_ids") or [])
            self.image_top_k = int(feats["image"].get("top_k", IMAGE_TOP_K))
            self.face_classes: list[str] = list(feats["face"]["classes"])
            self.audio_features: list[str] = list(feats["audio"]["features"])
            dec = extra["decision"]
            self.temperature = float(dec.get("temperature", 1.0))
            self.refers_threshold = float(dec.get("refers_threshold", 0.5))
            self.frustration_threshold = float(dec.get("frustration_threshold", 0.5))
            self.sources = dict(extra.get("sources") or {})
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where} lacks or garbles {exc}", code="bundle_manifest") from None
        if len(self.labels) != int(spec.outputs[0].shape[-1]):
            raise BundleError(f"{where}: {len(self.labels)} intent labels for a {spec.outputs[0].shape[-1]}-way output",
                              code="bundle_manifest")
        for name, listed in (("image", self.image_labels), ("face", self.face_classes), ("audio", self.audio_features)):
            if len(listed) != self.dims[name]:
                raise BundleError(f"{where}: features.{name} lists {len(listed)} names for a {self.dims[name]}-wide input",
                                  code="bundle_manifest")
        if self.product_ids and len(self.product_ids) != len(self.image_labels):
            raise BundleError(f"{where}: features.image.product_ids does not match its labels", code="bundle_manifest")
        if not self.temperature > 0:
            raise BundleError(f"{where}: decision.temperature must be positive", code="bundle_manifest")
        from runtime.voice.prosody import FEATURES

        if tuple(self.audio_features) != FEATURES:
            # A reordered or rescaled prosody vector would be read as different cues, silently.
            raise BundleError(f"{where}: trained on prosody features {self.audio_features}, but this kiosk computes "
                              f"{list(FEATURES)} (runtime.voice.prosody): retrain the fusion model",
                              code="fusion_features")
        if check_sources:
            self._check_sources(where)
        self._product_index = {p: i for i, p in enumerate(self.product_ids)}
        self.runner = engine.runner(model)

    def _check_sources(self, where: str) -> None:
        """The intent encoder and product recognizer must be the very files the model was trained on."""
        bundle = self.engine.bundle
        for role, src in self.sources.items():
            name = src.get("model")
            files = src.get("files") or {}
            other = bundle.models.get(name)
            if other is None:
                raise BundleError(f"{where}: trained on the bundle's '{name}' model ({role}), which this bundle lacks",
                                  code="fusion_sources")
            now = {v.file: bundle.sha256(v.file) for v in other.variants.values()}
            if now != files:
                raise BundleError(f"{where}: the '{name}' model ({role}) changed since the fusion model was trained "
                                  "(its files' sha256 differ): retrain the fusion model on this bundle",
                                  code="fusion_sources")

    @classmethod
    def from_bundle(cls, path: str | Path, **engine_kw) -> FusionModel:
        from runtime.engine import Engine

        return cls(Engine(path, **engine_kw))

    # --- inputs ----------------------------------------------------------------------------------------------

    def image_vector(self, *, probs: Sequence[float] | np.ndarray | None = None,
                     top_k: Sequence[tuple[int, float]] | None = None, product: str | None = None) -> np.ndarray:
        """The image input from what the camera stage knows: the recognizer's full softmax (``probs``, truncated
        to its top ``IMAGE_TOP_K`` as in training), its top-k guesses, or a scanned product's id (one-hot)."""
        given = [x is not None for x in (probs, top_k, product)]
        if sum(given) != 1:
            raise InputError("image_vector takes exactly one of probs, top_k, product", code="fusion_input")
        n = self.dims["image"]
        if product is not None:
            if product not in self._product_index:
                raise InputError(f"product {product!r} is not one the fusion model knows (it knows {n} catalogue "
                                 "products by id)", code="fusion_input")
            v = np.zeros(n, dtype=np.float32)
            v[self._product_index[product]] = 1.0
            return v
        if top_k is not None:
            return scatter_top_k(top_k, n, self.image_top_k)
        return truncate_probs(self._vector(probs, "image"), self.image_top_k)

    def _vector(self, x: Any, name: str) -> np.ndarray:
        n = self.dims[name]
        if name == "audio" and isinstance(x, (tuple, list)) and x and isinstance(x[0], (tuple, list)):
            x = self._audio_pairs(x)
        try:
            v = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError):
            raise InputError(f"the {name} input must be numbers, got {type(x).__name__}", code="fusion_input") from None
        if v.ndim == 2 and v.shape[0] == 1:
            v = v[0]
        if v.shape != (n,):
            raise InputError(f"the {name} input must have shape ({n},), got {v.shape}", code="fusion_input")
        if not np.isfinite(v).all():
            raise InputError(f"the {name} input holds NaN or infinity", code="fusion_input")
        if name in ("image", "face"):
            if (v < 0).any() or v.sum() > 1.0 + _SUM_SLACK or v.max() > 1.0 + _SUM_SLACK:
                raise InputError(f"the {name} input must be probabilities (each in [0, 1], summing to at most 1)",
                                 code="fusion_input")
        return v

    def _audio_pairs(self, pairs: Sequence[Sequence[Any]]) -> np.ndarray:
        """``TouchText.audio``: (feature, value) pairs, any order, every trained feature present."""
        try:
            d = {str(k): float(v) for k, v in pairs}
        except (TypeError, ValueError):
            raise InputError("audio pairs must be (feature name, number)", code="fusion_input") from None
        missing = [f for f in self.audio_features if f not in d]
        if missing:
            raise InputError(f"the audio input lacks prosody features {missing}", code="fusion_input")
        return np.array([d[f] for f in self.audio_features], dtype=np.float32)

    def features(self, text_emb: Any, image: Any = None, face: Any = None, audio: Any = None) -> dict[str, np.ndarray]:
        """One turn's graph inputs (batch of one). ``None`` or an empty sequence means "not present"."""
        text = self._vector(text_emb, "text")
        norm = float(np.linalg.norm(text))
        if norm < 1e-6:
            raise InputError("the text embedding is all zeros (no text to understand)", code="fusion_input")
        feed = {"text": (text / norm)[None]}
        mask = np.zeros((1, len(OPTIONAL)), dtype=np.float32)
        for j, (name, x) in enumerate(zip(OPTIONAL, (image, face, audio), strict=True)):
            absent = x is None or (isinstance(x, (tuple, list)) and len(x) == 0)
            if absent:
                feed[name] = np.zeros((1, self.dims[name]), dtype=np.float32)
            else:
                feed[name] = self._vector(x, name)[None]
                mask[0, j] = 1.0
        feed["mask"] = mask
        return feed

    # --- outputs ---------------------------------------------------------------------------------------------

    def predict(self, text_emb: Any, image: Any = None, face: Any = None, audio: Any = None) -> FusionPrediction:
        """``text_emb``: the intent model's sentence embedding (normalised here). ``image``: ``image_vector(...)``
        or a probability vector over the recognizer's classes; ``face``: FER2013 probabilities in
        ``FACE_CLASSES`` order; ``audio``: the prosody vector or ``TouchText.audio`` pairs."""
        feed = self.features(text_emb, image, face, audio)
        out = self.runner.infer(feed)
        return self.decide(out["intent_logits"], out["refers_logit"], out["frustration_logit"],
                           tuple(n for j, n in enumerate(OPTIONAL) if feed["mask"][0, j]))[0]

    def decide(self, intent_logits: np.ndarray, refers_logit: np.ndarray, frustration_logit: np.ndarray,
               present: tuple[str, ...] = ()) -> list[FusionPrediction]:
        p = _softmax(np.asarray(intent_logits, np.float64) / self.temperature)
        refers = _sigmoid(np.asarray(refers_logit, np.float64).reshape(len(p)))
        frus = _sigmoid(np.asarray(frustration_logit, np.float64).reshape(len(p)))
        out = []
        for row in range(len(p)):
            order = np.argsort(-p[row])
            alts = tuple((self.labels[int(k)], float(p[row, k])) for k in order[1:4])
            out.append(FusionPrediction(self.labels[int(order[0])], float(p[row, order[0]]), float(refers[row]),
                                        float(frus[row]), bool(frus[row] >= self.frustration_threshold), alts, present))
        return out


def load_optional(engine, model: str = MODEL) -> FusionModel | None:
    """The bundle's fusion model, or None (logged) when it has none or one that does not fit this bundle or
    kiosk: the kiosk then understands text alone, as before the fusion model existed."""
    if model not in engine.bundle.models:
        return None
    try:
        return FusionModel(engine, model)
    except BundleError as exc:
        log.warning("fusion model not used: %s", exc)
        return None

