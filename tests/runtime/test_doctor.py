"""storeclerk doctor: one row per check, a failing check never hides the others, and never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_bundle import edit_manifest, make_bundle

from runtime import cuda
from runtime import engine as engine_mod
from runtime.bundle import write_manifest
from runtime.doctor import run_doctor

# Words of the smoke sentence get ids inside the tiny model's 32-row embedding.
VOCAB = {"[UNK]": 0, "where": 1, "can": 2, "i": 3, "find": 4, "oat": 5, "milk": 6}


def _real_tokenizer(path: Path) -> None:
    """make_bundle writes a placeholder tokenizer.json; the smoke check needs one `tokenizers` can load."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel(VOCAB, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_bundle(tmp_path_factory.mktemp("doctor") / "bundle", precisions=("int8", "fp16"))
    _real_tokenizer(root / "intent/tokenizer.json")
    write_manifest(root, json.loads((root / "manifest.json").read_text()))  # re-hash the new tokenizer
    return root


@pytest.fixture
def bundle_dir(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "bundle"))


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Same answers on any machine: no CUDA device, no TensorRT, only the CPU provider; a private cache dir."""
    monkeypatch.setattr(cuda, "probe", lambda: cuda.CudaProbe(0, "no CUDA device"))
    monkeypatch.setattr(engine_mod, "tensorrt_missing", lambda: "python package not installed")
    monkeypatch.setattr(
        engine_mod,
        "ort_provider_missing",
        lambda ep: None if ep == "CPUExecutionProvider" else f"onnxruntime has no {ep} (available: ['CPU'])",
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def doctor_json(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, dict[str, dict]]:
    code = run_doctor(path, as_json=True)
    out = capsys.readouterr().out
    report = json.loads(out)  # one JSON object, nothing else on stdout
    checks = {c["name"]: c for c in report["checks"]}
    assert len(checks) == len(report["checks"]), "check names are unique"
    for c in report["checks"]:
        assert set(c) == {"name", "status", "detail"} and c["status"] in ("ok", "warn", "fail"), c
    assert report["ok"] == (code == 0) == all(c["status"] != "fail" for c in report["checks"])
    return code, report, checks


def test_good_bundle(bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report, checks = doctor_json(bundle_dir, capsys)
    assert code == 0 and report["ok"], report
    for name in ("python", "onnxruntime", "onnx", "tokenizers", "numpy", "torch", "onnxruntime providers"):
        assert checks[name]["status"] == "ok", checks[name]
    assert "CPUExecutionProvider" in checks["onnxruntime providers"]["detail"]
    assert "not needed by the kiosk" in checks["torch"]["detail"]
    assert checks["cuda"]["status"] == "ok" and "no CUDA device" in checks["cuda"]["detail"]
    assert checks["tensorrt"]["status"] == "ok"

    bundle = checks["bundle"]
    assert bundle["status"] == "ok", bundle
    for rel in ("intent/model.int8.onnx", "intent/model.fp16.onnx", "intent/tokenizer.json"):
        assert f"{rel}: sha256" in bundle["detail"] and "OK" in bundle["detail"]

    sel = checks["engine intent"]
    assert sel["status"] == "ok", sel
    for step in ("tensorrt", "ort-tensorrt", "cuda"):
        assert f"skipped {step}: " in sel["detail"]
    assert "skipped tensorrt: python package not installed" in sel["detail"]
    assert "using cpu: CPUExecutionProvider, variant int8" in sel["detail"]

    smoke = checks["intent smoke"]
    assert smoke["status"] == "ok", smoke
    assert "where can I find oat milk" in smoke["detail"] and " ms" in smoke["detail"]
    assert any(label in smoke["detail"] for label in ("cancel_order", "track_order", "oos"))

    assert checks["disk (bundle)"]["status"] in ("ok", "warn") and "GB free" in checks["disk (bundle)"]["detail"]
    assert "GB free" in checks["disk (cache)"]["detail"]
    assert checks["HF_HUB_OFFLINE"]["status"] == "ok"


def test_tampered_file_fails_and_names_it(bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = bundle_dir / "intent/model.int8.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    code, report, checks = doctor_json(bundle_dir, capsys)
    assert code == 1 and not report["ok"]
    bundle = checks["bundle"]
    assert bundle["status"] == "fail"
    assert "intent/model.int8.onnx" in bundle["detail"] and "sha256" in bundle["detail"]
    # The rest of the report is still there; no engine is built on a bundle that failed its check.
    assert checks["python"]["status"] == "ok" and "HF_HUB_OFFLINE" in checks
    assert checks["engine"]["status"] == "warn" and "intent smoke" not in checks


def test_missing_bundle_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope" / "bundle"
    code, report, checks = doctor_json(missing, capsys)
    assert code == 1
    assert checks["bundle"]["status"] == "fail" and "not found" in checks["bundle"]["detail"]
    assert str(missing) in checks["bundle"]["detail"]
    # Disk free is measured on the nearest existing folder instead of raising.
    assert checks["disk (bundle)"]["status"] in ("ok", "warn") and str(tmp_path) in checks["disk (bundle)"]["detail"]


def test_no_intent_model_means_no_smoke_check(bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_manifest(bundle_dir, lambda m: m["models"].update(other=m["models"].pop("intent")))
    code, report, checks = doctor_json(bundle_dir, capsys)
    assert code == 0, report
    assert checks["bundle"]["status"] == "ok"
    assert checks["engine other"]["status"] == "ok"
    assert not [c for c in report["checks"] if "smoke" in c["name"]]


def test_one_broken_check_does_not_stop_the_others(
    bundle_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom() -> cuda.CudaProbe:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(cuda, "probe", boom)
    monkeypatch.setattr(engine_mod, "cuda_missing", lambda: "no CUDA device")
    code, report, checks = doctor_json(bundle_dir, capsys)
    assert code == 1
    assert checks["cuda"] == {"name": "cuda", "status": "fail", "detail": "RuntimeError: driver exploded"}
    assert checks["bundle"]["status"] == "ok" and checks["intent smoke"]["status"] == "ok"


def test_no_provider_can_run_is_a_fail_with_every_reason(
    bundle_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_mod, "unavailable", lambda step: f"{step} switched off by the test")
    code, _, checks = doctor_json(bundle_dir, capsys)
    assert code == 1
    sel = checks["engine intent"]
    assert sel["status"] == "fail"
    for step in engine_mod.PROVIDERS:
        assert f"skipped {step}: {step} switched off by the test" in sel["detail"]
    assert "no provider" in sel["detail"]
    assert checks["intent smoke"]["status"] == "warn"


def test_offline_unset_warns_but_passes(
    bundle_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    code, _, checks = doctor_json(bundle_dir, capsys)
    assert code == 0
    assert checks["HF_HUB_OFFLINE"]["status"] == "warn" and "not set" in checks["HF_HUB_OFFLINE"]["detail"]


def test_stray_file_is_a_bundle_warning(bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (bundle_dir / "notes.txt").write_text("hello")
    code, _, checks = doctor_json(bundle_dir, capsys)
    assert code == 0
    assert checks["bundle"]["status"] == "warn" and "notes.txt" in checks["bundle"]["detail"]


def test_table_output_through_the_cli(bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.cli import main

    assert main(["doctor", "--model", str(bundle_dir)]) == 0
    out = capsys.readouterr().out
    assert "storeclerk doctor" in out and "all checks passed" in out
    for name in ("python", "bundle", "engine intent", "intent smoke", "HF_HUB_OFFLINE"):
        assert name in out

    (bundle_dir / "intent/tokenizer.json").unlink()
    assert main(["doctor", "--model", str(bundle_dir), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    bundle = next(c for c in report["checks"] if c["name"] == "bundle")
    assert bundle["status"] == "fail" and "intent/tokenizer.json" in bundle["detail"]
