"""TensorRT plan cache and build settings: plain functions, testable without a GPU or TensorRT.

A plan is valid only for the GPU model, compute capability and TensorRT version that built it, and for the exact
ONNX file and build settings (profile shapes, precision). All of them go into the cache key, so a driver or
TensorRT upgrade, a new bundle or a changed max length simply misses the cache instead of loading a stale plan.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runtime.bundle import ModelSpec
from runtime.errors import ConfigError

Shape = tuple[int, ...]
ProfileShapes = dict[str, tuple[Shape, Shape, Shape]]

DEFAULT_MAX_LENGTH = 128


@dataclass(frozen=True, slots=True)
class TrtBuildConfig:
    """Optimization-profile ranges for dynamic axes: ``batch`` axes get 1/opt_batch/max_batch, every other
    named axis (sequence, tokens...) 1/opt_length/max_length. ``max_length=None`` takes the model's tokenizer
    ``max_length`` from the manifest, else 128. ``fp16``: ``None`` lets TensorRT 10 add FP16 kernels to an fp32
    graph when the GPU has fast FP16; ``False`` never does. (TensorRT 11 builds every graph strongly typed, so
    precision there comes from the ONNX variant alone.)"""

    opt_batch: int = 1
    max_batch: int = 32
    opt_length: int = 64
    max_length: int | None = None
    workspace_mb: int = 1024
    fp16: bool | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ConfigError(
                f"TensorRT profile needs 1 <= opt_batch <= max_batch, got {self.opt_batch}/{self.max_batch}"
            )
        if self.opt_length < 1 or (self.max_length is not None and self.max_length < 1):
            raise ConfigError("TensorRT profile lengths must be >= 1")
        if self.workspace_mb < 16:
            raise ConfigError(f"TensorRT workspace must be at least 16 MB, got {self.workspace_mb}")


def profile_shapes(spec: ModelSpec, build: TrtBuildConfig) -> ProfileShapes:
    """(min, opt, max) shape of every input, from the manifest's axis names."""
    tokenizer = spec.extra.get("tokenizer")
    max_len = build.max_length or (tokenizer or {}).get("max_length") or DEFAULT_MAX_LENGTH
    out: ProfileShapes = {}
    for inp in spec.inputs:
        ranges = [_axis_range(dim, build, max_len) for dim in inp.shape]
        lo, opt, hi = (tuple(r[i] for r in ranges) for i in range(3))
        out[inp.name] = (lo, opt, hi)
    return out


def _axis_range(dim: int | str, build: TrtBuildConfig, max_len: int) -> tuple[int, int, int]:
    if isinstance(dim, int):
        return dim, dim, dim
    if "batch" in dim.lower():
        return 1, build.opt_batch, build.max_batch
    return 1, min(build.opt_length, max_len), max_len


# Build settings a plan depends on beyond its profile. The batch and length ranges are left out on purpose: the
# resolved shapes already hold whatever they change, and an image model (fixed H and W) must not be rebuilt
# because the text model's max_length changed.
_PLAN_SETTINGS = ("workspace_mb", "fp16")


def build_fingerprint(shapes: ProfileShapes, precision: str, build: TrtBuildConfig) -> str:
    """Everything besides the model bytes that changes the plan TensorRT would build."""
    settings = asdict(build)
    return json.dumps(
        {
            "shapes": {k: [list(s) for s in v] for k, v in sorted(shapes.items())},
            "precision": precision,
            "build": {k: settings[k] for k in _PLAN_SETTINGS},
        },
        sort_keys=True,
    )


def cache_key(
    gpu_name: str, compute_capability: tuple[int, int], trt_version: str, model_sha256: str, build: str = ""
) -> str:
    parts = [gpu_name.strip(), f"{compute_capability[0]}.{compute_capability[1]}", trt_version, model_sha256, build]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "storeclerk" / "trt"


def plan_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{key}.plan"


def write_plan(path: Path, plan: bytes, meta: Mapping[str, Any]) -> None:
    """Atomic, so a kiosk killed mid-write (or two building at once) never leaves a half plan to deserialize.
    The JSON beside the plan says what it was built for, for `storeclerk doctor` and for people."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, data in ((path.with_suffix(".json"), json.dumps(dict(meta), indent=2).encode()), (path, plan)):
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
