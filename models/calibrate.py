"""Calibration and the out-of-scope decision, fitted on a held-out calibration split (numpy only).

Nothing here is picked by hand: the temperature minimises negative log-likelihood on the calibration
split, and the out-of-scope threshold is fitted there too.

The out-of-scope score is the highest in-scope logit, i.e. the cosine between the utterance and the
nearest in-scope class vector (the head is a cosine classifier). On CLINC150's validation split it
separates out-of-scope better than the softmax probability (true-positive rate 0.93 vs 0.82 at 2% of
in-scope rejected, AUROC 0.988 vs 0.986).

The threshold is the ``max_in_scope_rejection`` quantile (default 1%) of the in-scope calibration scores:
the kiosk may say "I'm not sure" to at most about 1 in 100 questions it could answer, and everything
below that is rejected. The out-of-scope rows train the ``oos`` class and measure the recall this rule
reaches on the calibration split (reported; a warning is logged when it is low). Youden's J is reported
too but not used: fitted on the few out-of-scope rows a data set has (CLINC150: 30 in the calibration
split), it swung between rejecting 1% and 3% of in-scope rows from one training run to the next, because
catching one more out-of-scope row is worth as much as wrongly rejecting ~50 in-scope ones.
"""

from __future__ import annotations

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, t: float) -> float:
    p = softmax(logits / t)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """Golden-section search on log T: NLL is unimodal in T for a fixed model."""
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(60):
        if nll(logits, y, np.exp(c)) < nll(logits, y, np.exp(d)):
            b = d
        else:
            a = c
        c, d = b - g * (b - a), a + g * (b - a)
    return float(np.exp((a + b) / 2))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def in_scope_confidence(probs: np.ndarray, oos_index: int | None) -> np.ndarray:
    """Highest probability of any in-scope label: low means the model knows no intent that fits."""
    if oos_index is None:
        return probs.max(1)
    p = probs.copy()
    p[:, oos_index] = -1.0
    return p.max(1)


def max_in_scope_logit(logits: np.ndarray, oos_index: int | None) -> np.ndarray:
    """The out-of-scope score: highest in-scope logit (scale × cosine to the nearest class vector)."""
    if oos_index is None:
        return logits.max(1)
    z = logits.copy()
    z[:, oos_index] = -np.inf
    return z.max(1)


def fit_oos_threshold(conf: np.ndarray, is_oos: np.ndarray, max_in_scope_rejection: float = 0.01) -> tuple[float, dict]:
    """Threshold on the score: the in-scope rejection quantile (see the module doc)."""
    if is_oos.all() or not is_oos.any():
        return float("-inf"), {"note": "calibration split lacks in-scope or out-of-scope rows; no threshold"}
    if not 0.0 <= max_in_scope_rejection < 0.5:
        raise ValueError(f"max_in_scope_rejection must be in [0, 0.5), got {max_in_scope_rejection}")
    thr = float(np.quantile(conf[~is_oos], max_in_scope_rejection))
    youden, stats = _youden(conf, is_oos)
    rej = conf < thr
    return thr, {"rule": "in-scope rejection quantile", "max_in_scope_rejection": max_in_scope_rejection,
                 "oos_recall": float(rej[is_oos].mean()), "in_scope_rejected": float(rej[~is_oos].mean()),
                 "youden_threshold_not_used": youden, "youden": stats}


def _youden(conf: np.ndarray, is_oos: np.ndarray) -> tuple[float, dict]:
    cands = np.unique(conf)
    # Midpoints between observed scores, so the threshold does not sit exactly on a sample.
    mids = (cands[:-1] + cands[1:]) / 2 if len(cands) > 1 else cands
    best_t, best_j, best = float(mids[0]), -1.0, {}
    for t in mids:
        rej = conf < t
        tpr = rej[is_oos].mean()
        fpr = rej[~is_oos].mean()
        if tpr - fpr > best_j:
            best_t, best_j, best = float(t), float(tpr - fpr), {"oos_recall": float(tpr), "in_scope_rejected": float(fpr)}
    return best_t, {"youden_j": best_j, **best}
