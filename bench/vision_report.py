"""The vision section of `make bench` (bench/run.py): runs the vision benchmarks and renders their table.

    python bench/vision_report.py            # run them all (about 10 minutes on 2 cores), print the section
    python bench/vision_report.py --render   # only render from bench/results/

Runs: bench/vision_bench.py (barcodes, OCR, faces), `storeclerk eval products` on the Grocery Store val split,
`storeclerk eval align` (image↔text recall of the bundle's INT8 graph), bench/deictic_eval.py (both question sets), bench/fusion_eval.py
(the ablation; it also rewrites its section of docs/models.md). Each writes bench/results/*.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SHARED = Path(os.environ.get("STORECLERK_SHARED_DATA", REPO.parent / "shared" / "data"))
GROCERY = SHARED / "grocery" / "dataset"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
CLI = [str(REPO / ".venv" / "bin" / "storeclerk")] if (REPO / ".venv/bin/storeclerk").exists() else [
    sys.executable, "-m", "runtime.cli"]


def _run(cmd: list[str], name: str, json_out: Path | None = None, timeout: int = 3600) -> bool:
    """Run one benchmark; ``json_out``: keep the last line of its output (a command's ``--json`` object) there."""
    print(f"[bench] {name} …", flush=True)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=ENV, timeout=timeout, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"[bench] {name} failed ({p.returncode}):\n{p.stderr[-2000:]}", file=sys.stderr)
        return False
    if json_out is not None:
        json_out.write_text(p.stdout.strip().splitlines()[-1] + "\n")
    print(f"[bench] {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return True


def run_vision() -> dict | None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    _run([py, "bench/vision_bench.py", "--json", str(RESULTS / "vision_bench.json")], "vision_bench.py")
    if GROCERY.exists():
        _run([*CLI, "eval", "products", "--data", str(GROCERY), "--list", str(GROCERY / "val.txt"), "--json"],
             "eval products", RESULTS / "products_eval.json")
        _run([*CLI, "eval", "align", "--data", str(GROCERY), "--model", "models/bundles/kiosk", "--json"],
             "eval align", RESULTS / "align.json")
        _run([py, "bench/deictic_eval.py", "--out", str(RESULTS / "deictic.json")], "deictic_eval.py")
        _run([py, "bench/deictic_eval.py", "--questions", "data/eval/deictic_questions_heldout.csv",
              "--out", str(RESULTS / "deictic_heldout.json")], "deictic_eval.py (second question set)")
        _run([py, "bench/fusion_eval.py", "--bundle", "models/bundles/kiosk"], "fusion_eval.py")
    else:
        print(f"[bench] {GROCERY} not found: skipping product, alignment, deictic and fusion benchmarks", file=sys.stderr)
    return load()


def load() -> dict | None:
    out = {}
    for name in ("vision_bench", "products_eval", "align", "deictic", "deictic_heldout", "fusion"):
        f = RESULTS / f"{name}.json"
        if f.exists():
            out[name] = json.loads(f.read_text())
    return out or None


def _ok(ok: bool | None) -> str:
    return "–" if ok is None else ("**met**" if ok else "not met")


def render_vision(v: dict | None) -> list[str]:
    if not v:
        return []
    machine = _get(v, "vision_bench", "machine") or "?"
    lines = ["", "## Vision and fusion (`bench/vision_report.py`)", "",
             f"Machine: {machine} (medians). "
             "Product photos: the Grocery Store **val** split (296 photos the models never trained on). Details: "
             "[vision.md](vision.md), [products.md](products.md), [alignment.md](alignment.md), [fusion.md](fusion.md).", "",
             "| target | measured | |", "| --- | --- | --- |"]
    pe = v.get("products_eval")
    if pe:
        lines.append(f"| product recognition, fine ≥ 88% / coarse ≥ 93% (val) | fine {pe['accuracy']:.1%}, coarse "
                     f"{pe['coarse_accuracy']:.1%} (n {pe['n']}) | {_ok(pe['accuracy'] >= 0.88 and pe['coarse_accuracy'] >= 0.93)} |")
        lat = pe.get("latency_ms_p50")
        lines.append(f"| product model ≤ 10 ms per frame (INT8, CPU) | {lat} ms p50 per frame (preprocessing + model + "
                     f"decision; model alone {pe.get('model_latency_ms_p50', '?')} ms) | {_ok(lat is not None and lat <= 10)} |")
    par = _product_parity()
    if par:
        lines.append(f"| INT8 within 1 point of fp32 | {par['accuracy_delta_points']:+.2f} points (held-out {par['n']} photos; "
                     f"agreement {par['agreement']:.1%}) | {_ok(abs(par['accuracy_delta_points']) <= 1.0)} |")
    vb = v.get("vision_bench")
    if vb:
        b = vb["barcode"]
        lines.append(f"| barcode/QR ≥ 30 frames/s at 640×480 | {b['fps']} frames/s (median {b['median_ms']} ms; found "
                     f"{b['found']}/{b['with_code']}, {b['false_reads']} false reads) | {_ok(b['fps'] >= 30)} |")
    al = v.get("align")
    if al:
        r5 = _get(al, "val", "i2t_mean", "R@5")
        lines.append(f"| image→text recall@5 ≥ 90% (81 products' texts; val photos, INT8 bundle) | {_pct(r5)} (R@1 "
                     f"{_pct(_get(al, 'val', 'i2t_mean', 'R@1'))}; text→image R@1 {_pct(_get(al, 'val', 't2i_mean', 'R@1'))}, "
                     f"R@5 {_pct(_get(al, 'val', 't2i_mean', 'R@5'))} over the {_get(al, 'val', 't2i_mean', 'n_products')} "
                     f"products val has photos of) | {_ok(r5 >= 0.90 if r5 is not None else None)} |")
        q = _get(al, "queries")
        if q:
            lines.append(f"| (no target) descriptive queries → product, {q['n']} written queries | catalogue text R@1 "
                         f"{_pct(q['catalog_text']['R@1'])}, R@5 {_pct(q['catalog_text']['R@5'])}; through the iconic images "
                         f"R@1 {_pct(q['iconic_images']['R@1'])}, R@5 {_pct(q['iconic_images']['R@5'])} | – |")
    for key, what in (("deictic", "question set 1"), ("deictic_heldout", "question set 2, never seen by any model")):
        d = v.get(key)
        if not d:
            continue
        for cond, s in d["summary"].items():
            rwa = s["right_when_answered"]
            lines.append(f"| deictic questions answered about the right product ≥ 95% ({what}, product {cond}) | "
                         f"{s['right']:.1%} right, {s['wrong']:.1%} wrong, {s['declined']:.1%} declined (right when "
                         f"answered {_pct(rwa)}; asked \"Is this X?\" first on {_pct(s.get('asked_to_confirm'))}; n {s['n']}) | "
                         f"{_ok(s['right'] >= 0.95)} |")
    fu = v.get("fusion")
    if fu:
        lines += ["", f"Fusion ablation ({fu['split']} split, {fu['n']} composed turns; {fu['machine']}): the full table is in "
                  "[models.md](models.md#fusion-text--product-sighting--face--prosody). The kiosk's variant (INT8):", "",
                  "| modalities | intent acc. | refers acc. | deictic → true product | frustration F1 | p50 ms |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in fu["rows"]:
            if "INT8" in r["variant"] or "int8" in r["variant"]:
                dt = "–" if r.get("deictic_true_product") is None else f"{r['deictic_true_product']:.3f}"
                lines.append(f"| {r['subset']} | {r['intent_accuracy']:.3f} | {r['refers_accuracy']:.3f} | {dt} | "
                             f"{r['frustration_f1']:.3f} | {r['latency_p50_ms']:.3f} |")
    return lines


def _product_parity() -> dict | None:
    m = REPO / "models" / "bundles" / "kiosk" / "manifest.json"
    if not m.exists():
        return None
    return _get(json.loads(m.read_text()), "models", "products", "parity", "int8")


def _get(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _pct(x) -> str:
    return "–" if x is None else f"{x:.1%}"


if __name__ == "__main__":
    data = load() if "--render" in sys.argv else run_vision()
    print("\n".join(render_vision(data)))
