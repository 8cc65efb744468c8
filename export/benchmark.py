"""``storeclerk bench text``: PyTorch eager fp32 vs ONNX Runtime fp32 vs INT8, in one process, same sentences.

Timings run in rounds: each round gives every variant a block of the same sentences (order rotating per
round), so drift in machine load hits all variants alike, while no variant runs right after another
runtime's busy-waiting worker threads (sentence-by-sentence interleaving inflated every variant 3-4× here,
torch's OpenMP and ORT's thread pools spinning against each other on 2 cores). Every variant gets the same
number of intra-op threads. The model under test is the
kiosk intent model: its torch checkpoint is built by ``make bundle`` (or here, on first use, into build/).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime.paths import default_bundle_dir

log = logging.getLogger("storeclerk.bench")

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "build" / "kiosk"


def ensure_checkpoint(checkpoint: str | None) -> tuple[Path, Path]:
    """The kiosk checkpoint and its held-out Bitext split; trains them into build/kiosk/ when missing."""
    if checkpoint:
        ck = Path(checkpoint)
        held = ck.parent / "bitext_heldout.csv"
        return ck, held
    ck, held = WORK / "checkpoint", WORK / "bitext_heldout.csv"
    if not (ck / "model.pt").exists() or not held.exists():
        log.warning("no kiosk checkpoint in %s: training it now (several minutes; `make bundle` does the same)", WORK)
        from models import kiosk_bundle

        kiosk_bundle.main(["--work", str(WORK), "--out", str(WORK / "bundle")])
    return ck, held


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "system": platform.system()}


def _p50(xs: list[float]) -> float:
    return round(float(np.median(xs)) * 1000, 3)


def bundle_load_probe(bundle: Path) -> dict:
    """Cold load + first prediction in a fresh process: wall time, RSS, and that torch stayed out."""
    code = f"""
import json, sys, time
t0 = time.perf_counter()
from runtime.intents import IntentClassifier
clf = IntentClassifier.from_bundle({str(bundle)!r})
clf.predict_one("where can I find the oat milk")
t1 = time.perf_counter()
status = {{l.split(":")[0]: l.split()[1] for l in open("/proc/self/status") if l.startswith(("VmRSS", "VmHWM"))}}
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
print(json.dumps({{"cold_load_s": round(t1 - t0, 3), "rss_mb": round(int(status["VmRSS"]) / 1024, 1),
                  "peak_rss_mb": round(int(status["VmHWM"]) / 1024, 1), "torch_imported": "torch" in sys.modules}}))
