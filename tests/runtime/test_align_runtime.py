"""``runtime.vision.align.CatalogMatcher`` (torch-free): ranking, bad input, construction from text, and the
real exported models when a bundle with the alignment is present (``build/bundle-align`` while developing,
the kiosk bundle once it carries it)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
KB = REPO / "data" / "kb"
CANDIDATES = (REPO / "models" / "bundles" / "kiosk", REPO / "build" / "bundle-align")


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@pytest.fixture
def toy():
    from runtime.vision.align import CatalogMatcher

    rng = np.random.default_rng(0)
    text = _unit(rng.normal(size=(6, 8)))
    image = _unit(text + rng.normal(scale=0.3, size=text.shape))
    return CatalogMatcher([f"p{i}" for i in range(6)], [f"Product {i}" for i in range(6)], text, image), text, image


def test_match_image_and_search_text_rank_by_cosine(toy):
    m, text, image = toy
    for i in range(6):
        q = text[i] * 3.0  # unnormalised input is fine
        hits = m.search_text(q, k=6)
        want = np.argsort(-(image @ text[i]))
        assert [h.fine_id for h in hits] == want.tolist()
        assert hits[0].score == pytest.approx(float(image[want[0]] @ text[i]), abs=1e-6)
        got = m.match_image(image[i][None], k=3)
        assert [g.fine_id for g in got] == np.argsort(-(text @ image[i]))[:3].tolist()
        assert got[0].product_id == f"p{got[0].fine_id}" and got[0].label == f"Product {got[0].fine_id}"
        assert [g.score for g in got] == sorted([g.score for g in got], reverse=True)
    assert json.loads(json.dumps(got[0].as_dict()))["product_id"] == got[0].product_id


@pytest.mark.parametrize("vec, k, message", [
    (None, 3, "is None"),
    (np.zeros(8), 3, "zero vector"),
    (np.ones(5), 3, "one vector of 8"),
    (np.ones((2, 8)), 3, "one vector of 8"),
    (np.full(8, np.nan), 3, "NaN"),
    (np.ones(8), 0, "k must be between 1 and 6"),
    (np.ones(8), 7, "k must be between 1 and 6"),
])
def test_bad_queries_are_input_errors(toy, vec, k, message):
    from runtime.errors import InputError

    m, *_ = toy
    with pytest.raises(InputError, match=message):
        m.match_image(vec, k=k)


def test_bad_vectors_are_bundle_errors_and_pictures_are_optional(toy):
    from runtime.errors import BundleError, InputError
    from runtime.vision.align import CatalogMatcher

    _, text, _ = toy
    with pytest.raises(BundleError, match="zero vectors"):
        CatalogMatcher(list("abcdef"), list("abcdef"), np.vstack([text[:5], np.zeros((1, 8))]))
    with pytest.raises(BundleError, match="5 text vectors for 6 products"):
        CatalogMatcher(list("abcdef"), list("abcdef"), text[:5])
    with pytest.raises(BundleError, match="unique"):
        CatalogMatcher(list("abcdea"), list("abcdef"), text)
    m = CatalogMatcher(list("abcdef"), list("abcdef"), text)
    with pytest.raises(InputError, match="no product pictures"):
        m.search_text(text[0])


def test_from_texts_embeds_each_view_once_and_averages():
    from runtime.errors import InputError
    from runtime.vision.align import CatalogMatcher

    rng = np.random.default_rng(1)
    vocab: dict[str, np.ndarray] = {}
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return np.stack([vocab.setdefault(t, _unit(rng.normal(size=8))) for t in texts])

    views = [["apple", "green apple"], ["oat drink"], ["milk", "whole milk", "cow milk"]]
    m = CatalogMatcher.from_texts(["a", "o", "m"], ["Apple", "Oat", "Milk"], views, embed)
    assert len(calls) == 1 and calls[0] == [t for v in views for t in v]
    assert np.allclose(m.text_sets()["canonical"][2], vocab["milk"])
    mean = _unit(np.mean([vocab[t] for t in views[2]], axis=0))
    assert np.allclose(m.text_vectors[2], mean, atol=1e-6) and m.readout == "mean"
    assert m.match_image(vocab["oat drink"], k=1)[0].product_id == "o"
    with pytest.raises(InputError, match="at least one non-empty text"):
        CatalogMatcher.from_texts(["a"], ["A"], [["  "]], embed)


# --- real models -------------------------------------------------------------------------------------------


def _aligned_bundle() -> Path:
    for c in CANDIDATES:
        man = c / "manifest.json"
        if man.is_file() and "align" in json.loads(man.read_text()).get("models", {}).get("products", {}):
            return c
    pytest.skip("no bundle with an aligned product model (export one with python -m export.products --align)")


@pytest.fixture(scope="module")
def aligned():
    from runtime.embedder import SentenceEmbedder
    from runtime.engine import Engine
    from runtime.vision.products import ProductRecognizer

    engine = Engine(_aligned_bundle(), providers=["cpu"])
    yield ProductRecognizer(engine), SentenceEmbedder(engine)
    engine.close()


def test_real_model_matches_catalog_pictures_to_their_text(aligned):
    import cv2

    rec, _ = aligned
    with open(KB / "catalog.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    preds = rec.predict([cv2.imread(str(KB / "images" / r["image"])) for r in rows])
    hits = [int(r["fine_id"]) in [m.fine_id for m in rec.matcher.match_image(p.embedding, k=5)]
            for p, r in zip(preds, rows, strict=True)]
    # The pictures were never trained on (studio shots, not shop photos): well above chance (5/81), not perfect.
    assert np.mean(hits) > 0.6, np.mean(hits)


def test_real_model_finds_products_by_their_names(aligned):
    rec, embedder = aligned
    names = [rec.matcher.labels[i] for i in range(len(rec.matcher.labels))]
    q = embedder.embed(names)
    top5 = [i in [m.fine_id for m in rec.matcher.search_text(q[i], k=5)] for i in range(len(names))]
    assert np.mean(top5) > 0.6, np.mean(top5)
