"""Parity: each exported variant against the torch model on held-out texts.

A variant that fails its bounds is not written to the bundle; the numbers are printed either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Bounds per precision: mean cosine of the sentence embedding, agreement of the top intent with torch.
BOUNDS = {
    "fp32": {"mean_cosine": 0.9999, "agreement": 0.999},
    "fp16": {"mean_cosine": 0.999, "agreement": 0.99},
    "int8": {"mean_cosine": 0.99, "agreement": 0.98},
}
# Task accuracy may drop by at most this many points (or two examples on a tiny held-out set).
MAX_ACCURACY_DROP = 0.5


@dataclass
class ParityReport:
    variant: str
    n: int
    mean_cosine: float = float("nan")
    min_cosine: float = float("nan")
    max_abs_diff_embedding: float = float("nan")
    max_abs_diff_logits: float = float("nan")
    agreement: float = float("nan")
    accuracy: float = float("nan")
    torch_accuracy: float = float("nan")
    passed: bool = False
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def ort_outputs(path: Path, ids_mask: Sequence[tuple[np.ndarray, np.ndarray]], threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # fp16 graphs make ORT warn about every constant it cannot fold on CPU
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    embs, logits = [], []
    for ids, mask in ids_mask:
        e, lg = sess.run(["embedding", "logits"], {"input_ids": ids, "attention_mask": mask})
        embs.append(e)
        logits.append(lg)
    return np.concatenate(embs), np.concatenate(logits)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` with the same row of ``b`` (a zero row counts as orthogonal, not NaN)."""
    na = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    nb = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (na * nb).sum(1)


def compare(variant: str, ref_emb: np.ndarray, ref_logits: np.ndarray, emb: np.ndarray, logits: np.ndarray,
            y: np.ndarray | None) -> ParityReport:
    r = ParityReport(variant, len(ref_emb))
    cos = row_cosines(ref_emb, emb)
    r.mean_cosine, r.min_cosine = float(cos.mean()), float(cos.min())
    r.max_abs_diff_embedding = float(np.abs(ref_emb - emb).max())
    r.max_abs_diff_logits = float(np.abs(ref_logits - logits).max())
    r.agreement = float((ref_logits.argmax(1) == logits.argmax(1)).mean())
    bounds = BOUNDS[variant]
    if r.mean_cosine < bounds["mean_cosine"]:
        r.problems.append(f"mean cosine {r.mean_cosine:.5f} < {bounds['mean_cosine']}")
    if r.agreement < bounds["agreement"]:
        r.problems.append(f"top-intent agreement {r.agreement:.4f} < {bounds['agreement']}")
    if y is not None and len(y):
        r.accuracy = float((logits.argmax(1) == y).mean())
        r.torch_accuracy = float((ref_logits.argmax(1) == y).mean())
        drop = 100 * (r.torch_accuracy - r.accuracy)
        allowed = max(MAX_ACCURACY_DROP, 100 * 2 / len(y))
        if drop > allowed:
            r.problems.append(f"accuracy drop {drop:.2f} points > {allowed:.2f}")
    r.passed = not r.problems
    return r
