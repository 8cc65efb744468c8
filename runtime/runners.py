"""Inference runners, one lifecycle for every backend (after Polygraphy's runners).

    with OrtRunner(path, ["CPUExecutionProvider"], spec) as runner:
        outputs = runner.infer({"input_ids": ids, "attention_mask": mask})

``infer()`` checks the feed against the model's manifest entry, so a caller's mistake is an ``InferenceError``
that names the input, not a backend traceback; ``infer_impl()`` does the work. Activation is reference-counted:
the engine keeps its runners active, and a caller's own ``with runner:`` does not close them underneath it.
"""

from __future__ import annotations

import abc
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime import cuda
from runtime.bundle import ModelSpec, max_supported_opset, read_opset, sha256_file
from runtime.errors import BundleError, InferenceError
from runtime.trt_cache import (
    TrtBuildConfig,
    build_fingerprint,
    cache_key,
    default_cache_dir,
    plan_path,
    profile_shapes,
    write_plan,
)

Feed = Mapping[str, Any]
Outputs = dict[str, np.ndarray]
OrtProvider = str | tuple[str, dict[str, Any]]

log = logging.getLogger("storeclerk.runners")


def validate_feed(spec: ModelSpec, feed: Feed) -> dict[str, np.ndarray]:
    """Names, dtypes, ranks and fixed dims of ``feed`` against ``spec.inputs``; named axes must agree across
    inputs (``input_ids`` and ``attention_mask`` share ``sequence``). No silent casting: an int32 id tensor is
    a caller bug worth hearing about."""
    if not isinstance(feed, Mapping):
        raise InferenceError(f"{spec.name}: feed must be a mapping of input name -> array, got {type(feed).__name__}")
    expected = [t.name for t in spec.inputs]
    missing = [n for n in expected if n not in feed]
    extra = sorted(str(n) for n in feed if n not in expected)
    if missing or extra:
        parts = [f"missing input(s) {missing}"] * bool(missing) + [f"unexpected input(s) {extra}"] * bool(extra)
        raise InferenceError(f"{spec.name}: {'; '.join(parts)} (model takes {', '.join(expected)})", code="feed")
    arrays: dict[str, np.ndarray] = {}
    axes: dict[str, tuple[int, str]] = {}
    for t in spec.inputs:
        arr = np.asarray(feed[t.name])
        if arr.dtype != np.dtype(t.dtype):
            raise InferenceError(
                f"{spec.name}: input {t.name!r} has dtype {arr.dtype}, expected {t.dtype} "
                f"(convert with .astype(np.{t.dtype}))",
                code="feed",
            )
        if arr.ndim != t.rank:
            raise InferenceError(
                f"{spec.name}: input {t.name!r} has rank {arr.ndim} (shape {arr.shape}), expected rank {t.rank} "
                f"{list(t.shape)}",
                code="feed",
            )
        for axis, (dim, size) in enumerate(zip(t.shape, arr.shape, strict=True)):
            if isinstance(dim, int) and size != dim:
                raise InferenceError(
                    f"{spec.name}: input {t.name!r} axis {axis} is {size}, expected {dim} (shape {list(t.shape)})",
                    code="feed",
                )
            if isinstance(dim, str):
                seen = axes.setdefault(dim, (size, t.name))
                if seen[0] != size:
                    raise InferenceError(
                        f"{spec.name}: axis {dim!r} is {seen[0]} in {seen[1]!r} but {size} in {t.name!r}", code="feed"
                    )
        arrays[t.name] = np.ascontiguousarray(arr)
    return arrays


