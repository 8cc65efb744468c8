"""``storeclerk doctor``: what this kiosk has, what the bundle holds, and which engine it would run.

Every check is independent: an unexpected exception in one becomes that check's ``fail`` with the message, and
the others still run, so one broken library never hides the rest of the picture. Heavy or optional modules
(onnxruntime, the bundle loader, the engine) are imported inside the checks that need them, so even a kiosk with
a broken numpy gets a report instead of a traceback. Torch is never imported: only its version is read.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "fail"
MIN_PYTHON = (3, 10)
MIN_FREE_BYTES = 1 << 30
SMOKE_TEXT = "where can I find oat milk"
INTENT_MODEL = "intent"
# Import name -> distributions that provide it (ONNX Runtime ships GPU/DirectML/OpenVINO builds under other names).
PACKAGES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"),
    "onnx": ("onnx",),
    "tokenizers": ("tokenizers",),
    "numpy": ("numpy",),
}
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str


def _error_text(exc: BaseException) -> str:
    from runtime.errors import StoreclerkError

    if isinstance(exc, StoreclerkError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Report:
    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(self, name: str, status: str, detail: str) -> Check:
        check = Check(name, status, detail)
        self.checks.append(check)
        return check

    def run(self, name: str, fn: Callable[[], tuple[str, str]]) -> Check:
        """Run one check; whatever it raises becomes its ``fail``."""
        try:
            status, detail = fn()
        except Exception as exc:  # noqa: BLE001 - doctor reports every failure instead of stopping at it
            status, detail = FAIL, _error_text(exc)
        return self.add(name, status, detail)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)


@contextmanager
def _captured(logger_name: str) -> Iterator[list[logging.LogRecord]]:
    """Collect a logger's records (at INFO and above) instead of letting them interleave with the report."""
    records: list[logging.LogRecord] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(logger_name)
    handler = _Collect(logging.INFO)
    saved = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = saved


# --- environment ---------------------------------------------------------------------------------------------------


