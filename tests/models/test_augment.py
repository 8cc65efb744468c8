"""Typing-noise augmentation: small, reproducible edits; labels and originals untouched."""

from __future__ import annotations

import random

from models.augment import typo, with_typos
from models.data import Example


def test_typo_is_one_small_edit():
    rng = random.Random(3)
    outs = [typo("where is the oat milk", rng) for _ in range(200)]
    assert all(abs(len(o) - len("where is the oat milk")) <= 1 and o[0] == "w" for o in outs)
    # Nearly every call changes the text (a swap of two equal letters is the only no-op).
    assert sum(o != "where is the oat milk" for o in outs) >= 190


def test_short_text_is_left_alone():
    assert typo("hi", random.Random(0)) == "hi"


def test_with_typos_adds_noisy_copies_only_for_in_scope_rows():
    rows = [Example(f"please cancel order number {i}", "cancel_order") for i in range(200)]
    rows += [Example(f"what is the weather like in city {i}", "oos") for i in range(50)]
    out = with_typos(rows, 0.25, seed=1, skip_label="oos")
    assert out[: len(rows)] == rows
    extra = out[len(rows) :]
    assert 30 <= len(extra) <= 70
    assert all(e.label == "cancel_order" and e.text not in {r.text for r in rows} for e in extra)
    assert with_typos(rows, 0.25, seed=1, skip_label="oos") == out
