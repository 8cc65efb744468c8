"""Bundle loader: a real (tiny) ONNX bundle written with write_manifest, then broken one rule at a time.

``make_model``/``make_bundle`` are imported by test_runners.py and test_engine.py too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.bundle import (
    FORMAT,
    FORMAT_VERSION,
    Bundle,
    Variant,
    load_bundle,
    max_supported_opset,
    sha256_file,
    write_manifest,
)
from runtime.errors import BundleError, ConfigError

VOCAB, HIDDEN, LABELS = 32, 8, 3
RNG = np.random.default_rng(7)
EMB = RNG.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
W = RNG.standard_normal((HIDDEN, LABELS)).astype(np.float32)


def make_model(precision: str = "fp32", opset: int = 17) -> onnx.ModelProto:
    """Mean-pooled embedding + linear head: input_ids/attention_mask int64 [batch, sequence] ->
    embedding [batch, 8], logits [batch, 3], fp32 I/O. ``fp16`` keeps weights and math in fp16, like the
    export stage's GPU variant."""
    t = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    np_t = np.float16 if precision == "fp16" else np.float32
    inits = [
        numpy_helper.from_array(EMB.astype(np_t), "emb"),
        numpy_helper.from_array(W.astype(np_t), "w"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array(1, dtype=np_t), "one"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["tok"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=t),
        helper.make_node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count0"], keepdims=0),
        helper.make_node("Max", ["count0", "one"], ["count"]),
        helper.make_node("Div", ["summed", "count"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "w"], ["logits_t"]),
        helper.make_node("Cast", ["pooled"], ["embedding"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["logits_t"], ["logits"], to=TensorProto.FLOAT),
    ]
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
        for n in ("input_ids", "attention_mask")
    ]
    outputs = [
        helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", HIDDEN]),
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", LABELS]),
    ]
    graph = helper.make_graph(nodes, "tiny_intent", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="storeclerk-tests")
    model.ir_version = 8
    return model


def reference(ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """What the fp32 graph computes, in numpy."""
    m = mask.astype(np.float64)[..., None]
    pooled = (EMB.astype(np.float64)[ids] * m).sum(1) / np.maximum(m.sum(1), 1.0)
    return {"embedding": pooled, "logits": pooled @ W.astype(np.float64)}


def sample_feed(batch: int = 2, seq: int = 5) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(batch * 100 + seq).integers(1, VOCAB, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[0, seq - 2 :] = 0  # padding on one row, so pooling must honour the mask
    return {"input_ids": ids, "attention_mask": mask}


def _spec_entry(variants: dict[str, dict], default: str) -> dict:
    return {
        "task": "text-intent",
        "variants": variants,
        "default_variant": default,
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
            {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]},
        ],
        "outputs": [
            {"name": "embedding", "dtype": "float32", "shape": ["batch", HIDDEN]},
            {"name": "logits", "dtype": "float32", "shape": ["batch", LABELS]},
        ],
        "tokenizer": {"file": "intent/tokenizer.json", "max_length": 16},
        "labels": ["cancel_order", "track_order", "oos"],
        "oos": {"label": "oos", "method": "temperature", "temperature": 1.3, "threshold": 0.42},
        "metrics": {"accuracy": 0.9},
        "data": {"train": "tiny.csv"},
    }


def make_bundle(root: Path, precisions: tuple[str, ...] = ("int8", "fp16", "fp32"), opset: int = 17) -> Path:
    """Write a bundle with the given variants (int8 by onnxruntime's dynamic quantization of the fp32 graph)."""
    model_dir = root / "intent"
    model_dir.mkdir(parents=True, exist_ok=True)
    fp32 = model_dir / "model.fp32.onnx"
    onnx.save(make_model("fp32", opset), fp32)
    variants = {}
    for prec in precisions:
        path = model_dir / f"model.{prec}.onnx"
        if prec == "fp16":
            onnx.save(make_model("fp16", opset), path)
        elif prec == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(fp32, path, weight_type=QuantType.QInt8, per_channel=True)
        variants[prec] = {"file": f"intent/{path.name}", "precision": prec, "opset": _opset(path)}
        if prec == "int8":
            variants[prec]["quantization"] = {"mode": "dynamic", "per_channel": True, "weight_type": "QInt8"}
    if "fp32" not in precisions:
        fp32.unlink()
    (model_dir / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "WordLevel"}}))
    default = "int8" if "int8" in precisions else precisions[0]
    write_manifest(root, {"name": "tiny", "models": {"intent": _spec_entry(variants, default)}})
    return root