"""
    runs = []
    for _ in range(3):
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
        if p.returncode != 0:
            return {"error": p.stderr.strip()[-500:]}
        runs.append(json.loads(p.stdout))
    return {"cold_load_s_p50": float(np.median([r["cold_load_s"] for r in runs])),
            "rss_mb_p50": float(np.median([r["rss_mb"] for r in runs])),
            "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
            "torch_imported": any(r["torch_imported"] for r in runs), "runs": len(runs)}


def _rounds(fns: dict, names: list[str], feeds: list, rounds: int) -> dict[str, list[float]]:
    """Per round, each variant (rotating order) warms up on 3 feeds, then times its block of ``feeds``."""
    lat: dict[str, list[float]] = {n: [] for n in names}
    block = max(1, len(feeds) // rounds)
    for r in range(rounds):
        part = feeds[r * block : (r + 1) * block] or feeds
        for n in names[r % len(names) :] + names[: r % len(names)]:
            for ids, mask in part[:3]:
                fns[n](ids, mask)
            for ids, mask in part:
                t0 = time.perf_counter()
                fns[n](ids, mask)
                lat[n].append(time.perf_counter() - t0)
    return lat


def bench_text(checkpoint: str | None = None, repeats: int = 200, threads: int | None = None) -> dict:
    import onnxruntime as ort
    import torch

    from export import steps
    from export.parity import compare
    from models.checkpoint import IntentCheckpoint
    from models.data import read_labeled
    from runtime.tokenizer import encode_batch, encode_batches, load_tokenizer

    ck_path, held_path = ensure_checkpoint(checkpoint)
    ckpt = IntentCheckpoint.load(ck_path)
    held = read_labeled(held_path)
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    tok = load_tokenizer(ckpt.tokenizer_path)
    model = ckpt.model.eval()
    labels = {lab: i for i, lab in enumerate(ckpt.labels)}
    y = np.array([labels.get(e.label, -1) for e in held])
    texts = [e.text for e in held]

    with tempfile.TemporaryDirectory(prefix="storeclerk-bench-") as tmpd:
        tmp = Path(tmpd)
        fp32 = steps.onnx_from_torch(model, tmp / "fp32.onnx")
        opt = steps.optimized_from_onnx(fp32, tmp / "fp32.opt.onnx")
        # The same recipe the kiosk bundle ships (recorded in its manifest).
        kiosk_manifest = default_bundle_dir() / "manifest.json"
        exclude: list[str] = []
        if kiosk_manifest.exists():
            q = json.loads(kiosk_manifest.read_text())["models"]["intent"]["variants"]["int8"].get("quantization", {})
            if q.get("excluded_nodes"):
                exclude = steps.bert_ffn_output_matmuls(opt)
        int8 = steps.int8_from_onnx(opt, tmp / "int8.onnx", exclude=exclude)

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = {"ort_fp32": ort.InferenceSession(str(opt), so, providers=["CPUExecutionProvider"]),
                "ort_int8": ort.InferenceSession(str(int8), so, providers=["CPUExecutionProvider"])}

        def run_torch(ids, mask):
            with torch.inference_mode():
                e, lg = model(torch.from_numpy(ids), torch.from_numpy(mask))
            return e.numpy(), lg.numpy()

        def runner(name):
            if name == "torch_fp32":
                return run_torch
            s = sess[name]
            return lambda ids, mask: tuple(s.run(["embedding", "logits"], {"input_ids": ids, "attention_mask": mask}))

        names = ["torch_fp32", "ort_fp32", "ort_int8"]
        fns = {n: runner(n) for n in names}

        # Accuracy and fidelity on the whole held-out split (batched; batch size does not change results).
        outs = {n: [] for n in names}
        for ids, mask in encode_batches(tok, texts):
            for n in names:
                outs[n].append(fns[n](ids, mask))
        cat = {n: (np.concatenate([o[0] for o in outs[n]]), np.concatenate([o[1] for o in outs[n]])) for n in names}
        accuracy = {n: round(float((cat[n][1].argmax(1) == y).mean()), 4) for n in names}
        fidelity = compare("int8", cat["torch_fp32"][0], cat["torch_fp32"][1], cat["ort_int8"][0], cat["ort_int8"][1], y)

        singles = [encode_batch(tok, [t]) for t in texts[: max(1, min(repeats, len(texts)))]]
        batches = encode_batches(tok, texts[: 32 * 12])
        lat = _rounds(fns, names, singles, rounds=4)
        lat32 = _rounds(fns, names, batches, rounds=2)

    res = {f"{n}_ms_p50": _p50(lat[n]) for n in names}
    res |= {f"{n}_b32_ms_p50": _p50(lat32[n]) for n in names}
    res["speedup_int8_vs_torch"] = round(res["torch_fp32_ms_p50"] / res["ort_int8_ms_p50"], 2)
    res["speedup_int8_vs_torch_b32"] = round(res["torch_fp32_b32_ms_p50"] / res["ort_int8_b32_ms_p50"], 2)
    res["speedup_ort_fp32_vs_torch"] = round(res["torch_fp32_ms_p50"] / res["ort_fp32_ms_p50"], 2)
    res["accuracy"] = accuracy
    res["accuracy_drop_int8_points"] = round(100 * (accuracy["torch_fp32"] - accuracy["ort_int8"]), 2)
    res["mean_cosine_int8_vs_torch"] = round(fidelity.mean_cosine, 5)
    res["min_cosine_int8_vs_torch"] = round(fidelity.min_cosine, 5)
    res["top1_agreement_int8_vs_torch"] = round(fidelity.agreement, 4)
    res["held_out"] = {"file": str(held_path.relative_to(REPO) if held_path.is_relative_to(REPO) else held_path),
                       "n": len(texts)}
    res["batch1_runs"], res["batch32_runs"] = len(lat["ort_int8"]), len(lat32["ort_int8"])
    res["threads"] = threads
    res["int8_recipe"] = "FFN output projections kept fp32" if exclude else "all MatMul/Attention/Gather"
    bundle = default_bundle_dir()
    if (bundle / "manifest.json").exists():
        res["kiosk_bundle_load"] = bundle_load_probe(bundle)
    res["machine"] = machine()
    return res
