"""The product model: checkpoint → ONNX (opset 17, dynamic batch) → static INT8 (QDQ) → parity → open-set
calibration on the deployed variant → the ``products`` entry of a bundle.

    python -m export.products --checkpoint build/products/checkpoint.pt --bundle models/bundles/kiosk \
        [--align build/align/head.pt]

With ``--align`` (an image ↔ text projection head, ``storeclerk train align``) the graph gets a third output,
``image_embedding`` [batch, 384]: the head applied to the same pooled features, L2-normalised, in the space of
the bundle's ``retrieval`` text encoder. Its parity is checked like the logits (cosine to the reference and the
held-out image → text recall), and the catalogue's text vectors plus one picture embedding per product are
stored next to the model (``products/align.npz``) for ``runtime.vision.align.CatalogMatcher``.

``storeclerk train products`` calls :func:`export_product_model` on the bundle it writes. An existing bundle
keeps every other model byte for byte (it must verify first; the manifest is rewritten by
``runtime.bundle.write_manifest`` in a staging directory that is then swapped in, as ``export/retrieval.py``
does); a missing one is created with the product model alone.

INT8: static, QDQ format, weights per output channel (QInt8), activations QUInt8 with ranges from
:data:`N_CALIBRATION` preprocessed *training* photos (class-stratified; the held-out split only judges).
Unlike the text models, a CNN's activations do not change range with the input length, so calibrated static
ranges beat dynamic quantisation on CPU (no per-call range computation, integer convolutions end to end).
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
from models.products.train import ProductCheckpoint
from runtime.errors import ExportError

log = logging.getLogger("storeclerk.export")

MODEL_NAME = "products"
INPUT = "image"
OUTPUTS = ("fine_logits", "coarse_logits")
EMBEDDING = "image_embedding"
ALIGN_FILE = "align.npz"
# The embedding's own parity bounds: mean cosine to the reference (only catches a broken graph) and the
# held-out image → text R@1 drop, held to the same one point (or two photos) as the fine accuracy.
EMBEDDING_BOUNDS = {"fp32": {"mean_cosine": 0.9999, "max_recall_drop": 0.2},
                    "int8": {"mean_cosine": 0.98, "max_recall_drop": 1.0}}
PRECISIONS = ("fp32", "int8")
N_CALIBRATION = 240
NEGATIVES_PER_KIND = 60
# The open-set threshold rejects this share of the fitting half of the out-of-catalogue stand-ins (capped by
# --max-in-catalog-rejection on the held-out photos); see models/products/openset.py for why.
MIN_NEGATIVES_REJECTED = 0.9
# fp32 ONNX must match torch. INT8's requirement is accuracy within one point of fp32 (DESIGN §6), or two
# images on a small held-out split; its agreement bound only catches a broken graph: a barely trained model
# has near-tied logits whose order INT8 may swap without costing accuracy (a 96-px smoke model: 93 %
# agreement at equal accuracy; a 192-px one: 99 %).
BOUNDS = {"fp32": {"agreement": 0.995, "max_accuracy_drop": 0.2},
          "int8": {"agreement": 0.90, "max_accuracy_drop": 1.0}}
# INT8 recipes tried in order until one passes parity. This CPU class (AVX2, no VNNI) multiplies u8 activations
# by s8 weights with VPMADDUBSW, whose int16 pair sums saturate; the stem convolution (full-range image input,
# 27-tap kernels) is where that bites, so it stays fp32 (measured on a Lite0 smoke model: all-INT8 lost
# 7 points, stem in fp32 lost none). 7-bit weights (reduce_range) avoid the saturation everywhere else.
INT8_RECIPES = (
    ("stem conv kept fp32", {"exclude": ("stem",)}),
    ("stem conv kept fp32, 7-bit weights", {"exclude": ("stem",), "reduce_range": True}),
    ("stem conv and heads kept fp32, 7-bit weights", {"exclude": ("stem", "heads"), "reduce_range": True}),
)


# --- steps -----------------------------------------------------------------------------------------------------


class _Named(torch.nn.Module):
    """Names the graph's input ``image`` and its outputs (fine_logits, coarse_logits[, image_embedding]): the
    bundle's contract. The projection reads the pooled features the classifier heads read (one backbone pass)."""

    def __init__(self, model, projection=None):
        super().__init__()
        self.model = model
        self.projection = projection

    def forward(self, image):
        if self.projection is None:
            return self.model(image)
        f = self.model.features(image)
        return self.model.fine(f), self.model.coarse(f), self.projection(f)


