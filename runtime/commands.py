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

    return run_doctor(_bundle_path(args.model), as_json=args.json)


__all__ = ["DataError"]