def _opset(path: Path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


@pytest.fixture(scope="session")
def bundle_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("template") / "bundle")


@pytest.fixture
def bundle_dir(bundle_template: Path, tmp_path: Path) -> Path:
    """A private copy each test may break."""
    return Path(shutil.copytree(bundle_template, tmp_path / "bundle"))


def edit_manifest(root: Path, change: Callable[[dict], None]) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def raises_bundle_error(root: Path, *fragments: str, code: str | None = None, **kw: object) -> BundleError:
    with pytest.raises(BundleError) as info:
        load_bundle(root, **kw)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    if code:
        assert info.value.code == code
    return info.value


# --- the good path ----------------------------------------------------------------------------------------------


def test_good_bundle_loads(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert isinstance(bundle, Bundle)
    spec = bundle.model("intent")
    assert set(spec.variants) == {"int8", "fp16", "fp32"}
    assert spec.default_variant == "int8"
    assert spec.variants["int8"] == Variant(
        "int8", "intent/model.int8.onnx", 17, {"mode": "dynamic", "per_channel": True, "weight_type": "QInt8"}
    )
    assert [t.name for t in spec.inputs] == ["input_ids", "attention_mask"]
    assert spec.inputs[0].shape == ("batch", "sequence") and spec.inputs[0].is_dynamic
    assert spec.outputs[1].shape == ("batch", LABELS)
    assert set(spec.extra) == {"tokenizer", "labels", "oos", "metrics", "data"}
    assert spec.extra["oos"]["threshold"] == 0.42
    assert bundle.path("intent/tokenizer.json").is_file()
    assert spec.pick_variant(["fp16", "fp32"]).precision == "fp16"
    assert spec.pick_variant(["bf16"]).precision == "int8"


def test_write_manifest_lists_every_file_atomically(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["format"] == FORMAT and manifest["format_version"] == FORMAT_VERSION
    on_disk = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {"manifest.json"}
    tok = bundle_dir / "intent/tokenizer.json"
    assert manifest["files"]["intent/tokenizer.json"] == {"sha256": sha256_file(tok), "bytes": tok.stat().st_size}
    assert not [p for p in bundle_dir.iterdir() if ".tmp" in p.name]


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # more than one read chunk
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_unknown_model_is_config_error(bundle_dir: Path) -> None:
    with pytest.raises(ConfigError, match="no model 'speech'.*intent"):
        load_bundle(bundle_dir).model("speech")


# --- files --------------------------------------------------------------------------------------------------------


def test_tampered_file_names_file_and_sha256(bundle_dir: Path) -> None:
    path = bundle_dir / "intent/model.int8.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte different
    path.write_bytes(bytes(data))
    raises_bundle_error(bundle_dir, "intent/model.int8.onnx", "sha256", "was modified", code="bundle_tampered")


def test_verify_false_skips_hashing_but_not_sizes(bundle_dir: Path) -> None:
    tok = bundle_dir / "intent/tokenizer.json"
    tok.write_bytes(tok.read_bytes().replace(b"1.0", b"2.0"))
    assert load_bundle(bundle_dir, verify=False).models["intent"]
    tok.write_bytes(tok.read_bytes()[:-1])
    raises_bundle_error(bundle_dir, "intent/tokenizer.json", "truncated", verify=False)


def test_truncated_file(bundle_dir: Path) -> None:
    path = bundle_dir / "intent/model.fp16.onnx"
    full = path.stat().st_size
    path.write_bytes(path.read_bytes()[:100])
    raises_bundle_error(
        bundle_dir, "intent/model.fp16.onnx", "truncated", f"100 of {full} bytes", code="bundle_truncated"
    )


def test_grown_file(bundle_dir: Path) -> None:
    with open(bundle_dir / "intent/tokenizer.json", "ab") as fh:
        fh.write(b" ")
    raises_bundle_error(bundle_dir, "intent/tokenizer.json", "modified", code="bundle_size")


def test_missing_file(bundle_dir: Path) -> None:
    (bundle_dir / "intent/tokenizer.json").unlink()
    raises_bundle_error(bundle_dir, "intent/tokenizer.json", "missing", code="bundle_file_missing")


@pytest.mark.parametrize("rel", ["intent/model.fp16.onnx", "intent/tokenizer.json"])
def test_model_file_not_listed(bundle_dir: Path, rel: str) -> None:
    edit_manifest(bundle_dir, lambda m: m["files"].pop(rel))
    raises_bundle_error(bundle_dir, rel, "not listed", code="bundle_unlisted")


def test_unlisted_stray_file_only_warns(bundle_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    (bundle_dir / "notes.txt").write_text("hello")
    load_bundle(bundle_dir)
    assert "notes.txt" in caplog.text


# --- paths ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["../outside.onnx", "/etc/passwd", "intent/../../outside.onnx", "C:/x.onnx", "intent\\..\\x.onnx"]
)
def test_path_traversal_in_files(bundle_dir: Path, bad: str) -> None:
    edit_manifest(bundle_dir, lambda m: m["files"].update({bad: {"sha256": "0" * 64, "bytes": 1}}))
    raises_bundle_error(bundle_dir, bad, code="bundle_path")


def test_path_traversal_in_variant(bundle_dir: Path) -> None:
    def change(m: dict) -> None:
        m["models"]["intent"]["variants"]["fp16"]["file"] = "../../etc/passwd"

    edit_manifest(bundle_dir, change)
    raises_bundle_error(bundle_dir, "models.intent.variants.fp16.file", "../../etc/passwd", code="bundle_path")


def test_symlink_escaping_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    tok = bundle_dir / "intent/tokenizer.json"
    tok.unlink()
    tok.symlink_to(outside)
    raises_bundle_error(bundle_dir, "intent/tokenizer.json", "outside the bundle", code="bundle_path")


# --- manifest ---------------------------------------------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    raises_bundle_error(tmp_path / "nope", "not found", code="bundle_missing")


def test_missing_manifest(bundle_dir: Path) -> None:
    (bundle_dir / "manifest.json").unlink()
    raises_bundle_error(bundle_dir, "manifest.json", "missing")


def test_bad_json_says_where(bundle_dir: Path) -> None:
    (bundle_dir / "manifest.json").write_text('{\n  "format": "storeclerk-bundle",\n  "files": {,}\n}')
    raises_bundle_error(bundle_dir, "manifest.json", "not valid JSON", "line 3", code="bundle_manifest")


def test_manifest_not_an_object(bundle_dir: Path) -> None:
    (bundle_dir / "manifest.json").write_text("[]")
    raises_bundle_error(bundle_dir, "JSON object")


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("format_version", 2, "format_version' 2 is not supported"),
        ("format_version", "1", "must be an integer"),
        ("format", "other-bundle", "'other-bundle'"),
    ],
)
def test_unknown_format(bundle_dir: Path, key: str, value: object, fragment: str) -> None:
    edit_manifest(bundle_dir, lambda m: m.update({key: value}))
    raises_bundle_error(bundle_dir, fragment, code="bundle_format")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda e: e.update(default_variant="bf16"), "default_variant 'bf16'"),
        (lambda e: e.pop("outputs"), "missing outputs"),
        (lambda e: e["inputs"][0].update(dtype="string"), "inputs[0].dtype"),
        (lambda e: e["inputs"][0].update(shape=["batch", -1]), "inputs[0].shape"),
        (lambda e: e["variants"]["fp16"].update(opset="17"), "variants.fp16.opset"),
        (lambda e: e["variants"]["fp16"].update(precision="fp32"), "variants.fp16.precision"),
    ],
)
def test_bad_model_entry(bundle_dir: Path, change: Callable[[dict], object], fragment: str) -> None:
    edit_manifest(bundle_dir, lambda m: change(m["models"]["intent"]))
    raises_bundle_error(bundle_dir, "models.intent", fragment, code="bundle_manifest")


# --- opset ------------------------------------------------------------------------------------------------------


def test_unsupported_opset_is_a_clear_error(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b", precisions=("fp32",), opset=99)
    err = raises_bundle_error(root, "intent/model.fp32.onnx", "opset 99", "onnxruntime", code="bundle_opset")
    assert f"7-{max_supported_opset()}" in str(err)


def test_manifest_opset_must_match_file(bundle_dir: Path) -> None:
    edit_manifest(bundle_dir, lambda m: m["models"]["intent"]["variants"]["fp16"].update(opset=13))
    raises_bundle_error(bundle_dir, "intent/model.fp16.onnx", "declares opset 17", code="bundle_opset")


def test_corrupt_onnx_is_bundle_error(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b", precisions=("fp32",))
    (root / "intent/model.fp32.onnx").write_bytes(b"\xff" * 64)
    write_manifest(root, json.loads((root / "manifest.json").read_text()))
    raises_bundle_error(root, "model.fp32.onnx", "not a readable ONNX model", code="bundle_onnx")


def test_max_supported_opset_is_what_onnxruntime_accepts() -> None:
    top = max_supported_opset()
    assert 17 <= top < 99
