"""Engine: a verified bundle plus one runner per model, picked along the provider chain.

Chain (docs/bundle.md): native TensorRT plan -> ONNX Runtime TensorRT EP -> CUDA EP -> CPU EP. Each step that
cannot be used, or fails to create its session, is skipped with a reason that is logged and kept in
``engine.selection[model]`` for ``storeclerk doctor``: a kiosk that silently lands on the CPU is a support call.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from runtime import cuda
from runtime.bundle import Bundle, ModelSpec, Variant, load_bundle
from runtime.errors import BundleError, ConfigError, StoreclerkError
from runtime.runners import OrtProvider, OrtRunner, Runner, TrtRunner
from runtime.trt_cache import TrtBuildConfig, default_cache_dir, profile_shapes

PROVIDERS = ("tensorrt", "ort-tensorrt", "cuda", "cpu")
GPU_PRECISIONS = ("fp16", "fp32")
CPU_PRECISIONS = ("int8",)
_ORT_EP = {"ort-tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}

log = logging.getLogger("storeclerk.engine")


class StepResult(NamedTuple):
    step: str
    chosen: bool
    reason: str


def parse_providers(providers: Sequence[str] | str) -> tuple[str, ...]:
    """Validate a provider list (a comma-separated string is accepted for CLI/TOML). Order is preference."""
    names = [p.strip() for p in providers.split(",")] if isinstance(providers, str) else list(providers)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"providers must be a non-empty list of names from {', '.join(PROVIDERS)}")
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise ConfigError(f"unknown provider(s) {unknown}; choose from {', '.join(PROVIDERS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"providers lists a name twice: {names}")
    return tuple(names)


def variant_for(step: str, spec: ModelSpec) -> Variant:
    return spec.pick_variant(CPU_PRECISIONS if step == "cpu" else GPU_PRECISIONS)


# Availability checks are module functions so a test (or `doctor`) can ask them one by one.
def tensorrt_missing() -> str | None:
    return None if importlib.util.find_spec("tensorrt") else "python package not installed"


def ort_provider_missing(ep: str) -> str | None:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return None if ep in available else f"onnxruntime has no {ep} (available: {available})"


def cuda_missing() -> str | None:
    probe = cuda.probe()
    if probe.available:
        return None
    return probe.reason if probe.reason == "no CUDA device" else f"no CUDA device ({probe.reason})"


def unavailable(step: str) -> str | None:
    """Why ``step`` cannot run here, or None. Every reason is collected: doctor should show them all at once."""
    reasons = []
    if step == "tensorrt":
        reasons.append(tensorrt_missing())
    elif step != "cpu":
        reasons.append(ort_provider_missing(_ORT_EP[step]))
    if step != "cpu":
        reasons.append(cuda_missing())
    found = [r for r in reasons if r]
    return "; ".join(found) if found else None


class Engine:
    def __init__(
        self,
        bundle_path: str | os.PathLike[str],
        providers: Sequence[str] | str = PROVIDERS,
        threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        verify: bool = True,
    ) -> None:
        self.providers = parse_providers(providers)
        if threads is not None and (type(threads) is not int or threads < 1):
            raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
        self.threads = threads
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.bundle: Bundle = load_bundle(bundle_path, verify=verify)
        self.selection: dict[str, list[StepResult]] = {}
        self._runners: dict[str, Runner] = {}
        self._lock = threading.Lock()
        self._closed = False

    def runner(self, model_name: str) -> Runner:
        """The active runner for ``model_name``, created on first use."""
        with self._lock:
            if self._closed:
                raise ConfigError("engine is closed")
            runner = self._runners.get(model_name)
            if runner is None:
                spec = self.bundle.model(model_name)
                runner = self._select(spec)
                self._runners[model_name] = runner
            return runner

    def _select(self, spec: ModelSpec) -> Runner:
        record: list[StepResult] = []
        self.selection[spec.name] = record
        last_error: StoreclerkError | None = None
        for step in self.providers:
            reason = unavailable(step)
            if reason is not None:
                self._skip(record, spec, step, reason, logging.INFO)
                continue
            variant = variant_for(step, spec)
            runner = self._make(step, spec, variant)
            try:
                runner.activate()
            except Exception as exc:  # noqa: BLE001 - any failure of one step is a reason to try the next
                if isinstance(exc, StoreclerkError):
                    last_error = exc
                detail = str(exc) if isinstance(exc, StoreclerkError) else f"{type(exc).__name__}: {exc}"
                self._skip(record, spec, step, f"{variant.file}: {detail}", logging.WARNING)
                continue
            expected = _ORT_EP.get(step)
            if isinstance(runner, OrtRunner) and expected not in runner.active_providers:
                # ONNX Runtime quietly drops an EP whose libraries fail to load; that is a fallback, not a choice.
                active = runner.active_providers
                runner.close()
                why = f"onnxruntime dropped {expected} at session creation (active: {active})"
                self._skip(record, spec, step, why, logging.WARNING)
                continue
            record.append(StepResult(step, True, f"{runner.provider}, variant {variant.precision} ({variant.file})"))
            log.info("%s: using %s: %s", spec.name, step, record[-1].reason)
            return runner
        reasons = "; ".join(f"{r.step}: {r.reason}" for r in record)
        message = f"no provider in {list(self.providers)} can run model {spec.name!r}: {reasons}"
        if isinstance(last_error, BundleError):
            # Every step tripped over the bundle itself (e.g. an opset): that, not the provider list, needs fixing.
            raise BundleError(message, code=last_error.code) from last_error
        raise ConfigError(message) from last_error

    @staticmethod
    def _skip(record: list[StepResult], spec: ModelSpec, step: str, reason: str, level: int) -> None:
        record.append(StepResult(step, False, reason))
        log.log(level, "%s: skipping %s: %s", spec.name, step, reason)

    def _make(self, step: str, spec: ModelSpec, variant: Variant) -> Runner:
        path = self.bundle.path(variant.file)
        if step == "tensorrt":
            return TrtRunner(
                path, spec, self.cache_dir, precision=variant.precision, model_sha256=self.bundle.sha256(variant.file)
            )
        chain: list[OrtProvider] = []
        if step == "ort-tensorrt":
            chain.append(("TensorrtExecutionProvider", self._ort_trt_options(spec)))
        if step in ("ort-tensorrt", "cuda"):
            chain.append("CUDAExecutionProvider")
        chain.append("CPUExecutionProvider")
        return OrtRunner(path, chain, spec, threads=self.threads)

    def _ort_trt_options(self, spec: ModelSpec) -> dict[str, str]:
        # Same profile as the native path, so ONNX Runtime builds one engine instead of one per new shape.
        shapes = profile_shapes(spec, TrtBuildConfig())
        dynamic = {n: s for n, s in shapes.items() if s[0] != s[2]}
        opts = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(self.cache_dir / "ort")}
        for i, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")):
            if dynamic:
                opts[key] = ",".join(f"{n}:{'x'.join(map(str, s[i]))}" for n, s in dynamic.items())
        return opts

    def close(self) -> None:
        with self._lock:
            self._closed = True
            runners, self._runners = list(self._runners.values()), {}
        for runner in runners:
            runner.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