class Runner(abc.ABC):
    """Base of every backend. Subclasses implement ``activate_impl``, ``deactivate_impl`` and ``infer_impl``."""

    def __init__(self, spec: ModelSpec, name: str) -> None:
        self.spec = spec
        self.name = name
        self._refs = 0
        self._state_lock = threading.Lock()

    @property
    def is_active(self) -> bool:
        return self._refs > 0

    @property
    @abc.abstractmethod
    def provider(self) -> str:
        """The backend actually running the model (valid once active)."""

    def activate(self) -> Runner:
        with self._state_lock:
            if self._refs == 0:
                self.activate_impl()
            self._refs += 1
        return self

    def deactivate(self) -> None:
        with self._state_lock:
            if self._refs == 0:
                return
            self._refs -= 1
            if self._refs == 0:
                self.deactivate_impl()

    def close(self) -> None:
        """Deactivate regardless of how many holders entered it (engine shutdown)."""
        with self._state_lock:
            if self._refs:
                self._refs = 0
                self.deactivate_impl()

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def infer(self, feed: Feed, check_inputs: bool = True) -> Outputs:
        if not self.is_active:
            raise InferenceError(f"{self.name} is not active: use 'with runner:' (or runner.activate()) first")
        arrays = validate_feed(self.spec, feed) if check_inputs else {k: np.asarray(v) for k, v in feed.items()}
        return self.infer_impl(arrays)

    @abc.abstractmethod
    def activate_impl(self) -> None: ...

    @abc.abstractmethod
    def deactivate_impl(self) -> None: ...

    @abc.abstractmethod
    def infer_impl(self, feed: dict[str, np.ndarray]) -> Outputs: ...


# --- ONNX Runtime ---------------------------------------------------------------------------------------------


class OrtRunner(Runner):
    """ONNX Runtime session. ``providers`` is ONNX Runtime's own list (names or ``(name, options)``), in order."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        providers: Sequence[OrtProvider],
        spec: ModelSpec,
        threads: int | None = None,
    ) -> None:
        super().__init__(spec, name=f"ort:{spec.name}")
        self.model_path = Path(model_path)
        self.requested = list(providers)
        self.threads = threads
        self._session: Any = None
        self.active_providers: list[str] = []

    @property
    def provider(self) -> str:
        return self.active_providers[0] if self.active_providers else "inactive"

    def activate_impl(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Every ORT failure reaches us as an exception we re-raise with context; its own log would print it twice.
        opts.log_severity_level = 4
        if self.threads is not None:
            opts.intra_op_num_threads = self.threads
        try:
            session = ort.InferenceSession(str(self.model_path), opts, providers=self.requested)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped Fail/RuntimeError family
            raise _session_error(self.model_path, exc) from exc
        _check_io(
            self.spec, self.model_path, [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
        )
        self._session = session
        self.active_providers = list(session.get_providers())

    def deactivate_impl(self) -> None:
        self._session = None
        self.active_providers = []

    def infer_impl(self, feed: dict[str, np.ndarray]) -> Outputs:
        names = [o.name for o in self.spec.outputs]
        try:
            values = self._session.run(names, feed)
        except Exception as exc:  # noqa: BLE001 - e.g. an id outside the embedding table
            raise InferenceError(f"{self.spec.name}: onnxruntime failed: {_first_line(exc)}") from exc
        return dict(zip(names, values, strict=True))


def _session_error(path: Path, exc: Exception) -> Exception:
    try:
        declared = read_opset(path)
    except BundleError as bad:
        return bad
    top = max_supported_opset()
    if declared is not None and declared > top:
        import onnxruntime as ort

        return BundleError(
            f"{path.name}: onnxruntime {ort.__version__} cannot load ONNX opset {declared} (it supports up to {top}); "
            "re-export with a supported opset or update onnxruntime",
            code="bundle_opset",
        )
    return InferenceError(f"onnxruntime could not load {path.name}: {_first_line(exc)}", code="session")


def _check_io(spec: ModelSpec, path: Path, inputs: Sequence[str], outputs: Sequence[str]) -> None:
    # A manifest that disagrees with its model would otherwise fail on the first customer's request.
    want_in = [t.name for t in spec.inputs]
    if sorted(want_in) != sorted(inputs):
        raise BundleError(f"{path.name} takes inputs {list(inputs)} but the manifest lists {want_in}", code="bundle_io")
    missing = [t.name for t in spec.outputs if t.name not in outputs]
    if missing:
        raise BundleError(f"{path.name} has no output(s) {missing} (it has {list(outputs)})", code="bundle_io")


def _first_line(exc: BaseException) -> str:
    """ONNX Runtime's messages carry its source path and a C++ signature; an operator needs neither."""
    text = str(exc).strip() or type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : ", "", text)
    text = re.sub(r"\s*/onnxruntime_src/\S+:\d+ [^(]*\([^)]*\)(?: const)?", "", text)
    return text.splitlines()[0][:500]


