"""Evaluation of an intent bundle on labelled data, through the kiosk's own (torch-free) classifier."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

import numpy as np

from models.data import Example

NO_INTENT = "<out_of_scope>"  # what an out-of-scope prediction is called when the data has no oos label


def per_class_report(gold: Sequence[str], pred: Sequence[str]) -> dict[str, dict]:
    labels = sorted(set(gold) | set(pred))
    tp, fp, fn = Counter(), Counter(), Counter()
    for g, p in zip(gold, pred, strict=True):
        if g == p:
            tp[g] += 1
        else:
            fp[p] += 1
            fn[g] += 1
    support = Counter(gold)
    out = {}
    for lab in labels:
        prec = tp[lab] / (tp[lab] + fp[lab]) if tp[lab] + fp[lab] else 0.0
        rec = tp[lab] / (tp[lab] + fn[lab]) if tp[lab] + fn[lab] else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out[lab] = {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4), "support": support[lab]}
    return out


def evaluate(classifier, examples: Sequence[Example], oos_label: str | None = None, timing_rows: int = 500) -> dict:
    texts = [e.text for e in examples]
    gold = [e.label for e in examples]
    preds = classifier.predict(texts) if texts else []
    out_name = oos_label or classifier.oos_label or NO_INTENT
    pred = [out_name if p.out_of_scope else p.intent for p in preds]

    # Latency as the kiosk sees it: one utterance at a time (batch 1), after one warm-up call.
    lat = []
    if texts:
        classifier.predict([texts[0]])
        for t in texts[: min(len(texts), timing_rows)]:
            t0 = time.perf_counter()
            classifier.predict([t])
            lat.append((time.perf_counter() - t0) * 1000)

    n = len(examples)
    report = per_class_report(gold, pred)
    correct = np.array([g == p for g, p in zip(gold, pred, strict=True)], dtype=bool)
    res = {
        "n": n,
        "accuracy": round(float(correct.mean()) if n else 0.0, 4),
        "macro_f1": round(float(np.mean([r["f1"] for r in report.values()])) if report else 0.0, 4),
        "latency_ms_p50": round(float(np.median(lat)), 3) if lat else 0.0,
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 3) if lat else 0.0,
        "per_class": report,
        "unseen_labels": sorted(set(gold) - set(classifier.labels) - {oos_label}),
    }
    if oos_label:
        is_oos = np.array([g == oos_label for g in gold])
        said_oos = np.array([p == oos_label for p in pred])
        res["in_scope_accuracy"] = round(float(correct[~is_oos].mean()) if (~is_oos).any() else 0.0, 4)
        res["oos_recall"] = round(float(said_oos[is_oos].mean()) if is_oos.any() else 0.0, 4)
        res["oos_precision"] = round(float(is_oos[said_oos].mean()) if said_oos.any() else 0.0, 4)
    confusions = Counter((g, p) for g, p in zip(gold, pred, strict=True) if g != p)
    res["worst_confusions"] = [{"gold": g, "predicted": p, "count": c} for (g, p), c in confusions.most_common(10)]
    return res
