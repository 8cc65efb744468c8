"""Model bundle: load and verify a bundle directory (docs/bundle.md), and write its manifest.

The kiosk trusts nothing in a bundle it has not checked: every path stays inside the bundle, every file matches
the size and sha256 the manifest lists, and every ONNX variant declares an opset the installed ONNX Runtime can
run. Each failure is a ``BundleError`` naming the file or manifest key, so an operator can tell a truncated copy
from a tampered file from a kiosk that is too old for the bundle.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from runtime.errors import BundleError, ConfigError

FORMAT = "storeclerk-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# ONNX Runtime runs every opset from 7 up (its versioning policy); older models must be re-exported.
MIN_OPSET = 7
DEFAULT_DOMAINS = ("", "ai.onnx")
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")

_MODEL_KEYS = ("task", "variants", "default_variant", "inputs", "outputs")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20

log = logging.getLogger("storeclerk.bundle")


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One model input or output. ``shape`` holds ints for fixed axes and names (``"batch"``) for dynamic ones."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_dynamic(self) -> bool:
        return any(isinstance(d, str) for d in self.shape)

    def describe(self) -> str:
        return f"{self.name} {self.dtype}[{', '.join(map(str, self.shape))}]"


@dataclass(frozen=True, slots=True)
class Variant:
    precision: str
    file: str
    opset: int
    quantization: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    task: str
    variants: dict[str, Variant]
    default_variant: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def pick_variant(self, preferred: Sequence[str]) -> Variant:
        """First of ``preferred`` this model ships, else its default variant."""
        for precision in preferred:
            if precision in self.variants:
                return self.variants[precision]
        return self.variants[self.default_variant]


@dataclass(frozen=True, slots=True)
class Bundle:
    root: Path
    manifest: dict[str, Any]
    models: dict[str, ModelSpec]

    def path(self, relpath: str) -> Path:
        return self.root / relpath

    def sha256(self, relpath: str) -> str:
        return str(self.manifest["files"][relpath]["sha256"])

    def model(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise ConfigError(
                f"bundle {self.root} has no model {name!r} (it has: {', '.join(sorted(self.models)) or 'none'})"
            ) from None


# --- loading -------------------------------------------------------------------------------------------------


def load_bundle(path: str | os.PathLike[str], verify: bool = True) -> Bundle:
    """Load ``path`` and enforce docs/bundle.md. ``verify=False`` skips the sha256 pass (sizes are still checked)."""
    root = Path(path)
    if not root.exists():
        raise BundleError(f"bundle directory not found: {root}", code="bundle_missing")
    if not root.is_dir():
        raise BundleError(f"bundle path is not a directory: {root}", code="bundle_missing")
    root = root.resolve()
    manifest = _read_manifest(root)
    _check_format(manifest)
    files = _check_files_table(root, manifest)
    models = {name: _parse_model(name, entry) for name, entry in _models_table(manifest).items()}
    for name, entry in _models_table(manifest).items():
        for key, rel in _referenced_files(entry, f"models.{name}"):
            _safe_relpath(root, rel, key)
            if rel not in files:
                raise BundleError(f"{rel} (from {key}) is not listed in manifest 'files'", code="bundle_unlisted")
    for rel, entry in files.items():
        _check_file(root, rel, entry, verify)
    _warn_unlisted(root, files)
    for spec in models.values():
        for precision, variant in spec.variants.items():
            _check_opset(root / variant.file, variant, f"models.{spec.name}.variants.{precision}")
    return Bundle(root=root, manifest=manifest, models=models)


def _read_manifest(root: Path) -> dict[str, Any]:
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{mpath} is missing: not a storeclerk bundle", code="bundle_manifest")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(
            f"{mpath} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}", code="bundle_manifest"
        ) from exc
    except UnicodeDecodeError as exc:
        raise BundleError(f"{mpath} is not UTF-8 text (byte {exc.start})", code="bundle_manifest") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath} must hold a JSON object, not {type(manifest).__name__}", code="bundle_manifest")
    return manifest


def _check_format(manifest: Mapping[str, Any]) -> None:
    fmt = manifest.get("format")
    if fmt != FORMAT:
        raise BundleError(f"manifest 'format' is {fmt!r}, expected {FORMAT!r}", code="bundle_format")
    version = manifest.get("format_version")
    if type(version) is not int:
        raise BundleError(f"manifest 'format_version' must be an integer, got {version!r}", code="bundle_format")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"manifest 'format_version' {version} is not supported (this kiosk reads version {FORMAT_VERSION}); "
            "re-export the bundle or update the kiosk",
            code="bundle_format",
        )


def _check_files_table(root: Path, manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError("manifest 'files' must be an object of path -> {sha256, bytes}", code="bundle_manifest")
    for rel, entry in files.items():
        key = f"files entry '{rel}'"
        _safe_relpath(root, rel, key)
        if rel == MANIFEST:
            raise BundleError(f"{key}: the manifest cannot list itself", code="bundle_manifest")
        if not isinstance(entry, dict):
            raise BundleError(f"{key} must be an object with 'sha256' and 'bytes'", code="bundle_manifest")
        if not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"]):
            raise BundleError(f"{key}.sha256 must be 64 lowercase hex digits", code="bundle_manifest")
        size = entry.get("bytes")
        if type(size) is not int or size < 0:
            raise BundleError(f"{key}.bytes must be a non-negative integer, got {size!r}", code="bundle_manifest")
    return files


def _safe_relpath(root: Path, rel: object, key: str) -> Path:
    """Reject paths that could reach outside the bundle, including through a symlink inside it."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{key}: path must be a non-empty string, got {rel!r}", code="bundle_path")
    posix = PurePosixPath(rel)
    if "\\" in rel:
        raise BundleError(f"{key}: path '{rel}' uses backslashes; bundle paths use '/'", code="bundle_path")
    if posix.is_absolute() or re.match(r"^[A-Za-z]:", rel):
        raise BundleError(f"{key}: path '{rel}' must be relative to the bundle", code="bundle_path")
    if ".." in posix.parts:
        raise BundleError(f"{key}: path '{rel}' escapes the bundle ('..')", code="bundle_path")
    full = root / rel
    if not full.resolve().is_relative_to(root):
        raise BundleError(f"{key}: path '{rel}' resolves outside the bundle", code="bundle_path")
    return full


