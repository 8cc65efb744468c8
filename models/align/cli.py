"""``storeclerk train align`` / ``storeclerk eval align``: argument parsing, progress, summary table.

    train_align_main(["--data", D, "--checkpoint", "build/products/checkpoint.pt", "--out", "build/align/head.pt"])
    eval_align_main(["--data", D, "--checkpoint", "build/products/checkpoint.pt", "--out", "build/align/head.pt", "--json"])
    eval_align_main(["--data", D, "--model", "build/bundle-align", "--json"])   # the exported INT8 model, as the kiosk runs it

``--out`` is the alignment head file (written by train, read by eval). Both print a summary table on stderr
and, with ``--json``, one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from runtime.errors import StoreclerkError

log = logging.getLogger("storeclerk.align")

DEFAULT_CHECKPOINT = "build/products/checkpoint.pt"
DEFAULT_HEAD = "build/align/head.pt"
DEFAULT_FEATURES = "build/align/features.npz"
DEFAULT_TEXT_BUNDLE = "models/bundles/kiosk"
DEFAULT_CATALOG = "data/kb/catalog.csv"
DEFAULT_QUERIES = "data/eval/product_descriptions.csv"


def _common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data", required=True, help="Grocery Store dataset directory (classes.csv, train.txt, val.txt)")
    ap.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="product checkpoint (its backbone is frozen)")
    ap.add_argument("--out", default=DEFAULT_HEAD, help=f"alignment head file (default {DEFAULT_HEAD})")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--text-bundle", default=DEFAULT_TEXT_BUNDLE,
                    help="bundle whose 'retrieval' model embeds the text (the kiosk's own encoder)")
    ap.add_argument("--catalog", default=DEFAULT_CATALOG, help="catalogue CSV with display names, aliases, descriptions")
    ap.add_argument("--queries", default=DEFAULT_QUERIES, help="descriptive queries CSV (query,product_id)")
    ap.add_argument("--features", default=DEFAULT_FEATURES, help="backbone feature cache (rebuilt when stale)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--no-progress", action="store_true")


def _say(t0: float, quiet: bool = False):
    return (lambda m: None) if quiet else (lambda m: print(f"{time.perf_counter() - t0:6.1f}s {m}", file=sys.stderr))


def _embedder(bundle: str):
    from runtime.bundle import sha256_file
    from runtime.embedder import SentenceEmbedder

    emb = SentenceEmbedder.from_bundle(bundle)
    spec = emb.engine.bundle.models["retrieval"]
    v = spec.pick_variant(["int8", "fp32"])
    prov = {"bundle": str(bundle), "model": "retrieval", "file": v.file,
            "sha256": sha256_file(Path(emb.engine.bundle.root) / v.file),
            "base_model": spec.extra.get("base_model")}
    return emb, prov


def _prepare(args, say):
    import torch

    from models.align import features as F
    from models.align.texts import embed_views, read_catalog_texts, read_queries

    torch.set_num_threads(max(1, args.threads))
    cache = F.compute(Path(args.checkpoint), Path(args.data), Path(args.features), progress=not args.no_progress, say=say)
    n_fine = int(cache.labels["iconic"].max()) + 1
    products = read_catalog_texts(args.catalog, n_fine)
    emb, prov = _embedder(args.text_bundle)
    bank = embed_views(products, emb.embed)
    queries, gold = read_queries(args.queries, products)
    qv = emb.embed(queries)
    say(f"text: {len(bank.vectors)} views of {len(products)} products, {len(queries)} descriptive queries")
    return cache, products, bank, (queries, gold, qv), prov


def full_report(embed_fn, cache, bank, queries, fine_logits_fn=None) -> dict:
    from models.align.evaluate import classifier_reference, query_report, split_report

    text = {"canonical": bank.canonical, "mean": bank.mean_views}
    rep = {}
    emb = {}
    for sp in ("heldout", "val", "iconic"):
        emb[sp] = embed_fn(cache.feats[sp])
        rep[sp] = split_report(emb[sp], cache.labels[sp], text)
    if fine_logits_fn is not None:
        rep["classifier_val"] = classifier_reference(fine_logits_fn(cache.feats["val"]), cache.labels["val"])
    _, gold, qv = queries
    rep["queries"] = query_report(qv, gold, emb["iconic"], bank.mean_views, emb["val"], cache.labels["val"])
    return rep, emb


def train_align_main(argv: list[str] | None = None) -> int:
    from models.align.head import AlignConfig

    ap = argparse.ArgumentParser(prog="storeclerk train align",
                                 description="train the image → MiniLM projection over the frozen product backbone")
    _common(ap)
    d = AlignConfig()
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument("--hidden", type=int, default=d.hidden, help="hidden width of the 2-layer MLP; 0 = linear")
    ap.add_argument("--dropout", type=float, default=d.dropout)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--no-augmented", action="store_true", help="train on the clean photos only")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    say = _say(t0)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = train_align(args, AlignConfig(hidden=args.hidden, dropout=args.dropout, epochs=args.epochs, lr=args.lr,
                                               batch_size=args.batch_size, seed=args.seed,
                                               use_augmented=not args.no_augmented), say)
    except StoreclerkError as exc:
        print(f"storeclerk: error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    _print(report, args.json)
    return 0


def train_align(args, cfg, say) -> dict:
    from models.align import features as F
    from models.align.head import fit, image_embeddings, save_head
    from models.products.train import ProductCheckpoint

    cache, products, bank, queries, prov = _prepare(args, say)
    x = cache.feats["train"]
    y = cache.labels["train"]
    if cfg.use_augmented:
        x = np.concatenate([x, cache.feats["train_aug"]])
        y = np.concatenate([y, cache.labels["train_aug"]])
    say(f"training the projection on {len(x)} photo features ({'with' if cfg.use_augmented else 'without'} "
        f"augmented views); held-out {len(cache.labels['heldout'])} photos pick the epoch")
    head, history, info = fit(x, y, bank.vectors, bank.owner, len(products), cache.feats["heldout"],
                              cache.labels["heldout"], cfg=cfg, progress=not args.no_progress, say=say)
    state = ProductCheckpoint.load(args.checkpoint).state_dict
    report, emb = full_report(lambda f: image_embeddings(head, f), cache, bank, queries,
                              lambda f: F.head_logits(state, f)[0])
    # The read-out the kiosk uses is chosen on the held-out photos only (val is for reporting).
    h = report["heldout"]
    readout = max(("canonical", "mean"), key=lambda r: (h[f"i2t_{r}"]["MRR"], r == "mean"))
    meta = {"training": {**info, "history": history, "train_photos": int(len(x)),
                         "heldout_photos": int(len(cache.labels["heldout"]))},
            "text_readout": readout, "metrics": report, "text_encoder": prov,
            "checkpoint_sha256": cache.meta["checkpoint_sha256"], "catalog": str(args.catalog),
            "data": {"dir": str(args.data), "train": "train.txt minus the checkpoint's held-out photos (+1 augmented view each)",
                     "early_stopping": "the checkpoint's held-out photos of train.txt", "report": "val.txt"}}
    save_head(args.out, head, meta)
    say(f"alignment head written to {args.out} (best epoch {info['best_epoch']} of {info['epochs_run']}, "
        f"{info['train_seconds']} s; text read-out: {readout})")
    return {"head": str(args.out), "best_epoch": info["best_epoch"], "text_readout": readout,
            "temperature": history[info["best_epoch"] - 1]["temperature"], **report}


def eval_align_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="storeclerk eval align",
                                 description="image ↔ text recall of the alignment head (torch) or an exported bundle")
    _common(ap)
    ap.add_argument("--model", help="evaluate this bundle's exported product model (INT8 image_embedding, as the kiosk "
                                    "runs it) instead of the torch head")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    say = _say(t0)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = eval_bundle(args, say) if args.model else eval_head(args, say)
    except StoreclerkError as exc:
        print(f"storeclerk: error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    _print(report, args.json)
    return 0


def eval_head(args, say) -> dict:
    from models.align import features as F
    from models.align.head import image_embeddings, load_head
    from models.products.train import ProductCheckpoint

    head, meta = load_head(args.out)
    cache, products, bank, queries, _ = _prepare(args, say)
    if meta.get("checkpoint_sha256") not in (None, cache.meta["checkpoint_sha256"]):
        from runtime.errors import ConfigError

        raise ConfigError(f"{args.out} was trained on another product checkpoint than {args.checkpoint}")
    state = ProductCheckpoint.load(args.checkpoint).state_dict
    report, _ = full_report(lambda f: image_embeddings(head, f), cache, bank, queries,
                            lambda f: F.head_logits(state, f)[0])
    return {"head": str(args.out), "source": "torch head on cached fp32 backbone features", **report}


def eval_bundle(args, say) -> dict:
    """Every photo through the bundle's products model (preprocessing + INT8 ONNX), text through its retrieval
    model, matching through ``runtime.vision.align.CatalogMatcher`` with the vectors the bundle stores."""
    from models.align.evaluate import classifier_reference, query_report, split_report
    from models.align.features import iconic_items
    from models.align.texts import read_catalog_texts, read_queries
    from models.products.data import load_dataset, load_item_image
    from runtime.embedder import SentenceEmbedder
    from runtime.engine import Engine
    from runtime.errors import BundleError
    from runtime.vision.align import CatalogMatcher
    from runtime.vision.products import ProductRecognizer

    engine = Engine(args.model)
    rec = ProductRecognizer(engine)
    if not rec.has_embedding:
        raise BundleError(f"{args.model}: its product model has no image_embedding output (export it with --align)")
    matcher = CatalogMatcher.from_bundle(engine.bundle)
    _, val = load_dataset(args.data, Path(args.data) / "val.txt")
    icon = iconic_items(Path(args.data))
    products = read_catalog_texts(args.catalog, len(rec.fine_labels))
    queries, gold = read_queries(args.queries, products)
    qv = SentenceEmbedder(engine).embed(queries)
    rep = {}
    emb = {}
    for name, items in (("val", val), ("iconic", icon)):
        say(f"{name}: {len(items)} photos through {args.model}")
        frames = [load_item_image(it) for it in items]
        out = rec.run(frames)
        emb[name] = out["image_embedding"]
        y = np.array([it.fine for it in items])
        rep[name] = split_report(emb[name], y, matcher.text_sets())
        if name == "val":
            rep["classifier_val"] = classifier_reference(out["fine_logits"], y)
    rep["queries"] = query_report(qv, gold, matcher.image_vectors, matcher.text_sets()["mean"], emb["val"],
                                  np.array([it.fine for it in val]))
    return {"model": str(args.model), "source": "exported bundle (INT8 ONNX through the kiosk's runtime)",
            "text_readout": matcher.readout, **rep}


def _print(report: dict, as_json: bool) -> None:
    from models.align.evaluate import format_summary

    print(format_summary(report), file=sys.stderr)
    if as_json:
        print(json.dumps(report, indent=None, sort_keys=False))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    fn = {"train": train_align_main, "eval": eval_align_main}.get(cmd)
    if fn is None:
        print("usage: python -m models.align.cli {train|eval} [options]", file=sys.stderr)
        sys.exit(2)
    sys.exit(fn(sys.argv[2:]))
