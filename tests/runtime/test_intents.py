"""The kiosk's intent classifier on a real (tiny) bundle: any input gets a prediction, never an exception."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.intents import MAX_CHARS, IntentClassifier, clean_text

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clf(tiny_bundle):
    return IntentClassifier.from_bundle(tiny_bundle)


@pytest.mark.parametrize("text", [
    "",
    "   \n\t ",
    "x" * 10_000,
    "where is the " + "oat milk " * 2000,
    "🍌🍌🥛❓",
    "¿Dónde está la leche de avena?",
    "牛奶在哪里",
    "где молоко",
    "\x00\x01\x1b[31mred\x7f",
    "caf\udce9 au lait",  # a lone surrogate, as surrogateescape decoding of invalid UTF-8 produces
    b"caf\xe9 \xff\xfe",  # raw bytes that are not UTF-8
    None,
    12345,
])
def test_any_input_gets_a_well_formed_prediction(clf, text):
    p = clf.predict_one(text)
    assert isinstance(p.intent, str) and isinstance(p.out_of_scope, bool)
    assert 0.0 <= p.confidence <= 1.0
    assert p.out_of_scope or p.intent in clf.labels


def test_empty_input_is_out_of_scope_with_no_confidence(clf):
    p = clf.predict_one("   ")
    assert p.out_of_scope and p.confidence == 0.0 and p.intent == "oos"


def test_in_scope_readings_and_alternatives(clf):
    p = clf.predict_one("which aisle has the peanut butter")
    assert p.intent == "find_product" and not p.out_of_scope
    assert len(p.alternatives) == 3 and p.alternatives[0][0] == "find_product"
    assert all(a[0] != "oos" for a in p.alternatives)
    assert p.alternatives[0][1] >= p.alternatives[1][1] >= p.alternatives[2][1]


def test_batch_order_is_preserved_and_matches_single_calls(clf):
    texts = ["hello", "when do you open tomorrow", "", "how much are the bananas", "get me a staff member"]
    batch = clf.predict(texts, with_embedding=True)
    singles = [clf.predict_one(t) for t in texts]
    assert [b.intent for b in batch] == [s.intent for s in singles]
    assert batch[1].intent == "store_hours" and batch[3].intent == "product_price"
    emb = batch[1].embedding
    assert emb.shape == (384,) and abs(float(np.linalg.norm(emb)) - 1.0) < 1e-3


def test_clean_text_caps_and_strips():
    assert len(clean_text("a" * 50_000)) == MAX_CHARS
    assert clean_text("  hi\tthere\n") == "hi there"
    assert clean_text(b"\xff ok") == "\ufffd ok"