def onnx_from_model(model, out: Path, size: int, opset: int = steps.DEFAULT_OPSET, projection=None) -> Path:
    import onnx

    if opset < steps.MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: the bundle needs opset ≥ {steps.MIN_OPSET}")
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros((2, 3, size, size), dtype=torch.float32)
    names = list(OUTPUTS) + ([EMBEDDING] if projection is not None else [])
    axes = {INPUT: {0: "batch"}, **{o: {0: "batch"} for o in names}}
    with warnings.catch_warnings():
        # Same exporter as the text models (export/steps.py): the dynamo one needs onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(_Named(model, projection).eval(), (dummy,), str(out), input_names=[INPUT],
                          output_names=names, dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
                          dynamo=False)
    onnx.checker.check_model(str(out))
    return out


class _Reader:
    """onnxruntime.quantization's calibration data reader over preprocessed images."""

    BATCH = 16

    def __init__(self, x: np.ndarray, batch: int = BATCH):
        self.x, self.batch, self.i = x, batch, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        b = self.x[self.i : self.i + self.batch]
        self.i += self.batch
        return {INPUT: b}

    def rewind(self):
        self.i = 0


def sensitive_nodes(path: Path, which: Sequence[str]) -> list[str]:
    """Names of the stem convolution (the first Conv) and/or the classifier heads (Gemm/MatMul nodes)."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    out: list[str] = []
    if "stem" in which:
        out += [n.name for n in nodes if n.op_type == "Conv"][:1]
    if "heads" in which:
        out += [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    return out


def int8_static(src: Path, out: Path, calib_x: np.ndarray, exclude: Sequence[str] = (), reduce_range: bool = False,
                method: str = "MinMax") -> tuple[Path, list[str]]:
    """Static QDQ INT8; returns the model and the nodes left in fp32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prep = out.with_suffix(".prep.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs advice per node on the root logger
    try:
        try:
            # Folds batch norms into convolutions first, so each conv gets one weight scale per channel.
            quant_pre_process(str(src), str(prep), skip_symbolic_shape=True)
        except Exception as exc:  # noqa: BLE001 - the plain graph still quantises, a little less well
            log.info("quantisation pre-processing failed (%s); quantising the exported graph", exc)
            shutil.copyfile(src, prep)
        kept = sensitive_nodes(prep, exclude)
        # Equal batches: the histogram calibrators stack per-batch arrays and fail on a ragged last batch.
        n = max(_Reader.BATCH, len(calib_x) - len(calib_x) % _Reader.BATCH)
        quantize_static(str(prep), str(out), _Reader(calib_x[:n]), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method), nodes_to_exclude=kept)
    finally:
        root.setLevel(level)
        prep.unlink(missing_ok=True)
    return out, kept