def _dist_version(names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check_python() -> tuple[str, str]:
    v = sys.version_info
    text = f"{v.major}.{v.minor}.{v.micro} ({sys.executable})"
    if (v.major, v.minor) < MIN_PYTHON:
        return FAIL, f"{text}: the kiosk needs Python {'.'.join(map(str, MIN_PYTHON))} or newer"
    return OK, text


def check_package(module: str) -> tuple[str, str]:
    found = _dist_version(PACKAGES[module])
    if found is None:
        return FAIL, f"not installed (pip install {PACKAGES[module][0]})"
    dist, version = found
    return OK, version if dist == module else f"{version} ({dist})"


def check_torch() -> tuple[str, str]:
    # Information only, and never imported: the kiosk runtime does not need torch (train/export do).
    found = _dist_version(("torch",))
    if found is None:
        return OK, "not installed (not needed by the kiosk; train/export need it)"
    return OK, f"{found[1]} installed (not needed by the kiosk; train/export use it)"


def check_providers() -> tuple[str, str]:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    return OK, ", ".join(providers) if providers else "none reported"


def check_cuda() -> tuple[str, str]:
    from runtime import cuda

    probe = cuda.probe()
    if not probe.available:
        return OK, f"not available: {probe.reason} (GPU steps will be skipped; the CPU runs the int8 variant)"
    parts = [probe.reason]
    try:
        major, minor = cuda.compute_capability(0)
        rt = cuda.runtime_version()
        parts.append(f"device 0: {cuda.device_name(0)}, compute capability {major}.{minor}")
        parts.append(f"CUDA runtime {rt // 1000}.{rt % 1000 // 10}")
    except Exception as exc:  # noqa: BLE001 - the probe already answered the question that matters
        return WARN, f"{probe.reason}, but querying device 0 failed: {_error_text(exc)}"
    return OK, "; ".join(parts)


def check_tensorrt(cuda_available: bool | None) -> tuple[str, str]:
    if importlib.util.find_spec("tensorrt") is None:
        if cuda_available:
            return WARN, "python package not installed: a GPU is present but the native TensorRT step is skipped"
        return OK, "python package not installed (only used with a GPU)"
    found = _dist_version(("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11"))
    return OK, f"{found[1]} installed" if found else "installed (version unknown)"


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (disk_usage needs a path that exists)."""
    path = path.expanduser().absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path


def check_disk(path: Path) -> tuple[str, str]:
    where = _existing(path)
    free = shutil.disk_usage(where).free
    note = "" if where == path.expanduser().absolute() else f" (measured at {where}: {path} does not exist yet)"
    detail = f"{free / 1e9:.1f} GB free at {path}{note}"
    if free < MIN_FREE_BYTES:
        return WARN, f"{detail}: less than {MIN_FREE_BYTES / 1e9:.1f} GB"
    return OK, detail


def check_offline() -> tuple[str, str]:
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        return WARN, "not set: set HF_HUB_OFFLINE=1 so nothing ever tries the network"
    if value.strip().lower() not in _TRUE:
        return WARN, f"HF_HUB_OFFLINE={value!r}: set it to 1 so nothing ever tries the network"
    return OK, f"HF_HUB_OFFLINE={value}"


# --- bundle, engine, smoke -------------------------------------------------------------------------------------


def check_bundle(bundle_path: Path) -> tuple[object, tuple[str, str]]:
    """Returns the loaded bundle (or None) and the check's result."""
    from runtime.bundle import load_bundle
    from runtime.errors import BundleError

    with _captured("storeclerk.bundle") as records:
        try:
            bundle = load_bundle(bundle_path, verify=True)
        except BundleError as exc:
            return None, (FAIL, f"{bundle_path}: {exc}")
    files = bundle.manifest["files"]
    name = bundle.manifest.get("name", "?")
    lines = [f"{bundle.root}: '{name}', {len(files)} files, models: {', '.join(bundle.models)}"]
    lines += [f"{rel}: sha256 {entry['sha256'][:12]}… OK ({entry['bytes']} bytes)" for rel, entry in files.items()]
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    lines += [f"warning: {w}" for w in warnings]
    return bundle, (WARN if warnings else OK, "\n".join(lines))


def _selection_lines(record) -> list[str]:
    return [f"{'using' if r.chosen else 'skipped'} {r.step}: {r.reason}" for r in record]


def check_engine_model(engine, name: str, cuda_available: bool | None) -> tuple[str, str]:
    error = None
    try:
        engine.runner(name)
    except Exception as exc:  # noqa: BLE001 - the selection record below says what each step tried
        error = exc
    lines = _selection_lines(engine.selection.get(name, []))
    if error is not None:
        return FAIL, "\n".join([*lines, _error_text(error)])
    chosen = next(r.step for r in engine.selection[name] if r.chosen)
    if cuda_available and chosen == "cpu":
        return WARN, "\n".join([*lines, "a CUDA device is present but this model runs on the CPU"])
    return OK, "\n".join(lines)


def check_intent_smoke(engine) -> tuple[str, str]:
    from runtime.intents import IntentClassifier

    clf = IntentClassifier(engine, INTENT_MODEL)
    t0 = time.perf_counter()
    pred = clf.predict_one(SMOKE_TEXT)
    first = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    clf.predict_one(SMOKE_TEXT)
    again = (time.perf_counter() - t0) * 1000
    scope = "out of scope" if pred.out_of_scope else "in scope"
    return OK, (
        f"{SMOKE_TEXT!r} → {pred.intent or '(none)'} ({scope}, confidence {pred.confidence:.2f}); "
        f"{first:.1f} ms first call, {again:.1f} ms second"
    )


def _bundle_and_engine(report: _Report, bundle_path: Path, cuda_available: bool | None) -> None:
    bundle: object = None

    def bundle_check() -> tuple[str, str]:
        nonlocal bundle
        bundle, result = check_bundle(bundle_path)
        return result

    report.run("bundle", bundle_check)
    if bundle is None:
        report.add("engine", WARN, "not checked: the bundle did not load (see 'bundle')")
        return

    from runtime.engine import Engine

    engine = None
    with _captured("storeclerk.engine"):

        def make_engine() -> tuple[str, str]:
            nonlocal engine
            # The bundle check just hashed every file; the engine still re-checks sizes and opsets.
            engine = Engine(bundle_path, verify=False)
            return OK, f"providers {', '.join(engine.providers)}; TensorRT cache {engine.cache_dir}"

        report.run("engine", make_engine)
        if engine is None:
            return
        try:
            runs: dict[str, bool] = {}
            for name in engine.bundle.models:
                result = report.run(f"engine {name}", lambda n=name: check_engine_model(engine, n, cuda_available))
                runs[name] = result.status != FAIL
            if INTENT_MODEL in engine.bundle.models:
                if runs.get(INTENT_MODEL):
                    report.run(f"{INTENT_MODEL} smoke", lambda: check_intent_smoke(engine))
                else:
                    report.add(f"{INTENT_MODEL} smoke", WARN, f"not run: no engine could run '{INTENT_MODEL}'")
        finally:
            try:
                engine.close()
            except Exception as exc:  # noqa: BLE001
                report.add("engine close", WARN, _error_text(exc))


def collect(bundle_path: Path, port: int = 8080, camera: str | None = None) -> list[Check]:
    """Run every check and return them in report order."""
    report = _Report()
    bundle_path = Path(bundle_path)
    report.run("python", check_python)
    for module in PACKAGES:
        report.run(module, lambda m=module: check_package(m))
    report.run("torch", check_torch)
    report.run("onnxruntime providers", check_providers)

    cuda_available: bool | None = None

    def cuda_check() -> tuple[str, str]:
        nonlocal cuda_available
        from runtime import cuda

        cuda_available = cuda.probe().available
        return check_cuda()

    report.run("cuda", cuda_check)
    report.run("tensorrt", lambda: check_tensorrt(cuda_available))
    try:
        _bundle_and_engine(report, bundle_path, cuda_available)
    except Exception as exc:  # noqa: BLE001 - e.g. the engine module itself fails to import
        report.add("engine", FAIL, _error_text(exc))
    report.run("disk (bundle)", lambda: check_disk(bundle_path))

    def cache_disk() -> tuple[str, str]:
        from runtime.trt_cache import default_cache_dir

        return check_disk(default_cache_dir())

    report.run("disk (cache)", cache_disk)
    report.run("HF_HUB_OFFLINE", check_offline)
    report.run("knowledge base", check_kb)
    report.run("camera", lambda: check_camera(camera))
    report.run("microphone / speaker", check_audio)
    report.run("port", lambda: check_port(port))
    report.run("state dir", check_state_dir)
    return report.checks


def check_kb() -> tuple[str, str]:
    from runtime.app import load_kb_and_dialogue
    from runtime.paths import data_dir

    kb, _ = load_kb_and_dialogue(data_dir() / "kb", data_dir() / "dialogue" / "dialogue.yml")
    return OK, f"{data_dir() / 'kb'}: {len(kb.products)} products, {len(kb.faqs)} FAQ entries, fingerprint {kb.fingerprint[:12]}"


def check_camera(source: str | None = None) -> tuple[str, str]:
    """Without a source: which V4L2 devices exist. With one: open it as the kiosk would, take a frame, and report
    its size and the camera's health (a wrong pipeline or a dead IP camera fails here, not at the customer)."""
    if source is None:
        cams = sorted(str(p) for p in Path("/dev").glob("video*"))
        if cams:
            return OK, ", ".join(cams) + " (test one with: storeclerk doctor --camera /dev/video0)"
        return WARN, "no /dev/video* device; the kiosk runs without a camera (or give camera.source / --camera SOURCE)"
    from device.camera import open_camera

    cam = open_camera(str(source), fps=5, open_timeout=10.0)
    try:
        frame = cam.read(timeout=5.0)
        h = cam.health
        if frame is None:
            return FAIL, f"{h.source}: opened, but no frame within 5 s (state {h.state}; {h.last_error or 'no error'})"
        w, ht = frame.size
        return OK, f"{h.source}: {w}x{ht} frames, state {h.state}"
    finally:
        cam.close()


def check_audio() -> tuple[str, str]:
    from device.audio import list_devices

    devices = list_devices()
    if not devices:
        return WARN, "PortAudio sees no microphone or speaker: run with --no-voice (tests use WAV-backed devices)"
    return OK, "; ".join(f"[{d['index']}] {d['name']} (in {d['inputs']}, out {d['outputs']}, {int(d['default_rate'])} Hz)"
                         for d in devices)


def check_port(port: int) -> tuple[str, str]:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return WARN, f"127.0.0.1:{port} is in use (a running kiosk, or another service)"
    return OK, f"127.0.0.1:{port} is free"


def check_state_dir() -> tuple[str, str]:
    from runtime.config import load_config

    d = load_config().state_dir()
    probe = d if d.exists() else _existing(d)
    if not os.access(probe, os.W_OK):
        return FAIL, f"{d} is not writable by this user"
    db = d / "conversations.sqlite3"
    size = f", store {db.stat().st_size / 1e6:.1f} MB" if db.exists() else ", no conversations yet"
    return OK, f"{d}{size}"


# --- output ----------------------------------------------------------------------------------------------------


def _print_table(checks: list[Check], bundle_path: Path, ok: bool) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    styles = {OK: "green", WARN: "yellow", FAIL: "bold red"}
    table = Table(title=f"storeclerk doctor: {bundle_path}")
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for c in checks:
        # Text, not markup: details carry provider lists and shapes in [brackets].
        table.add_row(Text(c.name), Text(c.status, style=styles.get(c.status, "")), Text(c.detail))
    console = Console()
    console.print(table)
    failed = [c.name for c in checks if c.status == FAIL]
    warned = [c.name for c in checks if c.status == WARN]
    summary = Text("all checks passed" if ok else f"failed: {', '.join(failed)}", style="green" if ok else "bold red")
    if warned:
        summary.append(f"  (warnings: {', '.join(warned)})", style="yellow")
    console.print(summary)


def run_doctor(bundle_path: Path, as_json: bool = False, camera: str | None = None) -> int:
    """Check this kiosk and ``bundle_path``; print a table (or one JSON object). 0 when no check failed, else 1."""
    checks = collect(Path(bundle_path), camera=camera)
    ok = all(c.status != FAIL for c in checks)
    if as_json:
        print(json.dumps({"checks": [asdict(c) for c in checks], "ok": ok}, ensure_ascii=False))
    else:
        try:
            _print_table(checks, Path(bundle_path), ok)
        except Exception as exc:  # noqa: BLE001 - rich missing or broken: plain lines still tell the story
            print(f"(table unavailable: {_error_text(exc)})")
            for c in checks:
                print(f"{c.status:4}  {c.name}: {c.detail}")
    return 0 if ok else 1
