"""Named conversion steps, each taking paths and returning the artifact it wrote.

torch → ONNX (``onnx_from_torch``) → ORT graph optimisation (``optimized_from_onnx``) →
dynamic INT8 (``int8_from_onnx``) and FP16 (``fp16_from_onnx``). Every step is checked against the
previous stage by ``export.parity``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch

from runtime.errors import ExportError

log = logging.getLogger("storeclerk.export")

DEFAULT_OPSET = 17
MIN_OPSET = 17


class _TwoOutputs(torch.nn.Module):
    """Exports exactly (embedding, logits): names and order are the bundle's contract."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask)


def onnx_from_torch(model: torch.nn.Module, out: Path, opset: int = DEFAULT_OPSET,
                    input_names: Sequence[str] = ("input_ids", "attention_mask"),
                    output_names: Sequence[str] = ("embedding", "logits")) -> Path:
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: the bundle needs opset ≥ {MIN_OPSET}")
    model = _TwoOutputs(model).eval()
    dummy = (torch.ones((2, 16), dtype=torch.long), torch.ones((2, 16), dtype=torch.long))
    axes = {n: {0: "batch", 1: "sequence"} for n in input_names} | {n: {0: "batch"} for n in output_names}
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript and yields a
        # graph ONNX Runtime's BERT fusion does not recognise; the TorchScript one still does both jobs.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, dummy, str(out), input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    onnx.checker.check_model(str(out))
    return out


def optimized_from_onnx(src: Path, out: Path, num_heads: int = 12, hidden_size: int = 384) -> Path:
    """ORT's transformer fusions (attention, LayerNorm, GELU): fewer, larger kernels on CPU.

    The fused ops live in the com.microsoft domain, so this graph is for ONNX Runtime only; TensorRT
    gets the plain graph (see ``fp16_from_onnx``).
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    # The fused EmbedLayerNormalization hides the 47 MB word-embedding table from the quantiser; unfused,
    # its Gather is quantised to INT8 and the bundle shrinks from ~59 MB to ~23 MB.
    options.enable_embed_layer_norm = False
    opt = optimizer.optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                   opt_level=1, use_gpu=False, optimization_options=options)
    opt.save_model_to_file(str(out))
    log.info("graph optimisation: %s", opt.get_fused_operator_statistics())
    return out


def int8_from_onnx(src: Path, out: Path, per_channel: bool = True, exclude: Sequence[str] = ()) -> Path:
    """Dynamic INT8: weights quantised per output channel, activations quantised at run time.

    Per-channel weights keep the sentence embedding's cosine with fp32 ≥ 0.99 on MiniLM; per-tensor
    drops it to about 0.96–0.97 (measured, DESIGN §5).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser's advice to pre-process does not apply to a fused graph
    # Shape inference cannot type the outputs of ORT's fused (com.microsoft) ops: tell it they are float.
    quantize_dynamic(str(src), str(out), per_channel=per_channel, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Attention", "Gather"], nodes_to_exclude=list(exclude),
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    root.setLevel(level)
    return out


def bert_ffn_output_matmuls(path: Path) -> list[str]:
    """The feed-forward output projections: their inputs (after GELU) carry the widest activation ranges
    in a BERT layer, so per-tensor dynamic activation quantisation loses the most there."""
    g = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in g.node
            if n.op_type == "MatMul" and n.name.endswith("/output/dense/MatMul") and "attention" not in n.name]


def fp16_from_onnx(src: Path, out: Path) -> Path:
    """FP16 weights with fp32 inputs/outputs, for CUDA / TensorRT; the I/O contract stays the same."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(out))
    return out


def opset_of(path: Path) -> int:
    m = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)


def target_bundle(bundle_dir: Path, model: str, *, create: bool = True, why: str = ""):
    """The bundle a model export adds ``model`` to: ``(old bundle or None, files to keep)``. Every other model's
    files are kept byte for byte; the bundle must verify first (a model is never added to a broken bundle), and
    no other model may keep files under ``model/``. ``create``: a missing or empty directory starts a new
    bundle; otherwise the bundle must exist (``why`` says what it must hold)."""
    from runtime.bundle import load_bundle

    bundle_dir = Path(bundle_dir)
    old = None
    if (bundle_dir / "manifest.json").exists() or not create:
        try:
            old = load_bundle(bundle_dir, verify=True)
        except Exception as exc:
            raise ExportError(f"{bundle_dir}: cannot add a model to a bundle that does not verify{why}: {exc}") from exc
    elif bundle_dir.exists() and any(bundle_dir.iterdir()):
        raise ExportError(f"{bundle_dir} exists, is not empty and holds no bundle: refusing to overwrite it")
    prefix = f"{model}/"
    keep: dict = {}
    if old is not None:
        keep = {rel: e for rel, e in old.manifest["files"].items() if not rel.startswith(prefix)}
        for name, spec in old.models.items():
            if name != model and any(v.file.startswith(prefix) for v in spec.variants.values()):
                raise ExportError(f"model {name!r} keeps files under {prefix}: refusing to overwrite them")
    return old, keep


def cpu_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session for export-time checks (parity, calibration, latency), quiet."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def stage_variants(stage: Path, model: str, files: dict, precisions: Sequence[str], extra: dict | None = None) -> dict:
    """Copy each precision's ONNX file into ``stage/model/`` and describe it for the manifest; ``extra[prec]``
    (its quantization recipe, a note) is added to that variant's entry."""
    variants = {}
    for prec in precisions:
        rel = f"{model}/model.{prec}.onnx"
        shutil.copyfile(files[prec], stage / rel)
        variants[prec] = {"file": rel, "precision": prec, "opset": opset_of(files[prec]), **(extra or {}).get(prec, {})}
    return variants


def commit_bundle(stage: Path, manifest: dict, keep: dict, old, bundle_dir: Path) -> dict:
    """Write ``manifest`` into the staged bundle, check that every kept file is byte for byte what it was, verify
    the whole bundle, then swap it in for ``old`` (or move it to ``bundle_dir`` when there was none). Returns the
    written manifest. Nothing in ``bundle_dir`` changes unless all of that passed."""
    from runtime.bundle import load_bundle, replace_bundle_dir, write_manifest

    written = write_manifest(stage, manifest)
    changed = [rel for rel, e in keep.items() if written["files"].get(rel) != e]
    if changed:  # a copy went wrong: never bless it with a fresh hash
        raise ExportError(f"copying the bundle changed {changed}; {bundle_dir} not changed")
    load_bundle(stage, verify=True)
    if old is not None:
        replace_bundle_dir(stage, old.root)  # the resolved directory: a symlink to the bundle keeps pointing at it
    else:
        stage.rename(bundle_dir)
    return written


@contextlib.contextmanager
def staged_bundle(old, bundle_dir: Path, keep: dict, model: str):
    """A staging directory beside the bundle holding a copy of every kept file and an empty ``model/``; the
    export writes its files there and calls :func:`commit_bundle`. Whatever is left is removed on the way out, so
    a failed export leaves nothing behind and the bundle untouched."""
    out_parent = old.root.parent if old is not None else Path(bundle_dir).resolve().parent
    out_parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_parent))
    stage.chmod(0o755)  # mkdtemp makes it private; the kiosk's service user must read the bundle
    try:
        for rel in keep:
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(old.root / rel, stage / rel)
        (stage / model).mkdir()
        yield stage
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
