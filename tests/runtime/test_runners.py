"""Runners: feed validation, the ORT runner on CPU, the TensorRT plan cache key, and (on a GPU box) TensorRT."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_bundle import make_bundle, make_model, reference, sample_feed

from runtime import cuda
from runtime.bundle import ModelSpec, TensorSpec, Variant, load_bundle
from runtime.errors import BundleError, ConfigError, InferenceError
from runtime.runners import OrtRunner, TrtRunner, validate_feed
from runtime.trt_cache import TrtBuildConfig, build_fingerprint, cache_key, plan_path, profile_shapes

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):
    return load_bundle(make_bundle(tmp_path_factory.mktemp("runners") / "bundle"))


@pytest.fixture(scope="module")
def spec(bundle) -> ModelSpec:
    return bundle.model("intent")


def fixed_spec() -> ModelSpec:
    return ModelSpec(
        name="vision",
        task="image",
        variants={"fp32": Variant("fp32", "m.onnx", 17)},
        default_variant="fp32",
        inputs=(TensorSpec("image", "float32", ("batch", 3, 64, 64)),),
        outputs=(TensorSpec("scores", "float32", ("batch", 10)),),
    )


# --- feed validation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda f: f.pop("attention_mask"), "missing input(s) ['attention_mask']"),
        (lambda f: f.update(token_type_ids=f["input_ids"]), "unexpected input(s) ['token_type_ids']"),
        (lambda f: f.update(input_ids=f["input_ids"].astype(np.int32)), "'input_ids' has dtype int32, expected int64"),
        (lambda f: f.update(attention_mask=f["attention_mask"][0]), "'attention_mask' has rank 1"),
        (lambda f: f.update(attention_mask=f["attention_mask"][:, :3]), "axis 'sequence' is 5 in 'input_ids' but 3"),
    ],
)
def test_bad_feed_is_inference_error(spec: ModelSpec, mutate, fragment: str) -> None:
    feed = sample_feed()
    mutate(feed)
    with pytest.raises(InferenceError) as info:
        validate_feed(spec, feed)
    assert fragment in str(info.value)
    assert info.value.code == "feed"


def test_fixed_dims_are_checked() -> None:
    good = {"image": np.zeros((2, 3, 64, 64), np.float32)}
    assert validate_feed(fixed_spec(), good)["image"].shape == (2, 3, 64, 64)
    with pytest.raises(InferenceError, match="'image' axis 1 is 1, expected 3"):
        validate_feed(fixed_spec(), {"image": np.zeros((2, 1, 64, 64), np.float32)})


def test_feed_must_be_a_mapping(spec: ModelSpec) -> None:
    with pytest.raises(InferenceError, match="mapping"):
        validate_feed(spec, [sample_feed()["input_ids"]])  # type: ignore[arg-type]


# --- ONNX Runtime -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-5), ("fp16", 1e-2), ("int8", 0.1)])
def test_ort_runner_infers_on_cpu(bundle, spec: ModelSpec, precision: str, tol: float) -> None:
    feed = sample_feed()
    with OrtRunner(bundle.path(spec.variants[precision].file), CPU, spec, threads=1) as runner:
        assert runner.provider == "CPUExecutionProvider"
        out = runner.infer(feed)
    assert set(out) == {"embedding", "logits"}
    assert out["embedding"].shape == (2, 8) and out["logits"].shape == (2, 3)
    assert all(a.dtype == np.float32 for a in out.values())
    ref = reference(feed["input_ids"], feed["attention_mask"])
    for name, value in ref.items():
        rel = np.linalg.norm(out[name] - value) / np.linalg.norm(value)
        assert rel < tol, (name, rel)


def test_ort_runner_rejects_bad_feed_before_running(bundle, spec: ModelSpec) -> None:
    with OrtRunner(bundle.path(spec.variants["fp32"].file), CPU, spec) as runner:
        feed = sample_feed()
        feed["input_ids"] = feed["input_ids"].astype(np.float32)
        with pytest.raises(InferenceError, match="dtype float32, expected int64"):
            runner.infer(feed)
        bad_ids = sample_feed()
        bad_ids["input_ids"][0, 0] = 10_000  # valid feed, but outside the embedding table: backend error, wrapped
        with pytest.raises(InferenceError, match="onnxruntime failed"):
            runner.infer(bad_ids)


def test_runner_lifecycle_is_reference_counted(bundle, spec: ModelSpec) -> None:
    runner = OrtRunner(bundle.path(spec.variants["fp32"].file), CPU, spec)
    with pytest.raises(InferenceError, match="not active"):
        runner.infer(sample_feed())
    with runner:
        with runner:  # e.g. a caller's own `with` on a runner the engine already holds
            pass
        assert runner.is_active
        runner.infer(sample_feed())
    assert not runner.is_active and runner.provider == "inactive"


def test_manifest_model_mismatch_is_bundle_error(bundle, spec: ModelSpec) -> None:
    wrong = dataclasses.replace(spec, outputs=(TensorSpec("pooled", "float32", ("batch", 8)),))
    with pytest.raises(BundleError, match=r"no output\(s\) \['pooled'\]"):
        OrtRunner(bundle.path(spec.variants["fp32"].file), CPU, wrong).activate()


def test_session_opset_error_is_bundle_error(tmp_path: Path, spec: ModelSpec) -> None:
    """The loader catches this first; the runner still turns ONNX Runtime's refusal into a clear error."""
    path = tmp_path / "future.onnx"
    onnx.save(make_model("fp32", opset=99), path)
    with pytest.raises(BundleError, match="cannot load ONNX opset 99") as info:
        OrtRunner(path, CPU, spec).activate()
    assert info.value.code == "bundle_opset"


