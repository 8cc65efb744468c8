"""Evaluate a bundle's product model on a labelled list (numpy + ONNX Runtime through the kiosk's own
``ProductRecognizer``: what is measured is what the kiosk runs, preprocessing included)."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np

from models.products.data import Item, load_item_image
from runtime.errors import DataError


def evaluate(rec, items: Sequence[Item], latency_runs: int = 50) -> dict:
    from runtime.vision.products import BATCH, preprocess

    if len(rec.fine_labels) <= max(i.fine for i in items):
        raise DataError(f"the list uses fine ids up to {max(i.fine for i in items)} but the model knows "
                        f"{len(rec.fine_labels)} products")
    frames = [load_item_image(it) for it in items]
    preds = []
    for s in range(0, len(frames), BATCH):
        preds += rec.predict(frames[s : s + BATCH], top_k=min(5, len(rec.fine_labels)))
    y = np.array([i.fine for i in items])
    yc = np.array([i.coarse for i in items])
    top1 = np.array([p.fine_id for p in preds])
    top5 = [[g.fine_id for g in p.top_k] for p in preds]
    cpred = np.array([p.coarse_id for p in preds])
    unknown = np.array([p.unknown for p in preds])
    correct = top1 == y
    # Per-frame latency as the kiosk pays it: preprocessing + one batch-1 inference + the decision.
    times = []
    sample = frames[: max(1, min(len(frames), 10))]
    for k in range(latency_runs + 5):
        t0 = time.perf_counter()
        rec.predict_one(sample[k % len(sample)])
        if k >= 5:
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    model_times = []
    x1 = preprocess(sample[0], rec.preprocess_params)[None]
    for _ in range(latency_runs):
        t0 = time.perf_counter()
        rec.logits(x1)
        model_times.append((time.perf_counter() - t0) * 1000)
    confusions = Counter((rec.fine_labels[a], rec.fine_labels[b]) for a, b in zip(y, top1, strict=True) if a != b)
    per_class = {}
    for fid in sorted(set(y.tolist())):
        sel = y == fid
        per_class[rec.fine_labels[fid]] = {"accuracy": round(float(correct[sel].mean()), 4), "support": int(sel.sum())}
    accepted = ~unknown
    return {
        "n": int(len(items)),
        "accuracy": round(float(correct.mean()), 4),
        "coarse_accuracy": round(float((cpred == yc).mean()), 4),
        "top5_accuracy": round(float(np.mean([t in row for t, row in zip(y, top5, strict=True)])), 4),
        "macro_accuracy": round(float(np.mean([v["accuracy"] for v in per_class.values()])), 4),
        "unknown_rate": round(float(unknown.mean()), 4),
        "accuracy_when_accepted": round(float(correct[accepted].mean()), 4) if accepted.any() else None,
        "wrong_rejected": round(float(unknown[~correct].mean()), 4) if (~correct).any() else None,
        "latency_ms_p50": round(statistics.median(times), 3),
        "latency_ms_p95": round(times[int(0.95 * (len(times) - 1))], 3),
        "model_latency_ms_p50": round(statistics.median(model_times), 3),
        "provider": getattr(rec.runner, "provider", "?"),
        "model_file": getattr(getattr(rec.runner, "model_path", None), "name", None),
        "input_size": int(rec.preprocess_params["size"]),
        "per_class": per_class,
        "worst_confusions": [{"gold": g, "predicted": p, "count": c} for (g, p), c in confusions.most_common(10)],
    }
