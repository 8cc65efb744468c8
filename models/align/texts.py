"""The catalogue's text views of each product, and their MiniLM embeddings.

Each product is described several ways, because customers do: its display name, every alias, "a photo of
<name>", its kind ("Apple"), and each sentence of its description. Training samples one view per product
per step (text augmentation); retrieval uses either the *canonical* text (the display name) or the mean of
all views (re-normalised), whichever the held-out split prefers.

The embeddings come from the kiosk bundle's own ``retrieval`` model (all-MiniLM-L6-v2, INT8 ONNX, through
``runtime.embedder.SentenceEmbedder``): the image head is trained into exactly the space the kiosk embeds a
customer's words in, so nothing about the text side differs between training and the kiosk.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import DataError

REQUIRED = ("fine_id", "id", "display_name", "coarse_name", "aliases", "description")
MAX_DESCRIPTION_SENTENCES = 4  # later sentences are nutrition and packaging boilerplate


@dataclass(frozen=True)
class ProductText:
    fine_id: int
    product_id: str
    canonical: str
    views: tuple[str, ...]  # canonical first


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return [p for p in parts if len(p) > 3][:MAX_DESCRIPTION_SENTENCES]


def product_views(row: dict) -> list[str]:
    name = row["display_name"].strip()
    views = [name, f"a photo of {name}", row["coarse_name"].replace("-", " ").strip()]
    views += [a.strip() for a in row["aliases"].split("|") if a.strip()]
    views += _sentences(row["description"])
    seen, out = set(), []
    for v in views:
        k = v.lower()
        if v and k not in seen:
            seen.add(k)
            out.append(v)
    return out


def read_catalog_texts(path: str | Path, n_fine: int | None = None) -> list[ProductText]:
    """One ``ProductText`` per row of ``catalog.csv``, ordered by fine id, which must run 0..n-1."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"catalogue {path} not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    out: dict[int, ProductText] = {}
    for n, row in enumerate(rows, start=2):
        try:
            fid = int(row["fine_id"])
        except (TypeError, ValueError):
            raise DataError(f"{path}:{n}: fine_id {row.get('fine_id')!r} is not an integer") from None
        if fid in out:
            raise DataError(f"{path}:{n}: fine_id {fid} appears twice")
        if not row["display_name"].strip():
            raise DataError(f"{path}:{n}: empty display_name")
        views = product_views(row)
        out[fid] = ProductText(fid, row["id"].strip(), views[0], tuple(views))
    if sorted(out) != list(range(len(out))):
        raise DataError(f"{path}: fine_id must run 0..{len(out) - 1} without gaps")
    if n_fine is not None and len(out) != n_fine:
        raise DataError(f"{path} lists {len(out)} products but the product model knows {n_fine}")
    return [out[i] for i in range(len(out))]


@dataclass
class TextBank:
    """Every view's embedding, grouped by product."""

    products: list[ProductText]
    vectors: np.ndarray  # (n_views, d), unit rows
    owner: np.ndarray  # (n_views,) fine id of each view

    @property
    def canonical(self) -> np.ndarray:
        first = np.array([np.flatnonzero(self.owner == p.fine_id)[0] for p in self.products])
        return self.vectors[first]

    @property
    def mean_views(self) -> np.ndarray:
        m = np.stack([self.vectors[self.owner == p.fine_id].mean(0) for p in self.products])
        return (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)

    def product_vectors(self, kind: str) -> np.ndarray:
        if kind == "canonical":
            return self.canonical
        if kind == "mean":
            return self.mean_views
        raise DataError(f"unknown text read-out {kind!r} (canonical or mean)")


def embed_views(products: Sequence[ProductText], embed: Callable[[list[str]], np.ndarray]) -> TextBank:
    texts, owner = [], []
    for p in products:
        texts += list(p.views)
        owner += [p.fine_id] * len(p.views)
    v = np.asarray(embed(texts), np.float32)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return TextBank(list(products), v, np.asarray(owner, np.int64))


def read_queries(path: str | Path, products: Sequence[ProductText]) -> tuple[list[str], list[set[int]]]:
    """``query,product_id`` rows; ``product_id`` may list alternatives separated by ``|``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"query file {path} not found")
    by_id = {p.product_id: p.fine_id for p in products}
    queries, gold = [], []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not {"query", "product_id"} <= set(reader.fieldnames or []):
            raise DataError(f"{path}: expected columns query,product_id")
        for n, row in enumerate(reader, start=2):
            ids = [s.strip() for s in (row["product_id"] or "").split("|") if s.strip()]
            unknown = [s for s in ids if s not in by_id]
            if not (row["query"] or "").strip() or not ids or unknown:
                raise DataError(f"{path}:{n}: needs a query and known product ids (unknown: {unknown})")
            queries.append(row["query"].strip())
            gold.append({by_id[s] for s in ids})
    if not queries:
        raise DataError(f"{path} holds no queries")
    return queries, gold