# --- TensorRT -------------------------------------------------------------------------------------------------


class TrtRunner(Runner):
    """Native TensorRT 10+ engine from a serialized plan, or built from ONNX and cached.

    ``precision`` is the bundle variant's: an ``fp16`` variant already carries its types in the graph, so it is
    built strongly typed; see ``TrtBuildConfig`` for the rest. ``model_sha256`` saves hashing the file again
    when the caller (the engine) already verified it against the manifest.
    """

    def __init__(
        self,
        plan_or_onnx: str | os.PathLike[str],
        spec: ModelSpec,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        precision: str = "fp32",
        build: TrtBuildConfig | None = None,
        device: int = 0,
        model_sha256: str | None = None,
    ) -> None:
        super().__init__(spec, name=f"trt:{spec.name}")
        self.source = Path(plan_or_onnx)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.precision = precision
        self.build = build or TrtBuildConfig()
        self.device = device
        self.model_sha256 = model_sha256
        self.plan_file: Path | None = None
        self.built = False  # True when this activation built the plan rather than loading it
        self._infer_lock = threading.Lock()  # an execution context is not thread-safe
        self._trt: Any = None
        self._version = "?"

    @property
    def provider(self) -> str:
        return f"TensorRT {self._version}"

    def activate_impl(self) -> None:
        try:
            import tensorrt as trt  # only here: the kiosk must run without TensorRT installed
        except ImportError as exc:  # installed but its libraries do not load (CUDA mismatch, missing libnvinfer)
            raise InferenceError(f"tensorrt failed to import: {exc}", code="tensorrt") from exc

        self._trt, self._version = trt, trt.__version__
        cuda.set_device(self.device)
        self._logger = _trt_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        if self.source.suffix == ".onnx":
            engine = self._engine_from_onnx(trt)
        else:
            self.plan_file = self.source
            engine = self._deserialize(self.source.read_bytes())
        if engine is None:
            raise InferenceError(f"TensorRT could not deserialize {self.plan_file}", code="tensorrt")
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise InferenceError(f"TensorRT could not create an execution context for {self.name}", code="tensorrt")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        _check_io(self.spec, self.source, [n for n in names if is_input[n]], [n for n in names if not is_input[n]])
        self._inputs = [t.name for t in self.spec.inputs]
        self._outputs = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._buffers = {n: cuda.DeviceBuffer() for n in names}
        self._stream = cuda.Stream()

    def _deserialize(self, plan: bytes) -> Any:
        return self._runtime.deserialize_cuda_engine(plan)

    def _engine_from_onnx(self, trt: Any) -> Any:
        shapes = profile_shapes(self.spec, self.build)
        sha = self.model_sha256 or sha256_file(self.source)
        gpu, cc = cuda.device_name(self.device), cuda.compute_capability(self.device)
        fingerprint = build_fingerprint(shapes, self.precision, self.build)
        self.plan_file = plan_path(self.cache_dir, cache_key(gpu, cc, trt.__version__, sha, fingerprint))
        if self.plan_file.is_file():
            engine = self._deserialize(self.plan_file.read_bytes())
            if engine is not None:
                return engine
            log.warning("TensorRT plan %s is unreadable; rebuilding it", self.plan_file)
        plan = _build_plan(trt, self._logger, self.source, shapes, self.precision, self.build)
        meta = {
            "gpu": gpu,
            "compute_capability": list(cc),
            "tensorrt": trt.__version__,
            "model_sha256": sha,
            "model": self.source.name,
            "build": fingerprint,
        }
        write_plan(self.plan_file, plan, meta)
        self.built = True
        log.info("built TensorRT plan for %s in %s", self.spec.name, self.plan_file)
        return self._deserialize(plan)

    def deactivate_impl(self) -> None:
        for buf in getattr(self, "_buffers", {}).values():
            buf.free()
        if getattr(self, "_stream", None) is not None:
            self._stream.destroy()
        # Context before engine before runtime: TensorRT objects must die in reverse order of creation.
        self._buffers, self._stream, self._context, self._engine, self._runtime = {}, None, None, None, None

    def infer_impl(self, feed: dict[str, np.ndarray]) -> Outputs:
        with self._infer_lock:
            cuda.set_device(self.device)  # the current device is per thread; callers come from worker threads
            ctx, stream = self._context, self._stream
            staged = []  # host copies must outlive the async copies reading them
            for name in self._inputs:
                arr = np.ascontiguousarray(feed[name], dtype=self._dtypes[name])
                if not ctx.set_input_shape(name, arr.shape):
                    lo, _, hi = self._engine.get_tensor_profile_shape(name, 0)
                    raise InferenceError(
                        f"{self.spec.name}: input {name!r} shape {arr.shape} is outside the TensorRT profile "
                        f"{tuple(lo)}..{tuple(hi)}",
                        code="feed",
                    )
                buf = self._buffers[name]
                buf.copy_from(arr, stream)
                ctx.set_tensor_address(name, buf.ptr)
                staged.append(arr)
            outputs: Outputs = {}
            for name in self._outputs:
                host = np.empty(tuple(ctx.get_tensor_shape(name)), dtype=self._dtypes[name])
                ctx.set_tensor_address(name, self._buffers[name].reserve(host.nbytes))
                outputs[name] = host
            if not ctx.execute_async_v3(stream.handle):
                raise InferenceError(f"{self.spec.name}: TensorRT execution failed", code="tensorrt")
            for name, host in outputs.items():
                self._buffers[name].copy_to(host, stream)
            stream.synchronize()
        # fp16 plans may hand back fp16 tensors; callers get what the manifest promises.
        want = {t.name: np.dtype(t.dtype) for t in self.spec.outputs}
        return {n: a.astype(want[n], copy=False) if n in want else a for n, a in outputs.items()}


