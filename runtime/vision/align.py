"""Image ↔ text matching against the catalogue, in the kiosk's MiniLM sentence space (torch-free).

    matcher = CatalogMatcher.from_bundle(engine.bundle)            # vectors the export stored in the bundle
    matcher.match_image(pred_embedding, k=3)                       # a held-up product → catalogue entries
    matcher.search_text(embedder.embed(["an oat drink"])[0], k=5)  # a description → products, by their pictures

The product model's ``image_embedding`` output (``ProductRecognizer``) and the ``retrieval`` text encoder
(``runtime.embedder``) live in one space: the export trained the image projection into it
(``models/align``). ``match_image`` ranks the products' catalogue text; ``search_text`` ranks the products'
pictures (one iconic picture each). Both return ``Match``es, best first, with cosine scores.

The vectors either come from the bundle (``products/align.npz``: written at export, hashed by the manifest
like every other file) or are built from the current catalogue with ``from_texts`` (a store that renames or
adds products re-embeds its own text; pictures need the product model, see ``image_vectors_from``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import BundleError, InputError

MODEL = "products"
READOUTS = ("canonical", "mean")


@dataclass(frozen=True)
class Match:
    product_id: str
    fine_id: int
    label: str
    score: float  # cosine similarity in [-1, 1]

    def as_dict(self) -> dict:
        return {"product_id": self.product_id, "fine_id": self.fine_id, "label": self.label,
                "score": round(self.score, 4)}


def _unit_rows(m: Any, what: str, dim: int | None = None) -> np.ndarray:
    a = np.asarray(m, dtype=np.float32)
    if a.ndim != 2 or not len(a) or (dim is not None and a.shape[1] != dim):
        raise BundleError(f"{what}: expected a (products, {dim or 'dim'}) matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise BundleError(f"{what}: holds NaN or infinite values")
    n = np.linalg.norm(a, axis=1, keepdims=True)
    if (n < 1e-6).any():
        raise BundleError(f"{what}: row(s) {np.flatnonzero(n[:, 0] < 1e-6)[:5].tolist()} are zero vectors")
    return a / n


class CatalogMatcher:
    def __init__(self, product_ids: Sequence[str], labels: Sequence[str], text_vectors: np.ndarray,
                 image_vectors: np.ndarray | None = None, *, text_sets: Mapping[str, np.ndarray] | None = None,
                 readout: str = "mean"):
        if len(product_ids) != len(labels) or not len(product_ids):
            raise BundleError(f"{len(product_ids)} product ids but {len(labels)} labels")
        if len(set(product_ids)) != len(product_ids):
            raise BundleError("product ids must be unique")
        self.product_ids = [str(p) for p in product_ids]
        self.labels = [str(s) for s in labels]
        self.text_vectors = _unit_rows(text_vectors, "text vectors")
        if len(self.text_vectors) != len(self.product_ids):
            raise BundleError(f"{len(self.text_vectors)} text vectors for {len(self.product_ids)} products")
        self.dim = int(self.text_vectors.shape[1])
        self.image_vectors = None if image_vectors is None else _unit_rows(image_vectors, "image vectors", self.dim)
        if self.image_vectors is not None and len(self.image_vectors) != len(self.product_ids):
            raise BundleError(f"{len(self.image_vectors)} image vectors for {len(self.product_ids)} products")
        self.readout = readout
        self._text_sets = {k: _unit_rows(v, f"text vectors ({k})", self.dim) for k, v in (text_sets or {}).items()}
        self._text_sets.setdefault(readout, self.text_vectors)

    def text_sets(self) -> dict[str, np.ndarray]:
        return dict(self._text_sets)

    # --- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_bundle(cls, bundle: Any, model: str = MODEL) -> CatalogMatcher:
        """From a loaded ``runtime.bundle.Bundle`` (or a bundle directory): the ``align`` block of the product
        model's manifest entry and the vectors file it names."""
        if isinstance(bundle, (str, Path)):
            from runtime.bundle import load_bundle

            bundle = load_bundle(bundle, verify=True)
        spec = bundle.models.get(model)
        if spec is None:
            raise BundleError(f"{bundle.root}: the bundle has no '{model}' model", code="bundle_no_products")
        align = spec.extra.get("align")
        where = f"{bundle.root}/manifest.json: models.{model}.align"
        if not isinstance(align, dict) or not isinstance(align.get("file"), str):
            raise BundleError(f"{where} is missing: this bundle's product model has no image ↔ text alignment "
                              "(export it with 'python -m export.products --align FILE')", code="bundle_no_align")
        path = Path(bundle.root) / align["file"]
        try:
            z = np.load(path, allow_pickle=False)
            ids = [str(s) for s in z["product_ids"]]
            labels = [str(s) for s in z["labels"]]
            sets = {k: z[f"text_{k}"] for k in READOUTS if f"text_{k}" in z.files}
            image = z["image_vectors"] if "image_vectors" in z.files else None
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(f"{path}: not a readable alignment vectors file ({exc})", code="bundle_manifest") from exc
        readout = str(align.get("text_readout", "mean"))
        if readout not in sets:
            raise BundleError(f"{where}.text_readout {readout!r} is not among the stored vectors {sorted(sets)}",
                              code="bundle_manifest")
        return cls(ids, labels, sets[readout], image, text_sets=sets, readout=readout)

    @classmethod
    def from_texts(cls, product_ids: Sequence[str], labels: Sequence[str], views: Sequence[Sequence[str]],
                   embed: Callable[[list[str]], np.ndarray], image_vectors: np.ndarray | None = None,
                   readout: str = "mean") -> CatalogMatcher:
        """Embed each product's text views once (``embed``: the kiosk's text encoder, e.g.
        ``SentenceEmbedder.embed``); ``canonical`` = each product's first view, ``mean`` = all views averaged."""
        if readout not in READOUTS:
            raise InputError(f"readout must be one of {READOUTS}, got {readout!r}")
        if len(views) != len(product_ids) or any(not [t for t in v if str(t).strip()] for v in views):
            raise InputError("every product needs at least one non-empty text")
        flat, owner = [], []
        for i, v in enumerate(views):
            for t in v:
                if str(t).strip():
                    flat.append(str(t))
                    owner.append(i)
        vec = np.asarray(embed(flat), np.float32)
        owner_a = np.asarray(owner)
        canonical = np.stack([vec[np.flatnonzero(owner_a == i)[0]] for i in range(len(views))])
        mean = np.stack([vec[owner_a == i].mean(0) for i in range(len(views))])
        sets = {"canonical": canonical, "mean": mean}
        return cls(product_ids, labels, sets[readout], image_vectors, text_sets=sets, readout=readout)

    # --- queries -----------------------------------------------------------------------------------------------

    def _query(self, v: Any, name: str) -> np.ndarray:
        if v is None:
            raise InputError(f"{name} is None")
        a = np.asarray(v, dtype=np.float32)
        if a.ndim == 2 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 1 or a.shape[0] != self.dim:
            raise InputError(f"{name} must be one vector of {self.dim} values, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise InputError(f"{name} holds NaN or infinite values")
        n = float(np.linalg.norm(a))
        if n < 1e-6:
            raise InputError(f"{name} is a zero vector (empty text?)")
        return a / n

    def _rank(self, sims: np.ndarray, k: int) -> list[Match]:
        if not 1 <= int(k) <= len(self.product_ids):
            raise InputError(f"k must be between 1 and {len(self.product_ids)}, got {k}")
        order = np.argsort(-sims, kind="stable")[: int(k)]
        return [Match(self.product_ids[i], int(i), self.labels[i], float(sims[i])) for i in order]

    def match_image(self, embedding: Any, k: int = 3) -> list[Match]:
        """Products whose catalogue text is nearest to an image embedding (``ProductPrediction.embedding``)."""
        return self._rank(self.text_vectors @ self._query(embedding, "image embedding"), k)

    def search_text(self, text_vector: Any, k: int = 5) -> list[Match]:
        """Products whose picture is nearest to a text embedding (the kiosk's retrieval encoder)."""
        if self.image_vectors is None:
            raise InputError("this catalogue matcher has no product pictures to search (build it from a bundle "
                             "exported with --align, or pass image_vectors)")
        return self._rank(self.image_vectors @ self._query(text_vector, "text vector"), k)

    def text_similarity(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, products) cosines of image embeddings to the products' text (for open-set rules)."""
        e = np.asarray(embeddings, np.float32)
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise InputError(f"embeddings must be (n, {self.dim}), got {e.shape}")
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return e @ self.text_vectors.T
