"""Intent + out-of-scope understanding on the kiosk: tokenizer + ONNX runner + the calibrated decision.

Torch-free. Everything the decision needs (labels, temperature, threshold) comes from the manifest.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import BundleError
from runtime.tokenizer import encode_batch, load_tokenizer

# The tokenizer truncates to 128 tokens anyway; capping characters first keeps a pasted novel cheap.
MAX_CHARS = 1000
TOP_K = 3
BATCH = 32


@dataclass(frozen=True)
class IntentPrediction:
    intent: str  # the out-of-scope label when out_of_scope
    confidence: float  # calibrated probability of ``intent``
    out_of_scope: bool
    alternatives: tuple[tuple[str, float], ...]  # top in-scope readings, best first (for clarification)
    embedding: np.ndarray | None = None

    def as_dict(self) -> dict:
        return {
            "intent": self.intent,
            "confidence": round(self.confidence, 4),
            "out_of_scope": self.out_of_scope,
            "alternatives": [{"intent": i, "confidence": round(c, 4)} for i, c in self.alternatives],
        }


def clean_text(text: object) -> str:
    """Whatever arrives (bytes with bad UTF-8, control characters, huge strings) becomes a safe short str."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        text = "" if text is None else str(text)
    # Lone surrogates (from surrogateescape decoding) would make the tokenizer raise.
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text[: MAX_CHARS * 2])
    return " ".join(text.split())[:MAX_CHARS]


class IntentClassifier:
    def __init__(self, engine, model: str = "intent"):
        self.engine = engine
        spec = engine.bundle.models.get(model)
        if spec is None:
            raise BundleError(f"{engine.bundle.root}: the bundle has no '{model}' model")
        extra = spec.extra
        try:
            self.labels: list[str] = list(extra["labels"])
            tok_file = extra["tokenizer"]["file"]
        except (KeyError, TypeError) as exc:
            raise BundleError(f"{engine.bundle.root}/manifest.json: model '{model}' lacks {exc}") from None
        oos = extra.get("oos") or {}
        self.oos_label: str | None = oos.get("label")
        self.oos_index = self.labels.index(self.oos_label) if self.oos_label in self.labels else None
        self.temperature = float(oos.get("temperature", 1.0))
        # Out-of-scope score: highest in-scope raw logit (see models/calibrate.py); -inf: never reject.
        thr = oos.get("threshold")
        self.threshold = float(thr) if thr is not None else float("-inf")
        self.tokenizer = load_tokenizer(Path(engine.bundle.root) / tok_file,
                                        int(extra["tokenizer"].get("max_length", 128)))
        self.runner = engine.runner(model)

    @classmethod
    def from_bundle(cls, path: str | Path, **engine_kw) -> IntentClassifier:
        from runtime.engine import Engine

        return cls(Engine(path, **engine_kw))

    def logits(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = encode_batch(self.tokenizer, list(texts))
        out = self.runner.infer({"input_ids": ids, "attention_mask": mask})
        return out["embedding"], out["logits"]

    def embed(self, texts: Sequence[object]) -> np.ndarray:
        """L2-normalised sentence embeddings (n, dim) from the bundle's encoder, for retrieval. Empty or
        non-text inputs get a zero row (similar to nothing)."""
        clean = [clean_text(t) for t in texts]
        out: np.ndarray | None = None
        live = [i for i, t in enumerate(clean) if t]
        live.sort(key=lambda i: len(clean[i]))
        for s in range(0, len(live), BATCH):
            rows = live[s : s + BATCH]
            emb, _ = self.logits([clean[i] for i in rows])
            if out is None:
                out = np.zeros((len(clean), emb.shape[1]), dtype=np.float32)
            norms = np.linalg.norm(emb, axis=1, keepdims=True)
            out[rows] = emb / np.maximum(norms, 1e-12)
        if out is None:
            dim = int(self.runner.output_shape("embedding")[-1]) if hasattr(self.runner, "output_shape") else 384
            out = np.zeros((len(clean), dim), dtype=np.float32)
        return out

    def predict(self, texts: Sequence[object], with_embedding: bool = False) -> list[IntentPrediction]:
        clean = [clean_text(t) for t in texts]
        results: list[IntentPrediction | None] = [None] * len(clean)
        live = [i for i, t in enumerate(clean) if t]
        for i in set(range(len(clean))) - set(live):
            # Nothing to understand: out of scope with no confidence, so dialogue asks again.
            results[i] = IntentPrediction(self.oos_label or "", 0.0, True, ())
        # Similar lengths together: a batch pads to its longest text.
        live.sort(key=lambda i: len(clean[i]))
        for s in range(0, len(live), BATCH):
            rows = live[s : s + BATCH]
            emb, logits = self.logits([clean[i] for i in rows])
            z = logits / self.temperature
            z = z - z.max(1, keepdims=True)
            probs = np.exp(z)
            probs /= probs.sum(1, keepdims=True)
            for row, i in enumerate(rows):
                results[i] = self._decide(logits[row], probs[row], emb[row] if with_embedding else None)
        return results  # type: ignore[return-value]

    def predict_one(self, text: object, with_embedding: bool = False) -> IntentPrediction:
        return self.predict([text], with_embedding)[0]

    def _decide(self, logits: np.ndarray, p: np.ndarray, emb: np.ndarray | None) -> IntentPrediction:
        order = np.argsort(-p)
        in_scope = [int(k) for k in order if k != self.oos_index][:TOP_K]
        alts = tuple((self.labels[k], float(p[k])) for k in in_scope)
        top = int(order[0])
        best_in = in_scope[0] if in_scope else top
        oos = top == self.oos_index or float(logits[best_in]) < self.threshold
        if oos:
            conf = float(p[self.oos_index]) if self.oos_index is not None else 1.0 - float(p[best_in])
            return IntentPrediction(self.oos_label or "", max(conf, 1.0 - float(p[best_in])), True, alts, emb)
        return IntentPrediction(self.labels[best_in], float(p[best_in]), False, alts, emb)
