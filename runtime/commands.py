"""Handlers behind ``storeclerk COMMAND``. Torch is imported only by train/export/bench handlers."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from runtime.errors import ConfigError, DataError
from runtime.paths import default_bundle_dir

log = logging.getLogger("storeclerk")


def _bundle_path(arg: str | None) -> Path:
    return Path(arg) if arg else default_bundle_dir()


def _console():
    from rich.console import Console

    return Console()


# -- train / export -----------------------------------------------------------------------------------------

def default_epochs(n_rows: int) -> int:
    """Small sets need more passes; large ones converge in a few (each pass costs minutes on 2 cores)."""
    if n_rows < 1000:
        return 10
    if n_rows < 5000:
        return 6
    if n_rows < 12000:
        return 4
    return 3


def cmd_train_intents(args) -> int:
    from models.data import check_trainable, read_labeled

    examples = read_labeled(args.data, args.text_column, args.label_column)
    counts = check_trainable(examples, str(args.data))
    if args.oos_label and args.oos_label not in counts:
        log.warning("--oos-label %r does not occur in %s: out of scope will not be calibrated", args.oos_label, args.data)
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError("--epochs must be at least 1")
    _check_rejection(args.max_in_scope_rejection)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]

    from export.intents import export_intent_bundle
    from models.train_intents import TrainConfig, fit

    epochs = args.epochs or default_epochs(len(examples))
    cfg = TrainConfig(epochs=epochs, seed=args.seed, threads=args.threads)
    log.info("training on %d rows, %d labels, %d epochs", len(examples), len(counts), epochs)
    meta = {"bundle_meta": {"data": {"train": str(Path(args.data).name), "rows": len(examples),
                                     "text_column": args.text_column, "label_column": args.label_column,
                                     "oos_label": args.oos_label}}}
    ckpt = fit(examples, args.oos_label, cfg, meta=meta)
    if args.keep_checkpoint:
        ckpt.save(Path(args.keep_checkpoint))
    manifest = export_intent_bundle(ckpt, Path(args.out), precisions=precisions, name=Path(args.out).name,
                                    max_in_scope_rejection=args.max_in_scope_rejection)
    _print_train_summary(ckpt, manifest, Path(args.out))
    return 0


def _print_train_summary(ckpt, manifest: dict, out: Path) -> None:
    from rich.table import Table

    entry = manifest["models"]["intent"]
    oos = entry["oos"]
    dep = entry["parity"][entry["default_variant"]]
    t = Table(title=f"storeclerk train intents → {out}")
    t.add_column("what")
    t.add_column("value", justify="right")
    c = ckpt.meta["counts"]
    rows = [
        ("labels", str(c["labels"])),
        ("train / calibration rows", f"{c['train']} / {c['calibration']}"),
        ("epochs, training time", f"{len(ckpt.meta['history'])}, {ckpt.meta['train_seconds']:.0f} s"),
        ("final train loss / accuracy", f"{ckpt.meta['history'][-1]['loss']:.4f} / {ckpt.meta['history'][-1]['train_accuracy']:.4f}"),
        (f"held-out accuracy ({entry['default_variant']})", f"{dep['accuracy']:.4f}"),
        ("held-out accuracy (torch fp32)", f"{dep['torch_accuracy']:.4f}"),
        ("mean cosine vs torch", f"{dep['mean_cosine']:.5f}"),
        ("temperature, ECE before → after", f"{oos['temperature']:.3f}, {oos['ece_before']:.4f} → {oos['ece_after']:.4f}"),
    ]
    if oos.get("label"):
        fit = oos.get("threshold_fit", {})
        if oos.get("threshold") is not None:
            rows.append(("out-of-scope threshold (max in-scope logit)",
                         f"{oos['threshold']:.3f} ({fit['max_in_scope_rejection']:.0%} in-scope quantile)"))
            rows.append(("calibration: oos recall / in-scope rejected",
                         f"{fit['oos_recall']:.3f} / {fit['in_scope_rejected']:.3f}"))
    size = sum(f["bytes"] for f in manifest["files"].values())
    rows.append(("bundle", f"{', '.join(entry['variants'])}; {size / 1e6:.1f} MB"))
    for r in rows:
        t.add_row(*r)
    _console().print(t)


def _check_rejection(value: float) -> None:
    if not 0.0 <= value < 0.5:
        raise ConfigError(f"--max-in-scope-rejection must be in [0, 0.5), got {value}")


def cmd_export_intents(args) -> int:
    _check_rejection(args.max_in_scope_rejection)
    from export.intents import export_intent_bundle
    from models.checkpoint import IntentCheckpoint

    ckpt = IntentCheckpoint.load(Path(args.checkpoint))
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    manifest = export_intent_bundle(ckpt, Path(args.out), precisions=precisions, opset=args.opset, name=args.name,
                                    max_in_scope_rejection=args.max_in_scope_rejection)
    from rich.table import Table

    t = Table(title=f"parity against torch → {args.out}")
    for col in ("variant", "mean cos", "min cos", "max |Δ| logits", "agreement", "accuracy", "torch acc", "ok"):
        t.add_column(col)
    for v, r in manifest["models"]["intent"]["parity"].items():
        t.add_row(v, f"{r['mean_cosine']:.5f}", f"{r['min_cosine']:.5f}", f"{r['max_abs_diff_logits']:.4f}",
                  f"{r['agreement']:.4f}", f"{r['accuracy']:.4f}", f"{r['torch_accuracy']:.4f}", "yes" if r["passed"] else "no")
    _console().print(t)
    return 0


def cmd_train_products(args) -> int:
    from models.products.data import load_dataset

    if not 0.0 < args.holdout < 0.5:
        raise ConfigError(f"--holdout must be in (0, 0.5): the held-out split picks the epoch and the threshold, got {args.holdout}")
    if not 0.0 <= args.max_in_catalog_rejection < 0.5:
        raise ConfigError(f"--max-in-catalog-rejection must be in [0, 0.5), got {args.max_in_catalog_rejection}")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    catalog, items = load_dataset(args.data, args.list)

    from export.products import PRECISIONS, export_product_model
    from models.products.train import TrainConfig, fit

    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ConfigError(f"--precisions: unknown {bad}; choose from {', '.join(PRECISIONS)}")
    cfg = TrainConfig(arch=args.arch, size=args.size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      head_epochs=args.head_epochs, holdout=args.holdout, seed=args.seed, threads=args.threads,
                      init=args.init, max_steps=args.max_steps, time_budget_min=args.time_budget_min or None).resolved()
    log.info("training %s at %d px on %d images (%d products, %d kinds), %d epochs", cfg.arch, cfg.size, len(items),
             catalog.n_fine, catalog.n_coarse, cfg.epochs)
    ckpt = fit(items, catalog, cfg, progress=not args.no_progress)
    ckpt.meta["data"] = {"train": f"{Path(args.list).name} under {Path(args.data).name}/ ({len(items)} images; "
                                  f"{ckpt.meta['counts']['train']} trained on, {ckpt.meta['counts']['heldout']} held out)",
                         "dataset": "Grocery Store Dataset (Klasson et al., MIT)", "classes": catalog.source}
    if args.keep_checkpoint:
        ckpt.save(Path(args.keep_checkpoint))
    manifest = export_product_model(ckpt, Path(args.out), precisions=precisions,
                                    max_in_catalog_rejection=args.max_in_catalog_rejection,
                                    progress=lambda m: log.info("%s", m))
    _print_products_summary(ckpt, manifest, Path(args.out))
    return 0


def _print_products_summary(ckpt, manifest: dict, out: Path) -> None:
    from rich.table import Table

    e = manifest["models"]["products"]
    m, osr = e["metrics"], e["open_set"]
    hist = ckpt.meta
    t = Table(title=f"storeclerk train products → {out}")
    t.add_column("what")
    t.add_column("value", justify="right")
    last = ckpt.history[-1]
    ips = [h["images_per_s"] for h in ckpt.history if h["phase"] == "full" and h.get("images_per_s")]
    rows = [
        ("architecture, input", f"{ckpt.arch}, {ckpt.size}x{ckpt.size}"),
        ("products / kinds", f"{ckpt.catalog.n_fine} / {ckpt.catalog.n_coarse}"),
        ("train / held-out images", f"{hist['counts']['train']} / {hist['counts']['heldout']}"),
        ("epochs run (best), steps", f"{len(ckpt.history)} ({hist['best_epoch']}), {hist['steps']}; {hist['stopped']}"),
        ("training time", f"{hist['train_seconds'] / 60:.1f} min" + (f", {ips[-1]:.1f} img/s fwd+bwd" if ips else "")),
        ("final train loss / accuracy", f"{last['loss']:.4f} / {last['train_accuracy']:.4f}"),
        (f"held-out fine / coarse ({m['heldout']['variant']})",
         f"{m['heldout']['fine_accuracy']:.4f} / {m['heldout']['coarse_accuracy']:.4f} (coarse from {e['coarse_from']})"),
    ]
    for p, r in e["parity"].items():
        rows.append((f"parity {p} vs {r['reference']}",
                     f"agreement {r['agreement']:.4f}, accuracy Δ {r['accuracy_delta_points']:+.2f} pts"))
    rows += [
        ("open set", f"{osr['score']} < {osr['threshold']:.4f}: rejects {osr['in_catalog_rejected']:.1%} of held-out "
                     f"products, {osr['negatives_rejected']:.1%} of negatives"),
        ("temperature, ECE before → after", f"{osr['temperature']:.3f}, {osr['ece_before']:.4f} → {osr['ece_after']:.4f}"),
    ]
    for v, lat in m["latency_ms"].items():
        rows.append((f"latency {v} (batch 1, {lat['threads']} threads)", f"p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms"))
    size = sum(manifest["files"][v["file"]]["bytes"] for v in e["variants"].values())
    rows.append(("model files", f"{', '.join(e['variants'])}; {size / 1e6:.1f} MB"))
    for r in rows:
        t.add_row(*r)
    _console().print(t)


# -- eval / chat ------------------------------------------------------------------------------------------

def cmd_eval_intents(args) -> int:
    from models.data import read_labeled
    from models.evaluate import evaluate
    from runtime.intents import IntentClassifier

    examples = read_labeled(args.data, args.text_column, args.label_column)
    clf = IntentClassifier.from_bundle(_bundle_path(args.model))
    res = evaluate(clf, examples, args.oos_label)
    if args.json:
        print(json.dumps(res))
        return 0
    from rich.table import Table

    t = Table(title=f"eval intents: {args.data} ({res['n']} rows)")
    t.add_column("label")
    for col in ("precision", "recall", "f1", "support"):
        t.add_column(col, justify="right")
    for lab, r in res["per_class"].items():
        t.add_row(lab, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    con = _console()
    con.print(t)
    keys = ["accuracy", "macro_f1", "in_scope_accuracy", "oos_recall", "oos_precision", "latency_ms_p50"]
    con.print("  ".join(f"{k}={res[k]}" for k in keys if k in res))
    if res["worst_confusions"]:
        con.print("worst confusions: " + ", ".join(f"{c['gold']}→{c['predicted']} ×{c['count']}" for c in res["worst_confusions"][:5]))
    return 0


def cmd_train_fusion(args) -> int:
    from models.fusion.train import train_fusion_main

    return train_fusion_main(args.rest)


def cmd_eval_fusion(args) -> int:
    from models.fusion.train import eval_fusion_main

    return eval_fusion_main(args.rest)


def cmd_train_align(args) -> int:
    from models.align.cli import train_align_main

    return train_align_main(args.rest)


def cmd_eval_align(args) -> int:
    from models.align.cli import eval_align_main

    return eval_align_main(args.rest)


def cmd_eval_products(args) -> int:
    from models.products.data import load_dataset
    from models.products.evaluate import evaluate
    from runtime.vision.products import ProductRecognizer

    bundle = _bundle_path(args.model)
    _, items = load_dataset(args.data, args.list)
    from runtime.bundle import load_bundle

    if "products" not in load_bundle(bundle, verify=False).models:
        raise ConfigError(f"bundle {bundle} has no product model yet: train one with 'storeclerk train products "
                          "--data DIR --list train.txt --out BUNDLE' and pass --model BUNDLE", code="no_product_model")
    rec = ProductRecognizer.from_bundle(bundle, providers=["cpu"])
    res = evaluate(rec, items)
    if args.json:
        print(json.dumps(res))
        return 0
    from rich.table import Table

    t = Table(title=f"eval products: {args.list} ({res['n']} photos)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k in ("accuracy", "coarse_accuracy", "top5_accuracy", "macro_accuracy", "unknown_rate",
              "accuracy_when_accepted", "wrong_rejected", "latency_ms_p50", "latency_ms_p95", "model_latency_ms_p50"):
        t.add_row(k, str(res[k]))
    con = _console()
    con.print(t)
    if res["worst_confusions"]:
        con.print("worst confusions: " + ", ".join(f"{c['gold']}→{c['predicted']} ×{c['count']}"
                                                  for c in res["worst_confusions"][:5]))
    return 0


def _entity_extractor():
    try:
        from runtime.entities import EntityExtractor

        return EntityExtractor.default()
    except Exception as exc:  # noqa: BLE001 - chat still works without entities, and says why
        log.warning("entities unavailable: %s", exc)
        return None


def cmd_chat(args) -> int:
    from runtime.intents import IntentClassifier

    clf = IntentClassifier.from_bundle(_bundle_path(args.model))
    ents = _entity_extractor()
    con = _console()
    con.print("[bold]storeclerk chat[/bold] — type a question, empty line or Ctrl-D to quit.")
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        if not line.strip():
            if interactive:
                break
            continue
        p = clf.predict_one(line)
        found = ents.extract(line) if ents else []
        tag = "[red]out of scope[/red]" if p.out_of_scope else f"[green]{p.intent}[/green]"
        alts = ", ".join(f"{i} {c:.2f}" for i, c in p.alternatives)
        con.print(f"  intent: {tag}  confidence {p.confidence:.2f}  (top: {alts})")
        if found:
            con.print("  entities: " + ", ".join(f"{e.type}={e.value!r}" for e in found))
    return 0


from runtime.ops import (  # noqa: E402,F401
    cmd_install_service,
    cmd_kb_reload,
    cmd_kb_validate,
    cmd_report,
    cmd_run,
    cmd_voice_test,
    cmd_wipe,
)

# -- bench / doctor ---------------------------------------------------------------------------------------

def cmd_bench_text(args) -> int:
    from export.benchmark import bench_text

    res = bench_text(checkpoint=args.checkpoint, repeats=args.repeats)
    if args.json:
        print(json.dumps(res))
    else:
        _console().print_json(json.dumps(res))
    return 0


def cmd_doctor(args) -> int:
    from runtime.doctor import run_doctor

    return run_doctor(_bundle_path(args.model), as_json=args.json, camera=args.camera)


__all__ = ["DataError"]
