"""Sentence embeddings for knowledge-base retrieval, from the bundle's ``retrieval`` model (torch-free).

    embedder = retrieval_embedder(engine)          # None for bundles exported before the retrieval model
    retriever = HybridRetriever(kb, embedder.embed if embedder else classifier.embed)

The ``retrieval`` model is all-MiniLM-L6-v2 as published (``export/retrieval.py``): trained for sentence
similarity, unlike the intent model's encoder, which is fine-tuned for classification. Its graph already
mean-pools and L2-normalises; ``embed`` normalises again so a caller can rely on unit rows whatever the variant.
Index vectors and query vectors must come from the same model: mixing this embedder with the intent model's
embeddings compares two unrelated spaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime.errors import BundleError
from runtime.intents import clean_text
from runtime.tokenizer import MAX_LENGTH, encode_batch, load_tokenizer

MODEL = "retrieval"
BATCH = 32
OUTPUT = "embedding"


class SentenceEmbedder:
    def __init__(self, engine, model: str = MODEL):
        self.engine = engine
        self.model = model
        spec = engine.bundle.models.get(model)
        if spec is None:
            raise BundleError(f"{engine.bundle.root}: the bundle has no '{model}' model")
        out = next((t for t in spec.outputs if t.name == OUTPUT), None)
        if out is None:
            raise BundleError(f"{engine.bundle.root}/manifest.json: model '{model}' has no '{OUTPUT}' output")
        self.dim = int(out.shape[-1]) if out.shape and isinstance(out.shape[-1], int) else None
        tok = spec.extra.get("tokenizer") or {}
        if not isinstance(tok.get("file"), str):
            raise BundleError(f"{engine.bundle.root}/manifest.json: model '{model}' lacks tokenizer.file")
        self.tokenizer = load_tokenizer(Path(engine.bundle.root) / tok["file"], int(tok.get("max_length", MAX_LENGTH)))
        self.runner = engine.runner(model)

    @classmethod
    def from_bundle(cls, path: str | Path, model: str = MODEL, **engine_kw) -> SentenceEmbedder:
        from runtime.engine import Engine

        return cls(Engine(path, **engine_kw), model)

    def embed(self, texts: Sequence[object]) -> np.ndarray:
        """L2-normalised embeddings, shape (len(texts), dim), float32, in the order given. Empty or non-text
        inputs get a zero row (similar to nothing). Batches of ``BATCH`` texts of similar length."""
        clean = [clean_text(t) for t in texts]
        live = sorted((i for i, t in enumerate(clean) if t), key=lambda i: len(clean[i]))
        out: np.ndarray | None = None
        for s in range(0, len(live), BATCH):
            rows = live[s : s + BATCH]
            ids, mask = encode_batch(self.tokenizer, [clean[i] for i in rows])
            emb = np.asarray(self.runner.infer({"input_ids": ids, "attention_mask": mask})[OUTPUT], dtype=np.float32)
            if out is None:
                out = np.zeros((len(clean), emb.shape[1]), dtype=np.float32)
            out[rows] = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        if out is None:
            out = np.zeros((len(clean), self.dim or 0), dtype=np.float32)
        return out

    __call__ = embed


def retrieval_embedder(engine, model: str = MODEL) -> SentenceEmbedder | None:
    """The bundle's retrieval embedder, or None when the bundle has no ``model`` (bundles exported before it):
    the caller then keeps the intent model's embeddings."""
    if model not in engine.bundle.models:
        return None
    return SentenceEmbedder(engine, model)
