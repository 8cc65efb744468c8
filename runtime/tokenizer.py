"""Tokenisation shared by training, export and the kiosk: the same `tokenizers` file everywhere (no transformers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_LENGTH = 128


def load_tokenizer(path: Path, max_length: int = MAX_LENGTH):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok


def encode_batches(tok, texts: list[str], size: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    """``texts`` in order, as padded batches of at most ``size``."""
    return [encode_batch(tok, list(texts[s : s + size])) for s in range(0, len(texts), size)]


def encode_batch(tok, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encs = tok.encode_batch(texts)
    width = max(1, max(len(e.ids) for e in encs))
    ids = np.zeros((len(encs), width), dtype=np.int64)
    mask = np.zeros((len(encs), width), dtype=np.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return ids, mask
