"""Out-of-catalogue images for calibrating "I don't recognize this", built offline and deterministically.

A kiosk camera sees hands, sleeves, the counter, half a product, things the store does not sell. None of
that is in the Grocery Store dataset, so the rejection rule is measured on stand-ins of each kind:

* ``patch``   - small crops (3-8 % of the area) of held-out product photos, blown up: texture without an object
* ``tiles``   - a 4x4 jigsaw of pieces of different photos: product colours without a product's shape
* ``foreign`` - random crops of the non-grocery photos that ship inside installed packages (scikit-learn's
                ``china.jpg``/``flower.jpg``), and any extra folder the operator passes
* ``flat``    - smooth noise, solid colours and gradients: a covered or defocused camera

The negatives choose the score (by AUROC against half of them: calibrated max probability, negative energy,
the coarse class's probability, and - when the model carries the image ↔ text alignment - the image
embedding's best cosine to the catalogue text) and set the threshold.

Why the threshold comes from the negatives: the held-out photos are a slice of ``train.txt``, taken in the
same sessions as the photos the backbone was fine-tuned on (near-duplicates; the file numbering is shuffled
within a product, so sessions cannot be split off by name), and the backbone is confidently right on them.
Their 5 % quantile turned away 38 % of the unseen ``val.txt`` photos. The negatives' scores do not depend
on which in-catalogue photos the backbone memorised, so "reject ``min_negatives_rejected`` of the stand-ins"
transfers; the held-out quantile stays only as a cap (never stricter than turning away
``max_in_catalog_rejection`` of held-out photos). The share of new photos rejected is then *measured* on
``val.txt`` (``storeclerk eval products``), not promised.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger("storeclerk.products")

KINDS = ("patch", "tiles", "foreign", "flat")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def packaged_photos() -> list[Path]:
    """Natural non-grocery photos installed with scikit-learn (read only; nothing is downloaded)."""
    try:
        import sklearn
    except ImportError:
        return []
    d = Path(sklearn.__file__).parent / "datasets" / "images"
    return sorted(p for p in d.glob("*.jpg") if p.is_file())


def _load_bgr(path: Path) -> np.ndarray | None:
    from runtime.errors import InputError
    from runtime.vision.images import load_image

    try:
        return load_image(path)
    except InputError as exc:
        log.warning("open-set negatives: skipping %s: %s", path, exc.message)
        return None


def _crop(img: np.ndarray, rng: np.random.Generator, frac_lo: float, frac_hi: float) -> np.ndarray:
    h, w = img.shape[:2]
    side = max(8, int(min(h, w) * np.sqrt(rng.uniform(frac_lo, frac_hi))))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return img[y : y + side, x : x + side]


def negatives(photos_bgr: Sequence[np.ndarray], n_per_kind: int, seed: int = 0, size: int = 256,
              extra_dirs: Sequence[str | os.PathLike[str]] = ()) -> tuple[list[np.ndarray], list[str]]:
    """(BGR uint8 images, their kinds). ``photos_bgr``: held-out in-catalogue photos to cut patches/tiles from."""
    import cv2

    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    kinds: list[str] = []

    def add(img: np.ndarray, kind: str) -> None:
        out.append(np.ascontiguousarray(cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)))
        kinds.append(kind)

    if photos_bgr:
        for _ in range(n_per_kind):
            add(_crop(photos_bgr[int(rng.integers(len(photos_bgr)))], rng, 0.03, 0.08), "patch")
        for _ in range(n_per_kind):
            t = size // 4
            canvas = np.zeros((size, size, 3), np.uint8)
            for r in range(4):
                for c in range(4):
                    src = photos_bgr[int(rng.integers(len(photos_bgr)))]
                    canvas[r * t : (r + 1) * t, c * t : (c + 1) * t] = cv2.resize(_crop(src, rng, 0.02, 0.06), (t, t))
            add(canvas, "tiles")
    foreign_files = list(packaged_photos())
    for d in extra_dirs:
        foreign_files += sorted(p for p in Path(d).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    foreign = [img for img in (_load_bgr(p) for p in foreign_files) if img is not None]
    if foreign:
        for _ in range(n_per_kind):
            add(_crop(foreign[int(rng.integers(len(foreign)))], rng, 0.05, 0.6), "foreign")
    for i in range(n_per_kind):
        mode = i % 3
        if mode == 0:
            small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            img = cv2.GaussianBlur(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC), (0, 0), 6)
        elif mode == 1:
            img = np.full((size, size, 3), rng.integers(0, 256, 3), np.uint8)
            img = np.clip(img.astype(np.int16) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
        else:
            a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            t = np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
            img = np.repeat((a * (1 - t) + b * t).astype(np.uint8), size, axis=0)
        add(img, "flat")
    return out, kinds


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a random in-catalogue image > score of a random negative); ties count half."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    ranks[order] = np.arange(1, len(allv) + 1)
    # Average ranks over ties.
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def fit_rule(in_scores: dict[str, np.ndarray], neg_scores: dict[str, np.ndarray], neg_kinds: Sequence[str],
             max_in_catalog_rejection: float, correct: np.ndarray | None = None,
             min_negatives_rejected: float | None = None, score: str | None = None) -> dict:
    """Pick the score with the best AUROC on the negatives' first half and set its threshold, then report
    rejection rates per negative kind on the second half (not used for any choice).

    Threshold: with ``min_negatives_rejected`` (the transferable rule, see the module docstring), the score
    below which that share of the first-half negatives falls, capped at the ``max_in_catalog_rejection``
    quantile of the held-out photos; without it (the old rule), that quantile alone. ``score``: use this score
    instead of the best AUROC one (the AUROCs are reported either way)."""
    if not 0.0 <= max_in_catalog_rejection < 0.5:
        raise ValueError(f"max_in_catalog_rejection must be in [0, 0.5), got {max_in_catalog_rejection}")
    if min_negatives_rejected is not None and not 0.5 <= min_negatives_rejected < 1.0:
        raise ValueError(f"min_negatives_rejected must be in [0.5, 1), got {min_negatives_rejected}")
    kinds = np.asarray(neg_kinds)
    n = len(kinds)
    fit_half = np.zeros(n, bool)
    for k in set(neg_kinds):  # alternate within each kind so both halves hold every kind
        idx = np.flatnonzero(kinds == k)
        fit_half[idx[::2]] = True
    choice = {name: auroc(s, neg_scores[name][fit_half]) for name, s in in_scores.items()}
    if score is not None and score not in in_scores:
        raise ValueError(f"open-set score {score!r} is not among the computed scores {sorted(in_scores)}")
    best = score or max(choice, key=lambda k: (np.nan_to_num(choice[k], nan=-1.0), k == "max_prob"))
    s_in, s_neg = in_scores[best], neg_scores[best]
    cap = float(np.quantile(s_in, max_in_catalog_rejection)) if len(s_in) else float("-inf")
    thr, bound = cap, "held-out quantile"
    if min_negatives_rejected is not None and fit_half.any():
        by_neg = float(np.quantile(s_neg[fit_half], min_negatives_rejected))
        if by_neg < cap:
            thr, bound = by_neg, "negatives"
        rule = (f"unknown when the {best} score is below the level that rejects {min_negatives_rejected:.0%} of the "
                f"fitting half of the out-of-catalogue stand-ins, but never above the {max_in_catalog_rejection:.0%} "
                "quantile of held-out in-catalogue photos")
    else:
        rule = (f"unknown when the {best} score is below the {max_in_catalog_rejection:.0%} quantile of held-out "
                "in-catalogue photos")
    test = ~fit_half
    rej = s_neg < thr
    report = {
        "score": best,
        "score_chosen_by": "given" if score else "best AUROC on the fitting half",
        "threshold": thr,
        "rule": rule,
        "threshold_set_by": bound,
        "held_out_quantile_threshold": cap,
        "min_negatives_rejected": min_negatives_rejected,
        "max_in_catalog_rejection": max_in_catalog_rejection,
        "auroc_fit_half": {k: round(v, 4) for k, v in choice.items()},
        "in_catalog_rejected": round(float((s_in < thr).mean()), 4) if len(s_in) else None,
        "negatives_rejected": round(float(rej[test].mean()), 4) if test.any() else None,
        "negatives_rejected_by_kind": {k: round(float(rej[test & (kinds == k)].mean()), 4)
                                       for k in sorted(set(neg_kinds)) if (test & (kinds == k)).any()},
        "auroc_report_half": round(auroc(s_in, s_neg[test]), 4) if test.any() else None,
        "n_in_catalog": int(len(s_in)),
        "n_negatives": int(n),
    }
    if correct is not None and len(correct):
        accepted = s_in >= thr
        report["accuracy_accepted"] = round(float(correct[accepted].mean()), 4) if accepted.any() else None
        report["wrong_rejected"] = round(float((~accepted[~correct]).mean()), 4) if (~correct).any() else None
    return report
