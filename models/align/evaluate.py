"""Retrieval metrics of an image ↔ text alignment, from precomputed unit vectors (torch-free).

Works the same on the torch head's embeddings of cached features and on the deployed ONNX model's
``image_embedding`` output, so the workstation's numbers and the kiosk's can be compared line for line.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.align.head import recall_i2t, recall_sets, recall_t2i

READOUTS = ("canonical", "mean")


def _r(d: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def split_report(img: np.ndarray, y: np.ndarray, text: dict[str, np.ndarray]) -> dict:
    """i2t and t2i recall for each text read-out (``canonical``: display name; ``mean``: all views averaged)."""
    out = {"n": int(len(y))}
    for name, t in text.items():
        out[f"i2t_{name}"] = _r(recall_i2t(img, y, t))
        out[f"t2i_{name}"] = _r(recall_t2i(img, y, t))
    return out


def query_report(q: np.ndarray, gold: list[set[int]], iconic: np.ndarray, text: np.ndarray,
                 photos: np.ndarray | None = None, photo_y: np.ndarray | None = None) -> dict:
    """Descriptive queries (unit vectors from the kiosk's text encoder) against: the products' iconic-picture
    embeddings (text → image through the alignment), the catalogue text itself (text → text, the encoder
    alone: the baseline), both averaged, and (optionally) a set of photos, where a query counts when one of
    its top-k photos shows a gold product."""
    s_img, s_txt = q @ iconic.T, q @ text.T
    out = {"n": len(gold), "iconic_images": _r(recall_sets(s_img, gold)), "catalog_text": _r(recall_sets(s_txt, gold)),
           "images_and_text": _r(recall_sets(0.5 * (s_img + s_txt), gold))}
    if photos is not None and photo_y is not None:
        order = np.argsort(-(q @ photos.T), axis=1)
        out["photos"] = {f"R@{k}": round(float(np.mean([bool(set(photo_y[order[i, :k]].tolist()) & g)
                                                        for i, g in enumerate(gold)])), 4) for k in (1, 5)}
    return out


def classifier_reference(fine_logits: np.ndarray, y: np.ndarray) -> dict:
    """The product classifier's own top-1/top-5 on the same photos (what i2t recall is compared with)."""
    order = np.argsort(-fine_logits, axis=1)
    return {"top1": round(float((order[:, 0] == y).mean()), 4),
            "top5": round(float((order[:, :5] == y[:, None]).any(1).mean()), 4)}


def summary_rows(report: dict, splits: Sequence[str] = ("heldout", "val", "iconic")) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for sp in splits:
        r = report.get(sp)
        if not r:
            continue
        for ro in READOUTS:
            if f"i2t_{ro}" in r:
                a, b = r[f"i2t_{ro}"], r[f"t2i_{ro}"]
                rows.append((f"{sp} ({r['n']} photos), {ro} text", f"{a['R@1']:.3f}", f"{a['R@5']:.3f}",
                             f"{b['R@1']:.3f}", f"{b['R@5']:.3f}"))
    return rows


def format_summary(report: dict) -> str:
    lines = [f"{'':44s} {'i2t R@1':>8s} {'i2t R@5':>8s} {'t2i R@1':>8s} {'t2i R@5':>8s}"]
    lines += [f"{a:44s} {b:>8s} {c:>8s} {d:>8s} {e:>8s}" for a, b, c, d, e in summary_rows(report)]
    if "classifier_val" in report:
        c = report["classifier_val"]
        lines.append(f"{'val, the fine classifier (reference)':44s} {c['top1']:>8.3f} {c['top5']:>8.3f}")
    q = report.get("queries")
    if q:
        lines.append(f"descriptive queries ({q['n']}):{'':20s} {'R@1':>8s} {'R@5':>8s}")
        for k in ("iconic_images", "catalog_text", "images_and_text", "photos"):
            if k in q:
                lines.append(f"  → {k.replace('_', ' '):40s} {q[k]['R@1']:>8.3f} {q[k]['R@5']:>8.3f}")
    return "\n".join(lines)
