"""Engine: provider validation, the fallback chain with its recorded reasons, and a torch-free kiosk process."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_bundle import edit_manifest, make_bundle, sample_feed

from runtime import engine as engine_mod
from runtime.bundle import load_bundle
from runtime.engine import PROVIDERS, Engine, parse_providers, variant_for
from runtime.errors import BundleError, ConfigError
from runtime.runners import OrtRunner

REPO = Path(__file__).resolve().parents[2]
GPU_STEPS = ("tensorrt", "ort-tensorrt", "cuda")


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("engine") / "bundle")


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the chain's view of this machine explicit, so the test means the same on a GPU box."""
    monkeypatch.setattr(engine_mod, "tensorrt_missing", lambda: "python package not installed")
    monkeypatch.setattr(engine_mod, "cuda_missing", lambda: "no CUDA device")
    monkeypatch.setattr(
        engine_mod,
        "ort_provider_missing",
        lambda ep: None if ep == "CPUExecutionProvider" else f"onnxruntime has no {ep} (available: ['CPU'])",
    )


# --- providers ------------------------------------------------------------------------------------------------------


def test_parse_providers() -> None:
    assert parse_providers(PROVIDERS) == PROVIDERS
    assert parse_providers("cuda, cpu") == ("cuda", "cpu")
    for bad, fragment in [
        (["cpu", "gpu"], "unknown provider(s) ['gpu']"),
        ([], "non-empty"),
        (["cpu", "cpu"], "twice"),
        ("", "non-empty"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_providers(bad)
        assert fragment in str(info.value)


def test_unknown_provider_is_config_error(bundle_path: Path) -> None:
    match = "unknown provider.*'use_cuda'.*choose from tensorrt, ort-tensorrt, cuda, cpu"
    with pytest.raises(ConfigError, match=match):
        Engine(bundle_path, providers=["use_cuda", "cpu"])


def test_threads_validated(bundle_path: Path) -> None:
    with pytest.raises(ConfigError, match="threads"):
        Engine(bundle_path, threads=0)


def test_variant_choice_per_step(bundle_path: Path, tmp_path: Path) -> None:
    spec = load_bundle(bundle_path).model("intent")
    assert variant_for("cpu", spec).precision == "int8"
    assert all(variant_for(step, spec).precision == "fp16" for step in GPU_STEPS)
    no_fp16 = load_bundle(make_bundle(tmp_path / "b", precisions=("int8", "fp32"))).model("intent")
    assert variant_for("cuda", no_fp16).precision == "fp32"
    only_fp16 = load_bundle(make_bundle(tmp_path / "c", precisions=("fp16",))).model("intent")
    assert variant_for("cpu", only_fp16).precision == "fp16"  # no int8: the default variant


# --- the chain ------------------------------------------------------------------------------------------------------


def test_chain_lands_on_cpu_with_a_reason_per_skipped_step(
    bundle_path: Path, no_gpu: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="storeclerk.engine")
    with Engine(bundle_path, threads=1) as engine:
        runner = engine.runner("intent")
        assert isinstance(runner, OrtRunner) and runner.provider == "CPUExecutionProvider"
        out = runner.infer(sample_feed())
        assert out["logits"].shape == (2, 3)
        assert engine.runner("intent") is runner  # created once, cached
        steps = engine.selection["intent"]
    assert [s.step for s in steps] == list(PROVIDERS)
    assert [s.chosen for s in steps] == [False, False, False, True]
    assert steps[0].reason == "python package not installed; no CUDA device"
    assert "TensorrtExecutionProvider" in steps[1].reason and "CUDAExecutionProvider" in steps[2].reason
    assert "variant int8 (intent/model.int8.onnx)" in steps[3].reason
    assert tuple(steps[0]) == ("tensorrt", False, steps[0].reason)  # plain tuples for `doctor`
    for step in GPU_STEPS:
        assert f"intent: skipping {step}:" in caplog.text
    assert not runner.is_active  # closed with the engine


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="this machine has TensorRT")
def test_chain_on_this_machine_without_patches(bundle_path: Path) -> None:
    """The real checks: on a CPU-only box every GPU step is skipped for a reason the operator can act on."""
    with Engine(bundle_path) as engine:
        engine.runner("intent")
        steps = engine.selection["intent"]
    if steps[-1].step != "cpu" or not all(s.chosen is False for s in steps[:-1]):
        pytest.skip(f"this machine can run a GPU step: {steps}")
    assert "python package not installed" in steps[0].reason
    assert all(s.reason for s in steps[:-1])


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
def test_gpu_step_failing_at_session_creation_falls_back(
    bundle_path: Path, no_gpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend the CUDA EP is usable: a CPU-only onnxruntime then drops it at session creation.
    monkeypatch.setattr(engine_mod, "unavailable", lambda step: None if step in ("cuda", "cpu") else "absent")
    engine = Engine(bundle_path, providers=["cuda", "cpu"])
    try:
        runner = engine.runner("intent")
        steps = engine.selection["intent"]
        assert runner.provider == "CPUExecutionProvider"
        assert steps[0].step == "cuda" and not steps[0].chosen
        assert "dropped CUDAExecutionProvider" in steps[0].reason
        assert steps[1].chosen
    finally:
        engine.close()


def test_tensorrt_step_error_becomes_reason(bundle_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_mod, "unavailable", lambda step: None)

    def broken(self) -> None:
        raise RuntimeError("libnvinfer.so.10: cannot open shared object file")

    monkeypatch.setattr(engine_mod.TrtRunner, "activate_impl", broken)
    with Engine(bundle_path, providers=["tensorrt", "cpu"]) as engine:
        engine.runner("intent")
        first = engine.selection["intent"][0]
    assert first.step == "tensorrt" and not first.chosen
    assert "intent/model.fp16.onnx: RuntimeError: libnvinfer.so.10" in first.reason


def test_no_usable_provider_is_config_error(bundle_path: Path, no_gpu: None) -> None:
    with Engine(bundle_path, providers=["cuda"]) as engine:
        with pytest.raises(ConfigError, match="no provider in \\['cuda'\\] can run model 'intent': cuda: onnx"):
            engine.runner("intent")
        assert engine.selection["intent"][0].chosen is False


def test_bundle_problem_in_every_step_stays_bundle_error(tmp_path: Path, no_gpu: None) -> None:
    root = make_bundle(tmp_path / "b", precisions=("fp32",))
    edit_manifest(root, lambda m: m["models"]["intent"]["outputs"][1].update(name="scores"))
    with Engine(root, providers=["cpu"]) as engine:
        with pytest.raises(BundleError, match=r"cpu: .*no output\(s\) \['scores'\]"):
            engine.runner("intent")


def test_unknown_model_and_closed_engine(bundle_path: Path) -> None:
    engine = Engine(bundle_path, providers=["cpu"])
    with pytest.raises(ConfigError, match="no model 'faces'"):
        engine.runner("faces")
    engine.close()
    with pytest.raises(ConfigError, match="closed"):
        engine.runner("intent")


def test_engine_refuses_tampered_bundle(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b", precisions=("fp32",))
    with open(root / "intent/tokenizer.json", "r+b") as fh:
        fh.write(b"X")
    with pytest.raises(BundleError, match="intent/tokenizer.json.*sha256"):
        Engine(root)


@pytest.mark.tensorrt
def test_engine_prefers_native_tensorrt_on_a_gpu_box(bundle_path: Path, tmp_path: Path) -> None:
    from runtime import cuda

    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("needs the TensorRT Python package (pip install tensorrt)")
    if not (probe := cuda.probe()).available:
        pytest.skip(f"needs a CUDA GPU: {probe.reason}")
    with Engine(bundle_path, cache_dir=tmp_path / "trt") as engine:
        runner = engine.runner("intent")
        assert engine.selection["intent"][0].chosen, engine.selection["intent"]
        assert runner.provider.startswith("TensorRT")
        assert runner.infer(sample_feed())["logits"].shape == (2, 3)


# --- the kiosk process ----------------------------------------------------------------------------------------------


def test_engine_in_fresh_process_never_imports_torch(bundle_path: Path) -> None:
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from runtime.engine import Engine
        with Engine({str(bundle_path)!r}, providers=["cpu"], threads=1) as engine:
            out = engine.runner("intent").infer({{
                "input_ids": np.array([[3, 4, 5]], dtype=np.int64),
                "attention_mask": np.ones((1, 3), dtype=np.int64),
            }})
            provider = engine.runner("intent").provider
        print(json.dumps({{"torch": "torch" in sys.modules, "provider": provider,
                          "logits": list(out["logits"].shape)}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"torch": False, "provider": "CPUExecutionProvider", "logits": [1, 3]}