# --- TensorRT plan cache (pure) -----------------------------------------------------------------------------------


def test_cache_key_changes_with_each_part() -> None:
    base = dict(
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability=(9, 0),
        trt_version="10.13.0.35",
        model_sha256="a" * 64,
        build="{}",
    )
    key = cache_key(**base)
    assert key == cache_key(**base) and len(key) == 32
    changes = {
        "gpu_name": "Orin (nvgpu)",
        "compute_capability": (8, 7),
        "trt_version": "11.4.0.106",
        "model_sha256": "b" * 64,
        "build": '{"max_length": 256}',
    }
    keys = {part: cache_key(**{**base, part: value}) for part, value in changes.items()}
    assert key not in keys.values() and len(set(keys.values())) == len(changes)
    assert plan_path(Path("/cache"), key) == Path(f"/cache/{key}.plan")


def test_profile_shapes_follow_axis_names(spec: ModelSpec) -> None:
    shapes = profile_shapes(spec, TrtBuildConfig())
    # max_length comes from the manifest's tokenizer entry (16 in the fixture) unless the config says otherwise
    assert shapes["input_ids"] == ((1, 1), (1, 16), (32, 16))
    assert profile_shapes(spec, TrtBuildConfig(max_length=128))["attention_mask"] == ((1, 1), (1, 64), (32, 128))
    assert profile_shapes(fixed_spec(), TrtBuildConfig())["image"] == ((1, 3, 64, 64), (1, 3, 64, 64), (32, 3, 64, 64))
    fp = build_fingerprint(shapes, "fp16", TrtBuildConfig())
    assert fp != build_fingerprint(shapes, "fp32", TrtBuildConfig())
    assert fp != build_fingerprint(profile_shapes(spec, TrtBuildConfig(max_batch=8)), "fp16", TrtBuildConfig())


@pytest.mark.parametrize(
    "kw", [{"opt_batch": 0}, {"opt_batch": 64, "max_batch": 32}, {"max_length": 0}, {"workspace_mb": 1}]
)
def test_build_config_is_range_checked(kw: dict) -> None:
    with pytest.raises(ConfigError):
        TrtBuildConfig(**kw)


def test_cuda_probe_never_raises() -> None:
    probe = cuda.probe()
    assert isinstance(probe.reason, str) and probe.reason
    assert probe.available == (probe.devices > 0)


# --- on a GPU -----------------------------------------------------------------------------------------------------


def _need_gpu() -> None:
    probe = cuda.probe()
    if not probe.available:
        pytest.skip(f"needs a CUDA GPU: {probe.reason}")


def _need_tensorrt() -> None:
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("needs the TensorRT Python package (pip install tensorrt)")
    _need_gpu()


@pytest.mark.gpu
def test_cuda_round_trip() -> None:
    _need_gpu()
    name, (major, _minor) = cuda.device_name(0), cuda.compute_capability(0)
    assert name and major >= 3
    host = np.random.default_rng(0).standard_normal((257, 33)).astype(np.float32)
    back = np.full_like(host, np.nan)  # poisoned, so an unwritten element shows
    buf = cuda.DeviceBuffer()
    with cuda.Stream() as stream:
        buf.copy_from(host, stream)
        buf.copy_to(back, stream)
        stream.synchronize()
    np.testing.assert_array_equal(back, host)
    ptr = buf.reserve(16)
    assert ptr == buf.reserve(host.nbytes)  # grow-only: no reallocation for a smaller or equal request
    buf.free()
    assert buf.ptr == 0


@pytest.mark.tensorrt
@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-3), ("fp16", 2e-2)])
def test_tensorrt_matches_onnxruntime(bundle, spec: ModelSpec, tmp_path: Path, precision: str, tol: float) -> None:
    _need_tensorrt()
    onnx_path = bundle.path(spec.variants[precision].file)
    cache = tmp_path / "trt"
    feeds = [sample_feed(1, 1), sample_feed(2, 5), sample_feed(32, 16)]  # profile min, inside, max
    with OrtRunner(onnx_path, CPU, spec) as ort_runner:
        expected = [ort_runner.infer(f) for f in feeds]
    # fp16 flag off so the fp32 plan is compared at fp32 precision on TensorRT 10 too
    build = TrtBuildConfig(fp16=False if precision == "fp32" else None)
    with TrtRunner(onnx_path, spec, cache, precision=precision, build=build) as trt_runner:
        assert trt_runner.provider.startswith("TensorRT") and trt_runner.built
        assert trt_runner.plan_file is not None and trt_runner.plan_file.is_file()
        assert trt_runner.plan_file.with_suffix(".json").is_file()
        for feed, want in zip(feeds, expected, strict=True):
            got = trt_runner.infer(feed)
            for name in want:
                assert got[name].dtype == np.float32 and got[name].shape == want[name].shape
                rel = np.linalg.norm(got[name] - want[name]) / np.linalg.norm(want[name])
                assert rel < tol, (precision, name, feed["input_ids"].shape, rel)
        with pytest.raises(InferenceError, match="outside the TensorRT profile"):
            trt_runner.infer(sample_feed(2, 17))
    # Second activation loads the cached plan; the plan file itself also loads directly.
    again = TrtRunner(onnx_path, spec, cache, precision=precision, build=build)
    with again:
        assert not again.built
        np.testing.assert_allclose(again.infer(feeds[1])["logits"], expected[1]["logits"], rtol=tol, atol=tol)
    plan_copy = tmp_path / "copy.plan"
    shutil.copy(again.plan_file, plan_copy)
    with TrtRunner(plan_copy, spec) as from_plan:
        np.testing.assert_allclose(from_plan.infer(feeds[1])["logits"], expected[1]["logits"], rtol=tol, atol=tol)
