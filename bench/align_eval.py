"""Open-set study on cached features: which rejection score and which threshold rule transfer to unseen photos.

    python bench/align_eval.py --data ../shared/data/grocery/dataset [--head build/align/head.pt] [--json]

Uses the torch (fp32) product heads and alignment head on the backbone features cached by
``storeclerk train align`` (``build/align/features.npz``; rebuilt if stale), the catalogue text embedded with
the kiosk bundle's retrieval encoder, and the open-set stand-ins of ``models/products/openset.py`` cut from
the held-out photos. For every score (calibrated max probability, negative energy, coarse probability,
aligned text similarity) and two threshold rules

* ``held-out 5 %``  - the old rule: the 5 % quantile of the held-out photos' scores;
* ``negatives 90 %`` - the new rule: the score rejecting 90 % of the fitting half of the stand-ins, capped at
  the held-out 5 % quantile;

it prints the share of held-out and of ``val.txt`` photos turned away, the accuracy on accepted val photos,
the share of the *other* half of the stand-ins rejected, and AUROCs. The deployed numbers (INT8, through the
kiosk's runtime) come from ``storeclerk eval products`` on the exported bundle; this is the design study.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCORES = ("max_prob", "neg_energy", "coarse_prob", "text_sim")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--checkpoint", default="build/products/checkpoint.pt")
    ap.add_argument("--head", default="build/align/head.pt")
    ap.add_argument("--features", default="build/align/features.npz")
    ap.add_argument("--text-bundle", default="models/bundles/kiosk")
    ap.add_argument("--catalog", default="data/kb/catalog.csv")
    ap.add_argument("--max-in-catalog-rejection", type=float, default=0.05)
    ap.add_argument("--min-negatives-rejected", type=float, default=0.9)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from models.align import features as F
    from models.align.head import image_embeddings, load_head
    from models.align.texts import embed_views, read_catalog_texts
    from models.calibrate import fit_temperature
    from models.products.openset import auroc
    from models.products.train import ProductCheckpoint
    from runtime.embedder import SentenceEmbedder
    from runtime.vision.products import open_set_score

    torch.set_num_threads(1)
    cache = F.compute(Path(args.checkpoint), Path(args.data), Path(args.features), progress=False,
                      say=lambda m: print(m, file=sys.stderr))
    ckpt = ProductCheckpoint.load(args.checkpoint)
    head, _ = load_head(args.head)
    bank = embed_views(read_catalog_texts(args.catalog, ckpt.catalog.n_fine), SentenceEmbedder.from_bundle(args.text_bundle).embed)
    text = bank.product_vectors("mean")
    held_logits = F.head_logits(ckpt.state_dict, cache.feats["heldout"])[0].astype(np.float64)
    temperature = fit_temperature(held_logits, cache.labels["heldout"])  # as the export fits it
    f2c = dict(fine_to_coarse=ckpt.catalog.fine_to_coarse, n_coarse=ckpt.catalog.n_coarse)
    scores, correct = {}, {}
    for sp in ("heldout", "val", "negatives", "iconic"):
        x = cache.feats[sp]
        fine = F.head_logits(ckpt.state_dict, x)[0].astype(np.float64)
        sims = image_embeddings(head, x) @ text.T
        scores[sp] = {k: open_set_score(fine, temperature, k, **f2c, text_sims=sims) for k in SCORES}
        if sp != "negatives":
            correct[sp] = fine.argmax(1) == cache.labels[sp]
    kinds = np.array(cache.neg_kinds)
    fit_half = np.zeros(len(kinds), bool)
    for k in set(kinds.tolist()):
        fit_half[np.flatnonzero(kinds == k)[::2]] = True
    rows = []
    for s in SCORES:
        h, v, n = scores["heldout"][s], scores["val"][s], scores["negatives"][s]
        cap = float(np.quantile(h, args.max_in_catalog_rejection))
        rules = {"held-out 5%": cap,
                 "negatives 90%": min(cap, float(np.quantile(n[fit_half], args.min_negatives_rejected)))}
        for rule, thr in rules.items():
            acc = v >= thr
            rows.append({"score": s, "rule": rule, "threshold": round(thr, 4),
                         "heldout_rejected": round(float((h < thr).mean()), 4),
                         "val_rejected": round(float((~acc).mean()), 4),
                         "val_accuracy_accepted": round(float(correct["val"][acc].mean()), 4) if acc.any() else None,
                         "val_wrong_rejected": round(float((~acc)[~correct["val"]].mean()), 4),
                         "iconic_rejected": round(float((scores["iconic"][s] < thr).mean()), 4),
                         "negatives_rejected_report_half": round(float((n[~fit_half] < thr).mean()), 4),
                         "auroc_heldout_vs_fit_half": round(auroc(h, n[fit_half]), 4),
                         "auroc_val_vs_negatives": round(auroc(v, n), 4)})
    out = {"temperature": round(float(temperature), 4), "val_accuracy": round(float(correct["val"].mean()), 4),
           "n": {sp: int(len(scores[sp]["max_prob"])) for sp in scores}, "rows": rows}
    hdr = (f"{'score':12s} {'rule':14s} {'thr':>7s} {'held rej':>9s} {'val rej':>8s} {'val acc|acc':>11s} "
           f"{'icon rej':>9s} {'neg rej':>8s} {'AUROC h/n':>9s} {'AUROC v/n':>9s}")
    print(hdr, file=sys.stderr)
    for r in rows:
        print(f"{r['score']:12s} {r['rule']:14s} {r['threshold']:7.3f} {r['heldout_rejected']:9.3f} "
              f"{r['val_rejected']:8.3f} {r['val_accuracy_accepted']:11.3f} {r['iconic_rejected']:9.3f} "
              f"{r['negatives_rejected_report_half']:8.3f} {r['auroc_heldout_vs_fit_half']:9.3f} "
              f"{r['auroc_val_vs_negatives']:9.3f}", file=sys.stderr)
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
