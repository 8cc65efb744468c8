"""The fusion model: checkpoint → ONNX (opset 17, named inputs with a presence mask, dynamic batch) → static
INT8 (QDQ) → parity → the ``fusion`` entry of a bundle.

    python -m export.fusion --checkpoint build/fusion/attention.pt --bundle models/bundles/kiosk

The bundle must already hold the intent and product models the fusion model's features came from (their
files' sha256 are checked against the checkpoint, and written to the entry so the kiosk can check again).
Every other model keeps its bytes; the manifest is rewritten in a staging directory that is swapped in
(``runtime.bundle.replace_bundle_dir``), as ``export/products.py`` does.

INT8: static, QDQ, weights per output channel (QInt8), activations QUInt8 with MinMax ranges from
``N_CALIBRATION`` composed *training* turns (real sentence embeddings, recognizer outputs and prosody, with
the data's own mix of missing modalities). Parity and the temperature use the dev split; the test split is
only measured and recorded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from export import parity, steps
from runtime.errors import ExportError
from runtime.fusion import FACE_CLASSES, IMAGE_TOP_K, INPUTS, MODEL, OPTIONAL, OUTPUTS

log = logging.getLogger("storeclerk.export")

PRECISIONS = ("fp32", "int8")
N_CALIBRATION = 1024
# fp32 must match torch; INT8 may cost at most one point of intent accuracy (or two turns on a small split)
# and must agree with fp32 on nearly every decision.
BOUNDS = {"fp32": {"agreement": 0.999, "max_accuracy_drop": 0.2},
          "int8": {"agreement": 0.98, "max_accuracy_drop": 1.0}}
# As for the product CNN (export/products.py): 7-bit weights avoid the u8×s8 pair-sum saturation of AVX2
# without VNNI; the heads in fp32 are the last resort.
INT8_RECIPES = (("weight MatMul/Gemm", {}),
                ("7-bit weights", {"reduce_range": True}),
                ("7-bit weights, output heads kept fp32", {"reduce_range": True, "exclude_heads": True}))


class _Named(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, text, image, face, audio, mask):
        return self.model(text, image, face, audio, mask)


def onnx_from_model(model, out: Path, opset: int = steps.DEFAULT_OPSET) -> Path:
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    dims = model.dims
    dummy = (torch.zeros(2, dims["text"]), torch.zeros(2, dims["image"]), torch.zeros(2, dims["face"]),
             torch.zeros(2, dims["audio"]), torch.ones(2, len(OPTIONAL)))
    axes = {n: {0: "batch"} for n in (*INPUTS, *OUTPUTS)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Named(model).eval(), dummy, str(out), input_names=list(INPUTS), output_names=list(OUTPUTS),
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    onnx.checker.check_model(str(out))
    return out


class _Reader:
    BATCH = 64

    def __init__(self, feed: dict[str, np.ndarray]):
        self.feed, self.i = feed, 0
        self.n = len(feed["text"]) - len(feed["text"]) % self.BATCH  # equal batches for the calibrators

    def get_next(self):
        if self.i >= self.n:
            return None
        b = {k: np.ascontiguousarray(v[self.i : self.i + self.BATCH]) for k, v in self.feed.items()}
        self.i += self.BATCH
        return b

    def rewind(self):
        self.i = 0


def activation_matmuls(path: Path) -> list[str]:
    """MatMuls of two activations (attention scores q·kᵀ and their product with v). Their operands carry the
    -1e4 key-padding bias and a softmax's small differences: one u8 range over both loses what the softmax
    needs (measured: the attention variant's refers agreement with fp32 fell to 0.87 with them quantised)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in g.initializer}
    return [n.name for n in g.node if n.op_type == "MatMul" and not (set(n.input) & weights)]


def head_nodes(path: Path) -> list[str]:
    """The output layers: Gemm/MatMul nodes that feed a graph output (directly or through an Add)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    outs = {o.name for o in g.output}
    feeds_out = {i for n in g.node if set(n.output) & outs for i in n.input}
    return [n.name for n in g.node if n.op_type in ("Gemm", "MatMul") and (set(n.output) & (outs | feeds_out))]


def int8_static(src: Path, out: Path, calib: dict[str, np.ndarray], reduce_range: bool = False,
                exclude_heads: bool = False) -> tuple[Path, list[str]]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prep = out.with_suffix(".prep.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs advice per node on the root logger
    try:
        try:
            quant_pre_process(str(src), str(prep), skip_symbolic_shape=True)
        except Exception as exc:  # noqa: BLE001 - the plain graph still quantises
            log.info("quantisation pre-processing failed (%s); quantising the exported graph", exc)
            shutil.copyfile(src, prep)
        kept = activation_matmuls(prep) + (head_nodes(prep) if exclude_heads else [])
        # Only the weight layers: element-wise ops, LayerNorm and softmax stay fp32 (they are a sliver of the
        # arithmetic and the easiest to break with one coarse activation range).
        quantize_static(str(prep), str(out), _Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=kept,
                        op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)
        prep.unlink(missing_ok=True)
    return out, kept


def ort_outputs(path: Path, feed: dict[str, np.ndarray], batch: int = 512, sess=None) -> tuple[np.ndarray, ...]:
    sess = sess or steps.cpu_session(path)
    outs: list[list[np.ndarray]] = [[], [], []]
    for s in range(0, len(feed["text"]), batch):
        res = sess.run(list(OUTPUTS), {k: np.ascontiguousarray(feed[k][s : s + batch], dtype=np.float32) for k in INPUTS})
        for i, r in enumerate(res):
            outs[i].append(r)
    return tuple(np.concatenate(o) for o in outs)


def compare(variant: str, ref: Sequence[np.ndarray], got: Sequence[np.ndarray], y: np.ndarray,
            reference: str) -> parity.ParityReport:
    """Agreement on all three decisions and the intent accuracy drop, against ``BOUNDS``."""
    r = parity.ParityReport(variant, len(y))
    cos = parity.row_cosines(ref[0], got[0])
    r.mean_cosine, r.min_cosine = float(cos.mean()), float(cos.min())
    r.max_abs_diff_logits = float(max(np.abs(a - b).max() for a, b in zip(ref, got, strict=True)))
    agree = {"intent": float((ref[0].argmax(1) == got[0].argmax(1)).mean()),
             "refers": float(((ref[1] > 0) == (got[1] > 0)).mean()),
             "frustration": float(((ref[2] > 0) == (got[2] > 0)).mean())}
    r.agreement = min(agree.values())
    r.accuracy = float((got[0].argmax(1) == y).mean())
    r.torch_accuracy = float((ref[0].argmax(1) == y).mean())
    b = BOUNDS[variant]
    drop = 100 * (r.torch_accuracy - r.accuracy)
    allowed = max(b["max_accuracy_drop"], 100 * 2 / max(1, len(y)))
    if drop > allowed:
        r.problems.append(f"intent accuracy {100 * r.accuracy:.2f}% is {drop:.2f} points below {reference} "
                          f"(allowed {allowed:.2f})")
    for task, a in agree.items():
        if a < b["agreement"]:
            r.problems.append(f"{task} agreement with {reference} {a:.4f} < {b['agreement']}")
    r.passed = not r.problems
    r.agreements = agree  # type: ignore[attr-defined]
    return r


def _report(r: parity.ParityReport, reference: str) -> dict:
    d = {k: v for k, v in r.as_dict().items() if k not in ("max_abs_diff_embedding", "torch_accuracy", "agreements")}
    d |= {"reference": reference, "reference_accuracy": round(r.torch_accuracy, 6),
          "agreement_by_task": {k: round(v, 6) for k, v in getattr(r, "agreements", {}).items()}}
    return d


def latency_ms(path: Path, feed: dict[str, np.ndarray], threads: int = 1, runs: int = 300) -> dict:
    """Batch-1 latency of the model alone (ORT, CPU), over ``runs`` different turns."""
    sess = steps.cpu_session(path, threads)
    rows = [{k: feed[k][i : i + 1] for k in INPUTS} for i in range(min(runs, len(feed["text"])))]
    for r in rows[:20]:
        sess.run(list(OUTPUTS), r)
    t = []
    for r in rows:
        t0 = time.perf_counter()
        sess.run(list(OUTPUTS), r)
        t.append((time.perf_counter() - t0) * 1000)
    t.sort()
    return {"p50": round(statistics.median(t), 4), "p95": round(t[int(0.95 * (len(t) - 1))], 4), "runs": len(t),
            "threads": threads, "batch": 1}


def _versions() -> dict:
    import onnx
    import onnxruntime

    from export.products import _versions as v

    return v() | {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def calibration_rows(train: dict[str, np.ndarray], n: int = N_CALIBRATION, seed: int = 0) -> dict[str, np.ndarray]:
    """A random sample of composed training turns, stratified by which modalities are present."""
    rng = np.random.default_rng(seed)
    pattern = train["mask"] @ np.array([1, 2, 4], np.float32)
    idx: list[int] = []
    groups = np.unique(pattern)
    for g in groups:
        rows = np.flatnonzero(pattern == g)
        idx += rng.choice(rows, size=min(len(rows), int(np.ceil(n / len(groups)))), replace=False).tolist()
    idx = sorted(rng.permutation(idx)[:n].tolist())
    return {k: train[k][idx] for k in INPUTS}


# --- the whole stage -------------------------------------------------------------------------------------------


def export_fusion_model(ckpt_path: Path, bundle_dir: Path, data_path: Path | None = None,
                        precisions: Sequence[str] = ("int8",), opset: int = steps.DEFAULT_OPSET,
                        progress: Callable[[str], None] | None = None) -> dict:
    """Add (or replace) the ``fusion`` model in the existing bundle ``bundle_dir``; returns the manifest."""
    from models.calibrate import expected_calibration_error, fit_temperature, softmax
    from models.fusion.train import SUBSETS, load_checkpoint, load_data, metrics, offer, torch_outputs
    from runtime.voice.prosody import FEATURES

    say = progress or (lambda m: log.info("%s", m))
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ExportError(f"unknown precision {bad}; choose from {list(PRECISIONS)}")
    ckpt_path = Path(ckpt_path)
    model, ck = load_checkpoint(ckpt_path)
    meta = ck["meta"]
    data = load_data(Path(data_path) if data_path else ckpt_path.parent / "data.npz")
    if data["meta"].get("sources") != meta.get("sources") or data["meta"]["labels"] != meta["labels"]:
        raise ExportError(f"{data_path or ckpt_path.parent / 'data.npz'} was composed from other models or labels "
                          f"than {ckpt_path}: retrain, or point --data at the checkpoint's own data")
    bundle_dir = Path(bundle_dir)
    old, keep = steps.target_bundle(bundle_dir, MODEL, create=False,
                                    why=" and holds the intent and product models the fusion features came from")
    for role, src in meta["sources"].items():
        spec = old.models.get(src["model"])
        now = {v.file: old.sha256(v.file) for v in spec.variants.values()} if spec else None
        if now != src["files"]:
            raise ExportError(f"{bundle_dir}: its '{src['model']}' model ({role}) is not the one the fusion features "
                              "were computed with (sha256 differ); retrain with --bundle pointing at this bundle")

    full = SUBSETS["all (with face)"]
    dev_feed, _ = offer(data["dev"], full)
    y_dev = data["dev"]["y_intent"]
    calib = calibration_rows(data["train"])
    ref = torch_outputs(model, dev_feed)

    with tempfile.TemporaryDirectory(prefix="storeclerk-export-") as tmpd:
        tmp = Path(tmpd)
        say(f"torch → ONNX (opset {opset}, dynamic batch; {model.kind})")
        files = {"fp32": onnx_from_model(model, tmp / "model.fp32.onnx", opset)}
        outs = {"fp32": ort_outputs(files["fp32"], dev_feed)}
        reports = {"fp32": compare("fp32", ref, outs["fp32"], y_dev, "torch")}
        quant = None
        if "int8" in precisions:
            for recipe, opts in INT8_RECIPES:
                say(f"static INT8 (QDQ, per-channel, MinMax on {len(calib['text'])} training turns; {recipe})")
                files["int8"], kept = int8_static(files["fp32"], tmp / "model.int8.onnx", calib, **opts)
                outs["int8"] = ort_outputs(files["int8"], dev_feed)
                reports["int8"] = compare("int8", outs["fp32"], outs["int8"], y_dev, "fp32")
                quant = {"mode": "static", "format": "QDQ", "per_channel": True, "weight_type": "QInt8",
                         "activation_type": "QUInt8", "calibration_method": "MinMax", "recipe": recipe,
                         "reduce_range": bool(opts.get("reduce_range")), "fp32_nodes": kept,
                         "calibration_rows": int(len(calib["text"])),
                         "calibration_data": "composed training turns (real embeddings, recognizer outputs, prosody), "
                                             "stratified by which modalities are present",
                         "tool": "onnxruntime.quantization.quantize_static"}
                if reports["int8"].passed:
                    break
                say(f"int8 ({recipe}) misses parity: {'; '.join(reports['int8'].problems)}")
        say("parity (dev split): " + ", ".join(f"{p} intent agreement {r.agreements['intent']:.4f}, accuracy "  # type: ignore[attr-defined]
                                               f"{r.accuracy:.4f} (ref {r.torch_accuracy:.4f})" for p, r in reports.items()))
        failed = {p: r for p, r in reports.items() if (p in precisions or p == "fp32") and not r.passed}
        if failed:
            lines = [f"  {p}: {'; '.join(r.problems)}" for p, r in failed.items()]
            raise ExportError(f"fusion parity check failed; {bundle_dir} not changed:\n" + "\n".join(lines), code="parity")

        deployed = "int8" if "int8" in precisions else precisions[0]
        temperature = fit_temperature(outs[deployed][0].astype(np.float64), y_dev)
        decision = {"temperature": round(float(temperature), 5),
                    "ece_before": round(expected_calibration_error(softmax(outs[deployed][0].astype(np.float64)), y_dev), 5),
                    "ece_after": round(expected_calibration_error(softmax(outs[deployed][0] / temperature), y_dev), 5),
                    "refers_threshold": 0.5, "frustration_threshold": 0.5,
                    "fitted_on": f"dev split ({len(y_dev)} composed turns), {deployed} variant"}
        say(f"intent temperature {temperature:.3f} (ECE {decision['ece_before']} → {decision['ece_after']})")
        test = data["test"]
        test_metrics = {}
        for name in ("text", "all (with face)"):
            feed, _ = offer(test, SUBSETS[name])
            test_metrics[name] = {k: (round(v, 4) if isinstance(v, float) else v)
                                  for k, v in metrics(test, ort_outputs(files[deployed], feed), SUBSETS[name]).items()}
        lat = latency_ms(files[deployed], offer(test, full)[0])
        say(f"latency ({deployed}, batch 1, 1 thread): p50 {lat['p50']:.3f} ms")

        with steps.staged_bundle(old, bundle_dir, keep, MODEL) as stage:
            variants = steps.stage_variants(stage, MODEL, files, precisions, {"int8": {"quantization": quant}})
            dims = model.dims
            info = ck["info"]
            entry = {
                "task": "multimodal-fusion",
                "variant": model.kind,
                "variants": variants,
                "default_variant": deployed,
                "inputs": [{"name": "text", "dtype": "float32", "shape": ["batch", dims["text"]]},
                           {"name": "image", "dtype": "float32", "shape": ["batch", dims["image"]]},
                           {"name": "face", "dtype": "float32", "shape": ["batch", dims["face"]]},
                           {"name": "audio", "dtype": "float32", "shape": ["batch", dims["audio"]]},
                           {"name": "mask", "dtype": "float32", "shape": ["batch", len(OPTIONAL)]}],
                "outputs": [{"name": "intent_logits", "dtype": "float32", "shape": ["batch", model.n_intents]},
                            {"name": "refers_logit", "dtype": "float32", "shape": ["batch", 1]},
                            {"name": "frustration_logit", "dtype": "float32", "shape": ["batch", 1]}],
                "labels": {"intent": list(meta["labels"]), "refers": ["elsewhere", "in_view"],
                           "frustration": ["calm", "frustrated"]},
                "mask": {"order": list(OPTIONAL), "note": "1 = present; a missing modality is a zero input with its "
                                                          "mask at 0 (the graph multiplies each input by its mask)"},
                "features": {
                    "text": {"dim": dims["text"], "from": "models.intent output 'embedding', L2-normalised "
                                                          "(runtime.intents.IntentClassifier)"},
                    "image": {"labels": list(meta["image_labels"]), "product_ids": list(meta["product_ids"]),
                              "top_k": IMAGE_TOP_K,
                              "from": "models.products fine_logits → softmax at its open-set temperature → the top "
                                      f"{IMAGE_TOP_K} kept, rest 0; a scanned barcode is a one-hot"},
                    "face": {"classes": list(FACE_CLASSES),
                             "from": "FER2013 expression probabilities; SYNTHETIC in training (no labelled faces)"},
                    "audio": {"features": list(FEATURES), "from": "runtime.voice.prosody.Prosody.as_vector()"},
                },
                "decision": decision,
                "sources": meta["sources"],
                "parity": {p: _report(r, "torch" if p == "fp32" else "fp32") for p, r in reports.items()},
                "metrics": {"dev_torch": info.get("dev"), "test": test_metrics, "latency_ms": {deployed: lat},
                            "note": "composed turns (docs/fusion.md); frustration and face cues are synthetic "
                                    "compositions, not measured customer behaviour"},
                "training": {k: info.get(k) for k in ("best_epoch", "best_dev_score", "train_seconds", "parameters",
                                                      "config")} | {"arch": model.config},
                "data": {"composition": "models/fusion/compose.py, data/fusion/ (docs/fusion.md)",
                         "seed": meta.get("seed"), "counts": meta.get("counts"), "voices": meta.get("voices"),
                         "photos": meta.get("photos"), "negatives": meta.get("negatives"),
                         "utterances": meta.get("utterances"),
                         "sources": "utterances: data/intents + Bitext train part + CLINC150 oos (train/dev), "
                                    "data/eval + the bundle's Bitext hold-out (test); photos: Grocery Store train.txt "
                                    "(train/dev) and val.txt (test); speech: espeak-ng and Piper en_US-joe-medium "
                                    "(train/dev), espeak-ng en-gb-x-rp+f3 (test)"},
                "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "producer": _versions(),
            }
            manifest = {k: v for k, v in old.manifest.items() if k != "files"}
            manifest["models"] = {**{k: v for k, v in old.manifest["models"].items() if k != MODEL}, MODEL: entry}
            written = steps.commit_bundle(stage, manifest, keep, old, bundle_dir)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.fusion", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a fusion checkpoint (python -m models.fusion.train)")
    ap.add_argument("--bundle", required=True, help="bundle to add the 'fusion' model to (must hold its intent and "
                                                    "product models)")
    ap.add_argument("--data", default=None, help="composed data (default: data.npz beside the checkpoint)")
    ap.add_argument("--precisions", default="int8", help="comma list of fp32,int8 (default int8)")
    ap.add_argument("--opset", type=int, default=steps.DEFAULT_OPSET)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    try:
        manifest = export_fusion_model(Path(args.checkpoint), Path(args.bundle), args.data,
                                       [p for p in args.precisions.split(",") if p], args.opset,
                                       progress=lambda m: print(f"{time.perf_counter() - t0:6.1f}s {m}", file=sys.stderr))
    except Exception as exc:  # noqa: BLE001 - StoreclerkError and friends: one line for the operator
        if not getattr(exc, "code", None):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    e = manifest["models"][MODEL]
    t = e["metrics"]["test"]["all (with face)"]
    print(f"{args.bundle}: fusion ({e['variant']}) {', '.join(e['variants'])}; test intent {t['intent_accuracy']}, "
          f"deictic → product {t['deictic_resolved']}, frustration F1 {t['frustration_f1']}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
