"""Product recommendations: "something like X", "what goes with X", "a cheaper one".

Similarity is the bundle encoder's cosine over each product's name, category, tags and description,
boosted for products of the same category; "goes with" comes from the catalog's curated ``goes_with``
column (a store knows its pairings better than an embedding does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def _a(obj: Any, name: str, default: Any = None) -> Any:
    return getattr(obj, name, default)


def product_text(p: Any) -> str:
    parts = [_a(p, "display_name") or _a(p, "name") or "", _a(p, "coarse_name") or "", " ".join(_a(p, "tags", ()) or ())]
    desc = _a(p, "description") or ""
    return ". ".join(x for x in parts if x) + (". " + desc[:300] if desc else "")


class Recommender:
    SAME_CATEGORY_BOOST = 0.25

    def __init__(self, products: Sequence[Any], embed: Callable[[list[str]], np.ndarray] | None = None) -> None:
        self.products = list(products)
        self.index = {_a(p, "id"): i for i, p in enumerate(self.products)}
        if embed is not None and self.products:
            self.vectors = np.asarray(embed([product_text(p) for p in self.products]), dtype=np.float32)
        else:
            self.vectors = None

    def _scores(self, i: int) -> np.ndarray:
        n = len(self.products)
        s = self.vectors @ self.vectors[i] if self.vectors is not None else np.zeros(n, dtype=np.float32)
        cat = _a(self.products[i], "coarse_name")
        boost = np.array([self.SAME_CATEGORY_BOOST if _a(p, "coarse_name") == cat else 0.0 for p in self.products])
        out = s + boost
        out[i] = -np.inf
        return out

    def similar(self, pid: str, k: int = 3) -> list[Any]:
        i = self.index.get(pid)
        if i is None:
            return []
        order = np.argsort(-self._scores(i))[:k]
        return [self.products[j] for j in order]

    def goes_with(self, pid: str, k: int = 3) -> list[Any]:
        i = self.index.get(pid)
        if i is None:
            return []
        ids = _a(self.products[i], "goes_with", ()) or ()
        return [self.products[self.index[g]] for g in ids if g in self.index][:k]

    def cheaper(self, pid: str, k: int = 3) -> list[Any]:
        """Products that do the same job for less: same unit, lower price, ranked by similarity."""
        i = self.index.get(pid)
        if i is None:
            return []
        me = self.products[i]
        try:
            price = float(_a(me, "price"))
        except (TypeError, ValueError):
            return []
        scores = self._scores(i)
        cand = []
        for j in np.argsort(-scores):
            p = self.products[j]
            try:
                pj = float(_a(p, "price"))
            except (TypeError, ValueError):
                continue
            if j != i and pj < price and _a(p, "unit") == _a(me, "unit") and scores[j] >= self.SAME_CATEGORY_BOOST:
                cand.append(p)
            if len(cand) >= k:
                break
        return cand