def ort_outputs(path: Path, x: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
    """Every output of the graph, by name."""
    sess = steps.cpu_session(path)
    names = [o.name for o in sess.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for s in range(0, len(x), batch):
        for n, v in zip(names, sess.run(names, {INPUT: x[s : s + batch]}), strict=True):
            parts[n].append(v)
    return {n: np.concatenate(v) for n, v in parts.items()}


def ort_logits(path: Path, x: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    out = ort_outputs(path, x, batch)
    return out["fine_logits"], out["coarse_logits"]


def compare_embedding(variant: str, ref: np.ndarray, emb: np.ndarray, y: np.ndarray, text: np.ndarray,
                      r: parity.ParityReport, reference: str) -> dict:
    """Cosine of each image embedding to the reference's, and held-out image → text R@1 of both (against the
    products' text vectors); problems are added to ``r`` (one verdict per variant)."""
    from models.align.head import recall_i2t

    cos = parity.row_cosines(ref, emb)
    r_ref, r_var = recall_i2t(ref, y, text)["R@1"], recall_i2t(emb, y, text)["R@1"]
    b = EMBEDDING_BOUNDS[variant]
    drop = 100 * (r_ref - r_var)
    allowed = max(b["max_recall_drop"], 100 * 2 / max(1, len(y)))
    if cos.mean() < b["mean_cosine"]:
        r.problems.append(f"image_embedding mean cosine to {reference} {cos.mean():.4f} < {b['mean_cosine']}")
    if drop > allowed:
        r.problems.append(f"image→text R@1 {100 * r_var:.2f}% is {drop:.2f} points below {reference} (allowed {allowed:.2f})")
    r.passed = not r.problems
    r.max_abs_diff_embedding = float(np.abs(ref - emb).max())
    return {"mean_cosine": round(float(cos.mean()), 6), "min_cosine": round(float(cos.min()), 6),
            "i2t_R@1": round(r_var, 4), "reference_i2t_R@1": round(r_ref, 4), "i2t_R@1_delta_points": round(-drop, 3)}


def compare(variant: str, ref_fine: np.ndarray, fine: np.ndarray, y: np.ndarray,
            reference: str = "torch") -> parity.ParityReport:
    """Top-1 agreement with the reference and the held-out accuracy drop, against ``BOUNDS``."""
    r = parity.ParityReport(variant, len(ref_fine))
    cos = parity.row_cosines(ref_fine, fine)
    r.mean_cosine, r.min_cosine = float(cos.mean()), float(cos.min())
    r.max_abs_diff_logits = float(np.abs(ref_fine - fine).max())
    r.agreement = float((ref_fine.argmax(1) == fine.argmax(1)).mean())
    r.accuracy = float((fine.argmax(1) == y).mean())
    r.torch_accuracy = float((ref_fine.argmax(1) == y).mean())
    bounds = BOUNDS[variant]
    drop = 100 * (r.torch_accuracy - r.accuracy)
    allowed = max(bounds["max_accuracy_drop"], 100 * 2 / max(1, len(y)))
    if drop > allowed:
        r.problems.append(f"accuracy {100 * r.accuracy:.2f}% is {drop:.2f} points below {reference} (allowed {allowed:.2f})")
    min_agree = min(bounds["agreement"], 1 - 3 / max(1, len(y)))  # three flips on a tiny split are not a verdict
    if r.agreement < min_agree:
        r.problems.append(f"top-1 agreement with {reference} {r.agreement:.4f} < {min_agree:.4f}")
    r.passed = not r.problems
    return r


def _report(r: parity.ParityReport, reference: str) -> dict:
    d = {k: v for k, v in r.as_dict().items() if k not in ("max_abs_diff_embedding", "torch_accuracy")}
    d["reference"] = reference
    d["reference_accuracy"] = round(r.torch_accuracy, 6)
    d["accuracy_delta_points"] = round(100 * (r.accuracy - r.torch_accuracy), 3)
    return d


def latency_ms(path: Path, size: int, threads: int = 2, runs: int = 60) -> dict:
    """Batch-1 latency of the model alone on CPU, ``threads`` intra-op threads (the kiosk budget's 2 cores)."""
    sess = steps.cpu_session(path, threads)
    names = [o.name for o in sess.get_outputs()]
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    for _ in range(5):
        sess.run(names, {INPUT: x})
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(names, {INPUT: x})
        t.append((time.perf_counter() - t0) * 1000)
    t.sort()
    return {"p50": round(statistics.median(t), 3), "p95": round(t[int(0.95 * (len(t) - 1))], 3), "runs": runs,
            "threads": threads, "batch": 1}


def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    try:
        from runtime import __version__ as sc
    except ImportError:  # a same-named namespace directory (tests/runtime under pytest) shadows the package root
        from importlib.metadata import version

        sc = version("storeclerk")
    return {"storeclerk": sc, "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _images(items, params: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    """The kiosk's preprocessing on the original files (BGR as read), plus the decoded images."""
    from models.products.data import load_item_image
    from runtime.errors import DataError
    from runtime.vision.products import preprocess

    try:
        imgs = [load_item_image(it) for it in items]
    except DataError as exc:
        raise ExportError(exc.message) from exc
    return np.stack([preprocess(im, params) for im in imgs]), imgs


def _load_alignment(path, old, catalog, n_fine: int, say) -> dict:
    """The head, folded for export, and the catalogue's text vectors from the *target bundle's* text encoder,
    which must be the one the head was trained against (another encoder is another space)."""
    from models.align.head import folded, load_head
    from models.align.texts import embed_views, read_catalog_texts
    from runtime.bundle import sha256_file
    from runtime.embedder import MODEL as TEXT_MODEL
    from runtime.embedder import SentenceEmbedder
    from runtime.engine import Engine
    from runtime.errors import ConfigError, DataError

    try:
        head, meta = load_head(path)
    except ConfigError as exc:
        raise ExportError(exc.message) from exc
    if old is None or TEXT_MODEL not in old.models:
        raise ExportError(f"--align needs the bundle's '{TEXT_MODEL}' text encoder to embed the catalogue; "
                          "export into a bundle that has one (e.g. a copy of models/bundles/kiosk)")
    spec = old.models[TEXT_MODEL]
    variant = spec.pick_variant(["int8", "fp32"])
    sha = sha256_file(old.root / variant.file)
    trained = (meta.get("text_encoder") or {}).get("sha256")
    if trained != sha:
        raise ExportError(f"{path} was trained against text encoder {str(trained)[:12]}…, but this bundle's "
                          f"{variant.file} is {sha[:12]}…: retrain the head against this bundle "
                          "(storeclerk train align --text-bundle ...)")
    cat_path = Path(catalog or meta.get("catalog") or "data/kb/catalog.csv")
    try:
        products = read_catalog_texts(cat_path, n_fine)
    except DataError as exc:
        raise ExportError(exc.message) from exc
    engine = Engine(old.root)
    try:
        bank = embed_views(products, SentenceEmbedder(engine).embed)
    finally:
        engine.close()
    readout = meta.get("text_readout", "mean")
    say(f"alignment head {Path(path).name}: text read-out {readout}, {len(bank.vectors)} catalogue text views")
    return {"head": head, "projection": folded(head), "meta": meta, "bank": bank, "products": products,
            "catalog": cat_path, "readout": readout, "text": bank.product_vectors(readout),
            "text_encoder": {"model": TEXT_MODEL, "file": variant.file, "sha256": sha}, "path": Path(path)}


def _catalog_pictures(al: dict) -> tuple[list[np.ndarray], list[str]]:
    """The catalogue's own product pictures (``catalog.csv``'s ``image`` column, under ``images/`` next to it),
    the ones the kiosk shows; a product without a readable picture is an error (search_text would skip it)."""
    import csv

    from runtime.errors import InputError
    from runtime.vision.images import load_image

    with open(al["catalog"], newline="", encoding="utf-8-sig") as f:
        rows = {int(r["fine_id"]): r for r in csv.DictReader(f)}
    imgs, names = [], []
    for p in al["products"]:
        name = (rows[p.fine_id].get("image") or "").strip()
        path = al["catalog"].parent / "images" / name
        try:
            imgs.append(load_image(path))
        except InputError as exc:
            raise ExportError(f"{al['catalog']}: product {p.product_id}: picture {path}: {exc.message}") from exc
        names.append(name)
    return imgs, names


# --- the whole stage -------------------------------------------------------------------------------------------


def export_product_model(ckpt: ProductCheckpoint, bundle_dir: Path, precisions: Sequence[str] = ("int8",),
                         opset: int = steps.DEFAULT_OPSET, max_in_catalog_rejection: float = 0.05,
                         negatives_per_kind: int = NEGATIVES_PER_KIND, negatives_dirs: Sequence[str] = (),
                         bundle_name: str | None = None, extra_meta: dict | None = None,
                         progress: Callable[[str], None] | None = None, align: str | os.PathLike[str] | None = None,
                         min_negatives_rejected: float | None = MIN_NEGATIVES_REJECTED,
                         open_set_score_kind: str | None = "auto",
                         catalog: str | os.PathLike[str] | None = None) -> dict:
    """Add (or replace) the ``products`` model in ``bundle_dir`` (created if missing); returns the manifest.
    ``align``: an alignment head file (adds the ``image_embedding`` output); ``catalog``: the catalogue CSV whose
    text and pictures the kiosk matches against (default: the one the head was trained with)."""
    from models.calibrate import expected_calibration_error, fit_temperature, softmax
    from models.products import openset
    from runtime.vision.products import open_set_score

    say = progress or (lambda m: log.info("%s", m))
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ExportError(f"unknown precision {bad}; choose from {list(PRECISIONS)}")
    if not ckpt.heldout:
        raise ExportError("the checkpoint has no held-out images to check parity and calibrate on (train with a hold-out)")
    bundle_dir = Path(bundle_dir)
    old, keep = steps.target_bundle(bundle_dir, MODEL_NAME)

    al = _load_alignment(align, old, catalog, ckpt.catalog.n_fine, say) if align else None
    params = dict(ckpt.preprocess)
    say(f"preprocessing {len(ckpt.heldout)} held-out and {min(len(ckpt.calibration), N_CALIBRATION)} calibration images")
    x_held, held_bgr = _images(ckpt.heldout, params)
    y = np.array([i.fine for i in ckpt.heldout])
    yc = np.array([i.coarse for i in ckpt.heldout])
    x_cal, _ = _images(ckpt.calibration[:N_CALIBRATION], params)
    model = ckpt.model()
    from models.products.train import torch_logits

    ref_fine, _ = torch_logits(model, x_held)
    ref_emb = None
    if al is not None:
        with torch.no_grad():
            ref_emb = al["projection"](model.features(torch.from_numpy(x_held))).numpy()
    emb_parity: dict[str, dict] = {}

    def check(variant: str, ref_logits: np.ndarray, ref_e: np.ndarray | None, got: dict, reference: str):
        r = compare(variant, ref_logits, got["fine_logits"], y, reference)
        if ref_e is not None:
            emb_parity[variant] = compare_embedding(variant, ref_e, got[EMBEDDING], y, al["text"], r, reference)
        return r

    def pair(d: dict) -> tuple[np.ndarray, np.ndarray]:
        return d["fine_logits"], d["coarse_logits"]

    with tempfile.TemporaryDirectory(prefix="storeclerk-export-") as tmpd:
        tmp = Path(tmpd)
        say(f"torch → ONNX (opset {opset}, dynamic batch{', with image_embedding' if al else ''})")
        fp32 = onnx_from_model(model, tmp / "model.fp32.onnx", ckpt.size, opset,
                               projection=al["projection"] if al else None)
        full = {"fp32": ort_outputs(fp32, x_held)}
        outs = {"fp32": pair(full["fp32"])}
        reports = {"fp32": check("fp32", ref_fine, ref_emb, full["fp32"], "torch")}
        files = {"fp32": fp32}
        quant = None
        if "int8" in precisions:
            for recipe, opts in INT8_RECIPES:
                say(f"static INT8 (QDQ, per-channel, MinMax on {len(x_cal)} training images; {recipe})")
                files["int8"], kept = int8_static(fp32, tmp / "model.int8.onnx", x_cal, opts["exclude"],
                                                  opts.get("reduce_range", False))
                full["int8"] = ort_outputs(files["int8"], x_held)
                outs["int8"] = pair(full["int8"])
                reports["int8"] = check("int8", outs["fp32"][0], full["fp32"].get(EMBEDDING) if al else None,
                                        full["int8"], "fp32")
                quant = {"mode": "static", "format": "QDQ", "per_channel": True, "weight_type": "QInt8",
                         "activation_type": "QUInt8", "calibration_method": "MinMax", "recipe": recipe,
                         "reduce_range": bool(opts.get("reduce_range")), "fp32_nodes": kept,
                         "calibration_images": len(x_cal), "tool": "onnxruntime.quantization.quantize_static",
                         "graph": "quant_pre_process (ORT optimisation, batch norms folded)"}
                if reports["int8"].passed:
                    break
                say(f"int8 ({recipe}) misses parity: {'; '.join(reports['int8'].problems)}")
        say("parity: " + ", ".join(f"{p} agreement {r.agreement:.4f}, accuracy {r.accuracy:.4f} (ref {r.torch_accuracy:.4f})"
                                   for p, r in reports.items()))
        failed = {p: r for p, r in reports.items() if p in precisions or p == "fp32"}
        failed = {p: r for p, r in failed.items() if not r.passed}
        if failed:
            lines = [f"  {p}: {'; '.join(r.problems)}" for p, r in failed.items()]
            raise ExportError(f"product model parity check failed; {bundle_dir} not changed:\n" + "\n".join(lines),
                              code="parity")

        deployed = "int8" if "int8" in precisions else precisions[0]
        fine, coarse = outs[deployed]
        say(f"open-set calibration on the {deployed} variant")
        temperature = fit_temperature(fine.astype(np.float64), y)
        neg_imgs, neg_kinds = openset.negatives(held_bgr, negatives_per_kind, seed=0, extra_dirs=negatives_dirs)
        from runtime.vision.products import preprocess

        neg_out = ort_outputs(files[deployed], np.stack([preprocess(im, params) for im in neg_imgs]))
        neg_fine = neg_out["fine_logits"]
        kinds = ("max_prob", "neg_energy", "coarse_prob") + (("text_sim",) if al else ())
        f2c = dict(fine_to_coarse=ckpt.catalog.fine_to_coarse, n_coarse=ckpt.catalog.n_coarse)

        def sims(emb):
            return None if al is None else emb @ al["text"].T

        in_s = {k: open_set_score(fine.astype(np.float64), temperature, k, **f2c,
                                  text_sims=sims(full[deployed].get(EMBEDDING))) for k in kinds}
        neg_s = {k: open_set_score(neg_fine.astype(np.float64), temperature, k, **f2c,
                                   text_sims=sims(neg_out.get(EMBEDDING))) for k in kinds}
        # "auto": the aligned text similarity when the model has it. Every score separates the held-out photos
        # from the stand-ins about equally well (AUROC 0.98-0.99: the held-out photos are near-duplicates of
        # training ones), so that AUROC cannot rank them; on unseen photos (val.txt, docs/products.md) the
        # text similarity separated best (AUROC 0.93 vs 0.88-0.89 for the probabilities): the contrastive head,
        # trained on augmented views and stopped on held-out photos, is not saturated by the backbone's memory.
        kind = ("text_sim" if al else None) if open_set_score_kind == "auto" else open_set_score_kind
        if kind is not None and kind not in kinds:
            raise ExportError(f"open-set score {kind!r} is not available here (choose from {', '.join(kinds)})")
        rule = openset.fit_rule(in_s, neg_s, neg_kinds, max_in_catalog_rejection, correct=fine.argmax(1) == y,
                                min_negatives_rejected=min_negatives_rejected, score=kind)
        from runtime.vision.products import coarse_from_fine

        probs = softmax(fine.astype(np.float64) / temperature)
        coarse_from = ckpt.meta.get("coarse_from", "fine_sum")
        cpred = (coarse.argmax(1) if coarse_from == "head"
                 else coarse_from_fine(probs, ckpt.catalog.fine_to_coarse, ckpt.catalog.n_coarse).argmax(1))
        open_set = {
            "temperature": round(float(temperature), 5),
            "ece_before": round(expected_calibration_error(softmax(fine.astype(np.float64)), y), 5),
            "ece_after": round(expected_calibration_error(probs, y), 5),
            **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in rule.items()},
            "fitted_on_variant": deployed,
            "negatives": f"{negatives_per_kind} each of {', '.join(sorted(set(neg_kinds)))} (models/products/openset.py): "
                         "small crops and 4x4 jigsaws of held-out photos, crops of scikit-learn's sample photos"
                         f"{' and ' + ', '.join(map(str, negatives_dirs)) if negatives_dirs else ''}, flat colours/noise",
        }
        lat = latency_ms(files[deployed], ckpt.size)
        say(f"latency ({deployed}, batch 1, 2 threads): p50 {lat['p50']:.2f} ms")
        align_entry, align_arrays = None, None
        if al is not None:
            from models.align.head import recall_i2t, recall_t2i

            pics, pic_names = _catalog_pictures(al)
            pic_emb = ort_outputs(files[deployed], np.stack([preprocess(im, params) for im in pics]))[EMBEDDING]
            held_emb = full[deployed][EMBEDDING]
            align_arrays = {"product_ids": np.asarray([p.product_id for p in al["products"]]),
                            "labels": np.asarray([p.canonical for p in al["products"]]),
                            "text_canonical": al["bank"].canonical, "text_mean": al["bank"].mean_views,
                            "image_vectors": pic_emb.astype(np.float32)}
            hm = al["meta"].get("metrics", {})
            align_entry = {
                "file": f"{MODEL_NAME}/{ALIGN_FILE}",
                "output": EMBEDDING,
                "dim": int(held_emb.shape[1]),
                "space": "the bundle's 'retrieval' sentence encoder (all-MiniLM-L6-v2), L2-normalised",
                "text_encoder": al["text_encoder"],
                "text_readout": al["readout"],
                "vectors": {"text_canonical": "each product's display name", "text_mean":
                            "mean of its text views (name, aliases, 'a photo of …', kind, description sentences)",
                            "image_vectors": f"the catalogue pictures ({al['catalog'].parent / 'images'}) through "
                                             f"the {deployed} graph"},
                "catalog": str(al["catalog"]),
                "head": {"source": str(al["path"]), "sha256": _sha(al["path"]),
                         "architecture": _head_arch(al["head"]),
                         "training": {k: v for k, v in al["meta"].get("training", {}).items() if k != "history"},
                         "data": al["meta"].get("data")},
                "metrics": {
                    "heldout_deployed": {"n": int(len(y)),
                                         "i2t": {k: round(v, 4) for k, v in recall_i2t(held_emb, y, al["text"]).items()},
                                         "t2i": {k: round(v, 4) if isinstance(v, float) else v
                                                 for k, v in recall_t2i(held_emb, y, al["text"]).items()},
                                         "variant": deployed},
                    "torch_head": {k: hm[k] for k in ("val", "heldout", "iconic", "queries", "classifier_val") if k in hm},
                },
                "parity": emb_parity,
            }

        with steps.staged_bundle(old, bundle_dir, keep, MODEL_NAME) as stage:
            if align_arrays is not None:
                np.savez(stage / MODEL_NAME / ALIGN_FILE, **align_arrays)
            variants = steps.stage_variants(stage, MODEL_NAME, files, precisions, {"int8": {"quantization": quant}})
            cat = ckpt.catalog
            heldout_metrics = {
                "n": int(len(y)),
                "fine_accuracy": round(float((fine.argmax(1) == y).mean()), 4),
                "coarse_accuracy": round(float((cpred == yc).mean()), 4),
                "variant": deployed,
                "split": "held-out part of the training list (never trained on; used for early stopping, "
                         "temperature and threshold, so optimistic for unseen photos: see eval on val.txt)",
            }
            entry = {
                "task": "image-classification",
                "variants": variants,
                "default_variant": deployed,
                "inputs": [{"name": INPUT, "dtype": "float32", "shape": ["batch", 3, ckpt.size, ckpt.size]}],
                "outputs": [{"name": "fine_logits", "dtype": "float32", "shape": ["batch", cat.n_fine]},
                            {"name": "coarse_logits", "dtype": "float32", "shape": ["batch", cat.n_coarse]}]
                           + ([{"name": EMBEDDING, "dtype": "float32", "shape": ["batch", align_entry["dim"]]}]
                              if align_entry else []),
                "labels": cat.as_dict(),
                "preprocess": {**params, "note": "BGR frame → centre square of crop_fraction × short side → resize "
                                                 "→ RGB → (x - mean) / std (runtime.vision.products.preprocess)"},
                "coarse_from": coarse_from,
                "open_set": open_set,
                "parity": {p: _report(r, "torch" if p == "fp32" else "fp32") for p, r in reports.items()},
                **({"align": align_entry} if align_entry else {}),
                "metrics": {"heldout": heldout_metrics, "latency_ms": {deployed: lat},
                            "training_heldout_torch": ckpt.meta.get("heldout")},
                "arch": ckpt.arch,
                "provenance": ckpt.meta.get("provenance"),
                "training": {k: ckpt.meta.get(k) for k in ("config", "augmentation", "best_epoch", "stopped",
                                                          "train_seconds", "steps", "counts", "init", "machine")}
                            | {"history": ckpt.history},
                "data": {**(ckpt.meta.get("data") or {}),
                         "calibration": f"INT8 ranges: {len(x_cal)} class-stratified training-split photos; temperature "
                                        f"and open-set threshold: the {len(y)} held-out photos + generated negatives"},
                "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "producer": _versions(),
                **(extra_meta or {}),
            }
            if old is not None:
                manifest = {k: v for k, v in old.manifest.items() if k != "files"}
                manifest["models"] = {**{k: v for k, v in old.manifest["models"].items() if k != MODEL_NAME},
                                      MODEL_NAME: entry}
            else:
                from runtime.bundle import FORMAT, FORMAT_VERSION

                manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": bundle_name or bundle_dir.name,
                            "created_utc": entry["created_utc"], "producer": entry["producer"],
                            "models": {MODEL_NAME: entry}}
            written = steps.commit_bundle(stage, manifest, keep, old, bundle_dir)
    return written


def _sha(path: Path) -> str:
    from runtime.bundle import sha256_file

    return sha256_file(path)


def _head_arch(head) -> str:
    lin = [m for m in head.proj if isinstance(m, torch.nn.Linear)]
    dims = [lin[0].in_features] + [m.out_features for m in lin]
    return " → ".join(map(str, dims)) + (" (ReLU MLP)" if len(lin) > 1 else " (linear)") + ", L2-normalised"


# --- command line ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.products", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a product checkpoint (storeclerk train products --keep-checkpoint)")
    ap.add_argument("--bundle", required=True, help="bundle directory to add the 'products' model to (created if missing)")
    ap.add_argument("--precisions", default="int8", help="comma list of fp32,int8 (default int8)")
    ap.add_argument("--opset", type=int, default=steps.DEFAULT_OPSET)
    ap.add_argument("--max-in-catalog-rejection", type=float, default=0.05,
                    help="cap: never turn away more than this share of held-out photos (default 0.05)")
    ap.add_argument("--min-negatives-rejected", type=float, default=MIN_NEGATIVES_REJECTED,
                    help="threshold: turn away this share of the out-of-catalogue stand-ins (default 0.9); "
                         "0 = the old rule (held-out quantile alone)")
    ap.add_argument("--negatives", action="append", default=[], help="extra folder of non-catalogue photos (repeatable)")
    ap.add_argument("--open-set-score", default="auto",
                    choices=("auto", "best-auroc", "max_prob", "neg_energy", "coarse_prob", "text_sim"),
                    help="rejection score; auto = text_sim with --align, else the best held-out AUROC")
    ap.add_argument("--align", help="alignment head (storeclerk train align --out FILE): adds the image_embedding output")
    ap.add_argument("--catalog", help="catalogue CSV for --align's text and pictures (default: the head's)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    try:
        ckpt = ProductCheckpoint.load(args.checkpoint)
        manifest = export_product_model(ckpt, Path(args.bundle), [p for p in args.precisions.split(",") if p],
                                        args.opset, args.max_in_catalog_rejection, negatives_dirs=args.negatives,
                                        progress=lambda m: print(f"{time.perf_counter() - t0:6.1f}s {m}", file=sys.stderr),
                                        align=args.align, catalog=args.catalog,
                                        min_negatives_rejected=args.min_negatives_rejected or None,
                                        open_set_score_kind=None if args.open_set_score == "best-auroc"
                                        else args.open_set_score)
    except Exception as exc:  # noqa: BLE001 - StoreclerkError and friends: one line for the operator
        print(f"error: {exc}", file=sys.stderr)
        return 1
    e = manifest["models"][MODEL_NAME]
    print(f"{args.bundle}: products {', '.join(e['variants'])}; held-out fine {e['metrics']['heldout']['fine_accuracy']}"
          f", coarse {e['metrics']['heldout']['coarse_accuracy']}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