def _check_file(root: Path, rel: str, entry: Mapping[str, Any], verify: bool) -> None:
    full = root / rel
    if not full.is_file():
        raise BundleError(f"{rel} is listed in the manifest but missing from {root}", code="bundle_file_missing")
    size, listed = full.stat().st_size, entry["bytes"]
    if size < listed:
        raise BundleError(
            f"{rel} is truncated: {size} of {listed} bytes (copy the bundle again)", code="bundle_truncated"
        )
    if size > listed:
        raise BundleError(f"{rel} is {size} bytes but the manifest lists {listed}: it was modified", code="bundle_size")
    if verify:
        actual = sha256_file(full)
        if actual != entry["sha256"]:
            raise BundleError(
                f"{rel} was modified: sha256 {actual[:12]}… does not match the manifest's {entry['sha256'][:12]}…",
                code="bundle_tampered",
            )


def _warn_unlisted(root: Path, files: Mapping[str, Any]) -> None:
    # Stray files are never loaded, so they are not an error; but say so, since the export stage lists everything.
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel != MANIFEST and rel not in files:
            log.warning("bundle %s: %s is not listed in the manifest and is ignored", root, rel)


def _models_table(manifest: Mapping[str, Any]) -> dict[str, Any]:
    models = manifest.get("models")
    if not isinstance(models, dict) or not models:
        raise BundleError("manifest 'models' must be a non-empty object", code="bundle_manifest")
    return models