def _trt_logger(trt: Any) -> Any:
    """Route TensorRT's messages into Python logging instead of stderr."""
    levels = {
        trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
        trt.ILogger.Severity.ERROR: logging.ERROR,
        trt.ILogger.Severity.WARNING: logging.WARNING,
        trt.ILogger.Severity.INFO: logging.DEBUG,
        trt.ILogger.Severity.VERBOSE: logging.DEBUG,
    }

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = levels.get(severity, logging.INFO)
            if level >= logging.ERROR:
                self.errors.append(msg)
            log.log(level, "TensorRT: %s", msg)

    return _Logger()


def _build_plan(
    trt: Any, logger: Any, onnx_path: Path, shapes: Mapping[str, Any], precision: str, build: TrtBuildConfig
) -> bytes:
    builder = trt.Builder(logger)
    # TensorRT 11 removed weak typing (BuilderFlag.FP16, platform_has_fast_fp16); on 10.x use it only to give an
    # fp32 graph FP16 kernels, since an fp16 variant already states its types and must be built strongly typed.
    weak_fp16 = (
        precision != "fp16"
        and build.fp16 is not False
        and hasattr(trt.BuilderFlag, "FP16")
        and bool(getattr(builder, "platform_has_fast_fp16", False))
    )
    strong = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 0 if weak_fp16 or strong is None else 1 << int(strong)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise InferenceError(f"TensorRT could not parse {onnx_path.name}: {'; '.join(errors[:3])}", code="tensorrt")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, build.workspace_mb << 20)
    if weak_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if any(d < 0 for d in tensor.shape):
            if tensor.name not in shapes:
                raise BundleError(f"{onnx_path.name}: input {tensor.name!r} is not in the manifest", code="bundle_io")
            profile.set_shape(tensor.name, *shapes[tensor.name])
            dynamic = True
    if dynamic:
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        detail = "; ".join(getattr(logger, "errors", [])[-3:]) or "see the storeclerk.runners log"
        raise InferenceError(f"TensorRT failed to build {onnx_path.name}: {detail}", code="tensorrt")
    return bytes(plan)