def _referenced_files(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    """Every ``"file": ...`` value under a model entry (variants, tokenizer, anything the export stage adds)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "file":
                yield f"{key}.file", v
            else:
                yield from _referenced_files(v, f"{key}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _referenced_files(v, f"{key}[{i}]")


def _parse_model(name: str, entry: Any) -> ModelSpec:
    key = f"models.{name}"
    if not isinstance(entry, dict):
        raise BundleError(f"{key} must be an object", code="bundle_manifest")
    missing = [k for k in _MODEL_KEYS if k not in entry]
    if missing:
        raise BundleError(f"{key} is missing {', '.join(missing)}", code="bundle_manifest")
    variants_raw = entry["variants"]
    if not isinstance(variants_raw, dict) or not variants_raw:
        raise BundleError(f"{key}.variants must be a non-empty object", code="bundle_manifest")
    variants = {p: _parse_variant(p, v, f"{key}.variants.{p}") for p, v in variants_raw.items()}
    default = entry["default_variant"]
    if default not in variants:
        raise BundleError(
            f"{key}.default_variant {default!r} is not one of its variants ({', '.join(variants)})",
            code="bundle_manifest",
        )
    return ModelSpec(
        name=name,
        task=str(entry["task"]),
        variants=variants,
        default_variant=default,
        inputs=_parse_tensors(entry["inputs"], f"{key}.inputs"),
        outputs=_parse_tensors(entry["outputs"], f"{key}.outputs"),
        extra={k: v for k, v in entry.items() if k not in _MODEL_KEYS},
    )


def _parse_variant(precision: str, raw: Any, key: str) -> Variant:
    if not isinstance(raw, dict):
        raise BundleError(f"{key} must be an object", code="bundle_manifest")
    if raw.get("precision", precision) != precision:
        raise BundleError(f"{key}.precision {raw['precision']!r} does not match its key", code="bundle_manifest")
    if not isinstance(raw.get("file"), str):
        raise BundleError(f"{key}.file must be a path", code="bundle_manifest")
    opset = raw.get("opset")
    if type(opset) is not int:
        raise BundleError(f"{key}.opset must be an integer, got {opset!r}", code="bundle_manifest")
    quant = raw.get("quantization")
    if quant is not None and not isinstance(quant, dict):
        raise BundleError(f"{key}.quantization must be an object", code="bundle_manifest")
    return Variant(precision=precision, file=raw["file"], opset=opset, quantization=quant)


def _parse_tensors(raw: Any, key: str) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise BundleError(f"{key} must be a non-empty list", code="bundle_manifest")
    specs: list[TensorSpec] = []
    for i, t in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
            raise BundleError(f"{where} must be an object with a 'name'", code="bundle_manifest")
        if t.get("dtype") not in DTYPES:
            raise BundleError(
                f"{where}.dtype {t.get('dtype')!r} is not one of {', '.join(DTYPES)}", code="bundle_manifest"
            )
        shape = t.get("shape")
        if not isinstance(shape, list) or not all(_is_dim(d) for d in shape):
            raise BundleError(
                f"{where}.shape must list ints (fixed axes) and names (dynamic axes), got {shape!r}",
                code="bundle_manifest",
            )
        specs.append(TensorSpec(name=t["name"], dtype=np.dtype(t["dtype"]).name, shape=tuple(shape)))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise BundleError(f"{key} repeats a tensor name: {names}", code="bundle_manifest")
    return tuple(specs)


def _is_dim(d: object) -> bool:
    return (isinstance(d, str) and bool(d)) or (type(d) is int and d >= 0)


# --- opset -----------------------------------------------------------------------------------------------------


@functools.cache
def max_supported_opset() -> int:
    """Highest default-domain opset the installed ONNX Runtime accepts.

    ONNX Runtime has no API for this and its release table lags new versions, so ask it: it refuses a model that
    imports an opset newer than it knows at session creation, which costs well under a millisecond on an
    Identity graph. Bisect between ONNX Runtime's floor and a ceiling well above today's opsets.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def accepts(opset: int) -> bool:
        vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [vi[0]], [vi[1]])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8  # any IR version old enough for every ONNX Runtime the project allows
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        try:
            ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - any refusal means "not supported"; the reason is irrelevant here
            return False
        return True

    lo, hi = MIN_OPSET, max(64, onnx.defs.onnx_opset_version() + 8)
    if not accepts(lo):
        return onnx.defs.onnx_opset_version()  # the probe itself is broken; fall back to what onnx knows
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if accepts(mid) else (lo, mid - 1)
    return lo


def read_opset(path: Path) -> int | None:
    """Default-domain opset the ONNX file itself imports (``None`` when it imports none)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several unrelated types for a corrupt file
        raise BundleError(f"{path.name} is not a readable ONNX model: {exc}", code="bundle_onnx") from exc
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS:
            return int(imp.version)
    return None


def _check_opset(path: Path, variant: Variant, key: str) -> None:
    if path.suffix != ".onnx":
        return
    actual = read_opset(path)
    if actual is None:
        raise BundleError(f"{variant.file} imports no default-domain ONNX opset", code="bundle_opset")
    if actual != variant.opset:
        raise BundleError(
            f"{variant.file} declares opset {actual} but {key}.opset says {variant.opset}", code="bundle_opset"
        )
    top = max_supported_opset()
    if not MIN_OPSET <= actual <= top:
        import onnxruntime as ort

        raise BundleError(
            f"{variant.file} uses ONNX opset {actual}, but the installed onnxruntime {ort.__version__} supports "
            f"opsets {MIN_OPSET}-{top}; re-export with an opset in that range or update onnxruntime",
            code="bundle_opset",
        )


# --- writing ---------------------------------------------------------------------------------------------------


def replace_bundle_dir(stage: Path, target: Path) -> None:
    """Replace ``target`` by ``stage`` (same parent): the old bundle is moved aside first and put back if the
    second rename fails, so there is always a whole bundle at ``target`` or beside it."""
    old = target.with_name(f".old-{target.name}-{os.getpid()}")
    os.rename(target, old)
    try:
        os.rename(stage, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_manifest(root: str | os.PathLike[str], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Fill ``files`` (sha256 + bytes of every file under ``root``) and write ``manifest.json`` atomically.

    Returns the manifest as written. ``format``/``format_version`` default to this module's.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise BundleError(f"bundle directory not found: {root_path}", code="bundle_missing")
    out: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
    out.update({k: v for k, v in manifest.items() if k != "files"})
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(root_path.rglob("*")):
        rel = path.relative_to(root_path).as_posix()
        if not path.is_file() or rel == MANIFEST or rel.startswith(MANIFEST + "."):
            continue
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    out["files"] = files
    target = root_path / MANIFEST
    # Same directory so os.replace is atomic: a kiosk never sees a half-written manifest.
    tmp = root_path / f"{MANIFEST}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return out
