"""Cameras: one OpenCV source behind a grabber thread that keeps only the newest frame.

    cam = open_camera("0", fps=15)               # USB camera /dev/video0
    frame = cam.read(timeout=1.0)                # Frame(ts, image, seq): BGR uint8, time.monotonic(), 1, 2, ...
    cam.health                                   # CameraHealth(state="ok", frames=..., reconnects=..., ...)
    cam.close()

Sources (one string, as an operator writes it in the config):

* ``"0"``, ``"1"``, ``"/dev/video2"`` - a USB (UVC) camera through V4L2.
* a video file (``demo.avi``, ``aisle.mp4``) - played at ``fps``, looped unless ``loop=False``.
* an image file or a folder of images (JPEG/PNG/BMP, sorted by name) - shown at ``fps``, cycled unless
  ``loop=False``; the folder is listed again at each pass, so images can be added or replaced live.
* ``rtsp://user:pass@10.0.0.5:554/stream`` (also ``rtsps://``, ``http(s)://`` MJPEG) - an IP camera through
  FFmpeg, with open/read timeouts so a dead camera cannot block the grabber for minutes. The password never
  appears in logs or errors.
* a GStreamer pipeline (any string containing ``!``) ending in ``appsink``. The Jetson CSI camera (IMX219,
  IMX477 ... through the ISP) is read this way::

      nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1,format=NV12
      ! nvvidconv flip-method=0 ! video/x-raw,width=640,height=480,format=BGRx ! videoconvert
      ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false

  (one line; ``drop=true max-buffers=1`` keeps GStreamer itself from queueing stale frames). This needs an
  OpenCV built with GStreamer: the PyPI wheels (``opencv-python-headless``) are not, JetPack's OpenCV is.
  ``open_camera`` says so instead of failing obscurely; see docs/vision.md for the options.

Why a thread that drops frames: a camera delivers frames whether or not the kiosk keeps up, and a slow
consumer reading from OpenCV's (or the driver's) queue gets ever older pictures. The grabber keeps pulling
from live sources at their own rate (``grab()`` without decoding) and decodes only at the capped rate into
a single slot; a reader always gets the newest frame and the sequence numbers show what it skipped.
File-backed sources are paced at ``fps`` instead, as if a camera were filming them.

Failures (camera unplugged, stream dropped, file or folder gone) do not end the camera: the grabber
releases the source, marks itself ``reconnecting`` and retries with exponential backoff until it comes back,
so the kiosk survives a cable being pulled. ``CameraHealth`` reports the state for ``storeclerk doctor`` and
the metrics page.

``device`` imports nothing of ours but the shared error types (``runtime.errors`` imports nothing).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from runtime.errors import ConfigError

__all__ = [
    "IMAGE_EXTS",
    "Camera",
    "CameraError",
    "CameraHealth",
    "Frame",
    "SourceLost",
    "SourceSpec",
    "image_size",
    "open_camera",
    "parse_source",
    "read_image_file",
]

log = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
MAX_FPS = 120.0
MAX_IMAGE_PIXELS = 40_000_000  # a 40 MP still is beyond any kiosk camera; more is a mistake or a decompression bomb
MAX_IMAGE_BYTES = 64 * 1024 * 1024
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")
STREAM_TIMEOUT_MS = 5000


class CameraError(ConfigError):
    """A camera source that cannot be used as configured; the message names the source and the reason."""

    code = "camera"


class SourceLost(Exception):
    """The source failed while running (unplugged, stream dropped, file vanished); the grabber reconnects."""


# ------------------------------------------------------------------------------------------------ types


@dataclass(frozen=True, eq=False)  # eq on an ndarray field is ambiguous; frames are compared by seq
class Frame:
    """One picture: ``image`` is BGR uint8 (H, W, 3) and read-only, ``ts`` the ``time.monotonic()`` at which
    it was captured, ``seq`` counts published frames from 1 (a gap means frames were dropped for a slow reader)."""

    ts: float
    image: np.ndarray
    seq: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.image.shape[1]), int(self.image.shape[0])


@dataclass(frozen=True)
class CameraHealth:
    """``state``: ``starting`` (not yet a frame), ``ok``, ``stalled`` (open but no frame for ``stall_after``
    seconds), ``reconnecting`` (source failed; retrying with backoff), ``ended`` (a file source played once
    to its end), ``closed``."""

    state: str
    source: str
    frames: int  # frames published
    skipped: int  # published frames the reader never saw (it was slower than the source)
    failures: int  # failures in a row right now (0 when ok)
    reconnects: int  # times the source came back after a failure
    last_error: str | None
    last_frame_age: float | None  # seconds since the newest frame, None before the first

    @property
    def ok(self) -> bool:
        return self.state == "ok"


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source string. ``kind``: usb | video | image | folder | stream | gstreamer; ``display`` is
    safe to log (credentials masked)."""

    kind: str
    target: str | int
    display: str

    @property
    def live(self) -> bool:
        return self.kind in ("usb", "stream", "gstreamer")


# --------------------------------------------------------------------------------------------- parsing


def _mask_url(url: str) -> str:
    return re.sub(r"(://[^/:@]*):[^/@]*@", r"\1:***@", url)


def parse_source(source: str) -> SourceSpec:
    """What ``source`` names, checked as far as possible without opening it. Raises ``CameraError``."""
    if not isinstance(source, str) or not source.strip():
        raise CameraError(
            "no camera source given: use a USB index ('0'), /dev/videoN, a video file, an image folder, "
            "an rtsp:// URL or a GStreamer pipeline ending in appsink"
        )
    s = source.strip()
    if "\x00" in s or len(s) > 4096:
        raise CameraError("the camera source is not a usable string (NUL byte or longer than 4096 characters)")
    if "!" in s:
        return SourceSpec("gstreamer", s, "gstreamer:" + s.split("!", 1)[0].strip())
    if re.fullmatch(r"-?\d+", s):
        idx = int(s)
        if not 0 <= idx < 64:
            raise CameraError(f"camera index {idx} is out of range: USB cameras are numbered 0, 1, 2 ... (/dev/videoN)")
        return SourceSpec("usb", idx, f"usb:{idx}")
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", s)
    if m:
        scheme = m.group(1).lower()
        if scheme not in STREAM_SCHEMES:
            raise CameraError(
                f"unsupported camera URL scheme '{scheme}://' in {_mask_url(s)}: use rtsp://, rtsps://, http:// or https://"
            )
        return SourceSpec("stream", s, _mask_url(s))
    if re.fullmatch(r"/dev/video\d+", s):
        if not os.path.exists(s):
            raise CameraError(f"camera device {s} does not exist: is the camera plugged in? (ls /dev/video*)")
        return SourceSpec("usb", s, s)
    p = Path(s).expanduser()
    if p.is_dir():
        return SourceSpec("folder", str(p), str(p))
    if p.is_file():
        return SourceSpec("image" if p.suffix.lower() in IMAGE_EXTS else "video", str(p), str(p))
    if p.exists():
        raise CameraError(f"camera source {s} is neither a file nor a folder")
    raise CameraError(
        f"camera source '{s}' not found: it is not a USB index, /dev/videoN, an existing file or folder, "
        "an rtsp:// URL or a GStreamer pipeline"
    )


# ------------------------------------------------------------------------------------------ still images


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` from a JPEG, PNG or BMP header without decoding it, or None when the bytes
    are none of those (or the header is cut off). Checking the size first is what stops a small file that
    decodes to gigapixels from taking the kiosk's memory."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return "PNG", w, h
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return "BMP", abs(w), abs(h)
    if data[:3] == b"\xff\xd8\xff":
        i, n = 2, len(data)
        while i + 4 <= n:
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0x01, *range(0xD0, 0xDA)):  # markers without a length
                i += 2
                continue
            (seg_len,) = struct.unpack(">H", data[i + 2 : i + 4])
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                if i + 9 > n:
                    return None
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return "JPEG", w, h
            i += 2 + seg_len
        return None
    return None


def read_image_file(path: str | os.PathLike[str], *, max_pixels: int = MAX_IMAGE_PIXELS,
                    max_bytes: int = MAX_IMAGE_BYTES) -> np.ndarray:
    """A JPEG/PNG/BMP file as BGR uint8. Raises ``OSError`` if unreadable and ``ValueError`` with the reason
    if it is too large, not an image, or corrupt (callers wrap these in their own error types)."""
    import cv2

    p = Path(path)
    size = p.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{p.name} is {size / 1e6:.0f} MB, more than the {max_bytes / 1e6:.0f} MB an image may have")
    data = p.read_bytes()
    info = image_size(data)
    if info is None:
        raise ValueError(f"{p.name} is not a JPEG, PNG or BMP image (or its header is damaged)")
    fmt, w, h = info
    if w <= 0 or h <= 0:
        raise ValueError(f"{p.name}: its {fmt} header says {w}x{h} pixels")
    if w * h > max_pixels:
        raise ValueError(f"{p.name} is {w}x{h} = {w * h / 1e6:.0f} MP, more than the {max_pixels / 1e6:.0f} MP allowed")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ValueError(f"{p.name} could not be decoded as {fmt} (truncated or corrupt)")
    return img


# ------------------------------------------------------------------------------------------- backends


class Backend(Protocol):
    """What the grabber drives. ``grab()`` advances to the next frame (False: a finite source ended) without
    necessarily decoding it; ``retrieve()`` returns it as BGR uint8. Both raise ``SourceLost`` on failure."""

    def open(self) -> None: ...

    def grab(self) -> bool: ...

    def retrieve(self) -> np.ndarray: ...

    def release(self) -> None: ...


def _gstreamer_available() -> bool:
    import cv2

    return bool(re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()))


class _CvBackend:
    def __init__(self, spec: SourceSpec, size: tuple[int, int] | None = None, requested_fps: float | None = None):
        self.spec, self.size, self.requested_fps = spec, size, requested_fps
        self.cap = None

    def open(self) -> None:
        import cv2

        spec = self.spec
        if spec.kind == "video" and not os.path.isfile(spec.target):
            raise SourceLost(f"video file {spec.display} is gone")
        if spec.kind == "usb" and isinstance(spec.target, str) and not os.path.exists(spec.target):
            raise SourceLost(f"{spec.target} is gone (camera unplugged?)")
        if spec.kind == "stream":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
            cap = cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG, params)
        elif spec.kind == "gstreamer":
            cap = cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER)
        elif spec.kind == "usb":
            cap = cv2.VideoCapture(spec.target, cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY)
        else:
            cap = cv2.VideoCapture(spec.target)
        if not cap.isOpened():
            cap.release()
            why = {
                "usb": "no such camera, or another process has it open",
                "video": "not a video OpenCV can read (unknown container or codec, or a damaged file)",
                "stream": f"no answer within {STREAM_TIMEOUT_MS / 1000:.0f} s, wrong URL/credentials, or not a video stream",
                "gstreamer": "the pipeline did not start (check it with gst-launch-1.0, replacing appsink by fakesink)",
            }[spec.kind]
            raise SourceLost(f"cannot open {spec.display}: {why}")
        if spec.live:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # not every backend honours it; the grabber drains anyway
            if self.size:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
            if self.requested_fps:
                cap.set(cv2.CAP_PROP_FPS, self.requested_fps)
        self.cap = cap

    def grab(self) -> bool:
        if self.cap is None:
            raise SourceLost("not open")
        if self.cap.grab():
            return True
        if self.spec.live:
            raise SourceLost(f"{self.spec.display} stopped delivering frames (unplugged or stream dropped?)")
        return False

    def retrieve(self) -> np.ndarray:
        ok, img = self.cap.retrieve() if self.cap is not None else (False, None)
        if not ok or img is None or img.size == 0:
            raise SourceLost(f"{self.spec.display}: a frame could not be decoded")
        return img

    def release(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class _StillsBackend:
    """An image file or a folder of them, listed afresh at each open so edits show up on the next pass.
    A single unreadable image is skipped (logged once); a pass in which none can be read is a failure."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.files: list[Path] = []
        self.i = 0
        self.good = 0
        self.img: np.ndarray | None = None
        self._warned: set[str] = set()

    def open(self) -> None:
        p = Path(self.spec.target)
        if self.spec.kind == "image":
            if not p.is_file():
                raise SourceLost(f"image {self.spec.display} is gone")
            self.files = [p]
        else:
            try:
                names = sorted(os.listdir(p))
            except OSError as exc:
                raise SourceLost(f"image folder {self.spec.display} cannot be listed: {exc.strerror or exc}") from exc
            self.files = [p / n for n in names if Path(n).suffix.lower() in IMAGE_EXTS and not n.startswith(".")]
            if not self.files:
                raise SourceLost(f"image folder {self.spec.display} has no .jpg/.jpeg/.png/.bmp images")
        self.i, self.good = 0, 0

    def grab(self) -> bool:
        while self.i < len(self.files):
            f = self.files[self.i]
            self.i += 1
            try:
                self.img = read_image_file(f)
            except (OSError, ValueError) as exc:
                if str(f) not in self._warned:
                    self._warned.add(str(f))
                    log.warning("camera %s: skipping %s: %s", self.spec.display, f.name, exc)
                continue
            self.good += 1
            return True
        if self.good == 0:
            raise SourceLost(f"none of the {len(self.files)} images in {self.spec.display} could be read")
        return False

    def retrieve(self) -> np.ndarray:
        if self.img is None:
            raise SourceLost("no image grabbed")
        return self.img

    def release(self) -> None:
        self.img = None


# --------------------------------------------------------------------------------------------- camera


class Camera:
    """A source plus its grabber thread. Build it with :func:`open_camera`; tests may pass ``backend_factory``
    (a callable returning a fresh :class:`Backend`) to script failures.

    Reading: :meth:`read` blocks for a frame newer than the last one it returned, :meth:`latest` never
    blocks, :meth:`frames` iterates until the source ends or the camera is closed, ``async for`` does the
    same without blocking the event loop. One reader is expected; several may share :meth:`latest`.
    """

    def __init__(
        self,
        spec: SourceSpec,
        fps: float = 15.0,
        *,
        loop: bool = True,
        size: tuple[int, int] | None = None,
        backoff: tuple[float, float] = (0.5, 10.0),
        stall_after: float | None = None,
        backend_factory: Callable[[], Backend] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not math.isfinite(fps) or not 0 < fps <= MAX_FPS:
            raise CameraError(f"camera fps must be a number above 0 and at most {MAX_FPS:g}, not {fps!r}")
        lo, hi = backoff
        if not 0 < lo <= hi:
            raise CameraError(f"camera backoff must be (min, max) seconds with 0 < min <= max, not {backoff!r}")
        self.spec = spec
        self.fps = float(fps)
        self.interval = 1.0 / self.fps
        self.loop = loop
        self.backoff = (float(lo), float(hi))
        self.stall_after = stall_after if stall_after is not None else max(2.0, 5 * self.interval)
        self.clock = clock
        if backend_factory is None:
            if spec.kind in ("image", "folder"):
                backend_factory = lambda: _StillsBackend(spec)  # noqa: E731
            else:
                backend_factory = lambda: _CvBackend(spec, size, self.fps)  # noqa: E731
        self._factory = backend_factory
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._latest: Frame | None = None
        self._seq = 0
        self._read_seq = 0
        self._state = "starting"
        self._skipped = 0
        self._failures = 0
        self._reconnects = 0
        self._last_error: str | None = None
        self._first_failure: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"camera-{spec.display[:40]}", daemon=True)

    # -------------------------------------------------------------------------- grabber thread

    def start(self) -> Camera:
        self._thread.start()
        return self

    def _set(self, **kw) -> None:
        with self._cond:
            for k, v in kw.items():
                setattr(self, "_" + k, v)
            self._cond.notify_all()

    def _publish(self, img: np.ndarray, ts: float) -> None:
        if img.ndim == 2:
            import cv2

            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        elif img.shape[2] == 4:
            import cv2

            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        if img.dtype != np.uint8:
            img = (img >> 8).astype(np.uint8) if img.dtype == np.uint16 else np.clip(img, 0, 255).astype(np.uint8)
        img.flags.writeable = False  # frames are shared events: no reader may draw on another's picture
        with self._cond:
            self._seq += 1
            self._latest = Frame(ts, img, self._seq)
            if self._state != "ok":
                if self._state == "reconnecting":
                    self._reconnects += 1
                    log.info("camera %s is back after %d failure(s)", self.spec.display, self._failures)
                self._state = "ok"
                self._failures = 0
            self._cond.notify_all()

    def _fail(self, exc: BaseException) -> float:
        msg = str(exc) or type(exc).__name__
        with self._cond:
            self._failures += 1
            self._last_error = msg
            if self._first_failure is None and self._seq == 0:
                self._first_failure = msg
            self._state = "reconnecting"
            n = self._failures
            self._cond.notify_all()
        delay = min(self.backoff[1], self.backoff[0] * 2 ** (n - 1))
        (log.warning if n == 1 else log.debug)("camera %s failed (%s); retry %d in %.1f s", self.spec.display, msg, n, delay)
        return delay

    def _run(self) -> None:
        backend: Backend | None = None
        due = self.clock()
        frames_this_open = 0
        try:
            while not self._stop.is_set():
                if backend is None:
                    b = self._factory()
                    try:
                        b.open()
                    except Exception as exc:  # noqa: BLE001 - any failure to open is retried
                        b.release()
                        self._stop.wait(self._fail(exc))
                        continue
                    backend, frames_this_open = b, 0
                try:
                    if not self.spec.live:
                        wait = due - self.clock()
                        if wait > 0 and self._stop.wait(wait):
                            break
                    if not backend.grab():
                        backend.release()
                        backend = None
                        if frames_this_open == 0:
                            raise SourceLost(f"{self.spec.display} has no frames")
                        if self.loop:
                            continue  # reopen: rewinds a video, re-lists a folder
                        self._set(state="ended")
                        log.info("camera %s: end of source", self.spec.display)
                        return
                    now = self.clock()
                    if self.spec.live and now < due:
                        continue  # grabbed (to drain the device queue) but not decoded: over the fps cap
                    img = backend.retrieve()
                    frames_this_open += 1
                    self._publish(img, now)
                    # keep the schedule while on time; after a stall restart it rather than burst to catch up
                    due = due + self.interval if now - due < self.interval else now + self.interval
                except Exception as exc:  # noqa: BLE001 - a failing source is released and retried
                    if backend is not None:
                        backend.release()
                        backend = None
                    self._stop.wait(self._fail(exc))
        finally:
            if backend is not None:
                backend.release()

    # ------------------------------------------------------------------------------- readers

    def latest(self) -> Frame | None:
        """The newest frame (possibly one already returned), or None before the first."""
        with self._cond:
            return self._latest

    def read(self, timeout: float | None = 1.0) -> Frame | None:
        """The newest frame not yet returned by ``read``; waits up to ``timeout`` seconds (None: forever) for
        one. None on timeout, or once the source has ended or the camera is closed and nothing new is left."""
        deadline = None if timeout is None else self.clock() + timeout
        with self._cond:
            while True:
                f = self._latest
                if f is not None and f.seq > self._read_seq:
                    self._skipped += f.seq - self._read_seq - 1
                    self._read_seq = f.seq
                    return f
                if self._state in ("ended", "closed"):
                    return None
                left = None if deadline is None else deadline - self.clock()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)

    def frames(self, timeout: float | None = None) -> Iterator[Frame]:
        """Frames until the source ends or the camera is closed (or no frame comes for ``timeout`` seconds)."""
        while True:
            f = self.read(timeout)
            if f is None:
                return
            yield f

    async def aread(self, timeout: float | None = 1.0) -> Frame | None:
        return await asyncio.to_thread(self.read, timeout)

    async def __aiter__(self) -> AsyncIterator[Frame]:
        while True:
            # short waits so a cancelled task is not left holding a thread for long
            f = await asyncio.to_thread(self.read, 0.5)
            if f is None:
                if self._state in ("ended", "closed"):
                    return
                continue
            yield f

    @property
    def health(self) -> CameraHealth:
        with self._cond:
            age = None if self._latest is None else max(0.0, self.clock() - self._latest.ts)
            state = self._state
            if state == "ok" and age is not None and age > self.stall_after:
                state = "stalled"
            return CameraHealth(state, self.spec.display, self._seq, self._skipped, self._failures,
                                self._reconnects, self._last_error, age)

    def wait_ready(self, timeout: float) -> None:
        """Block until the first frame; raise ``CameraError`` with the reason if the first attempt fails (or
        nothing comes within ``timeout``)."""
        deadline = self.clock() + timeout
        with self._cond:
            while self._seq == 0:
                if self._first_failure is not None:
                    raise CameraError(f"camera {self.spec.display} failed to start: {self._first_failure}")
                if self._state in ("ended", "closed"):
                    raise CameraError(f"camera {self.spec.display} ended before its first frame")
                left = deadline - self.clock()
                if left <= 0:
                    raise CameraError(f"camera {self.spec.display} gave no frame within {timeout:g} s")
                self._cond.wait(left)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the grabber and release the source. Idempotent."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._set(state="closed")

    def __enter__(self) -> Camera:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Camera({self.spec.display!r}, fps={self.fps:g}, state={self.health.state})"


def open_camera(
    source: str,
    fps: float = 15,
    *,
    loop: bool = True,
    size: tuple[int, int] | None = None,
    wait: bool = True,
    open_timeout: float = 10.0,
    backoff: tuple[float, float] = (0.5, 10.0),
    backend_factory: Callable[[], Backend] | None = None,
) -> Camera:
    """Open ``source`` (see the module docstring) and start its grabber, at most ``fps`` frames a second.

    ``loop``: replay file sources at their end (else the camera ends). ``size``: (width, height) to ask a
    live camera for. ``wait=True`` returns once the first frame is in and raises ``CameraError`` if the
    source does not work now; ``wait=False`` returns at once and keeps retrying in the background (a kiosk
    booting before its USB camera is enumerated). ``backoff``: (first, longest) delay between reconnects.
    """
    spec = parse_source(source)
    if spec.kind == "gstreamer":
        if not re.search(r"\bappsink\b", spec.target):
            raise CameraError("a GStreamer camera pipeline must end in 'appsink' (e.g. '... ! videoconvert ! "
                              "video/x-raw,format=BGR ! appsink drop=true max-buffers=1')")
        if backend_factory is None and not _gstreamer_available():
            raise CameraError(
                "this OpenCV has no GStreamer support (the PyPI opencv-python-headless wheels never do), so the "
                "pipeline cannot be opened: on a Jetson use JetPack's OpenCV (python3-opencv) for CSI cameras, or "
                "a USB camera / v4l2 device instead (docs/vision.md)"
            )
    cam = Camera(spec, fps, loop=loop, size=size, backoff=backoff, backend_factory=backend_factory).start()
    if wait:
        try:
            cam.wait_ready(open_timeout)
        except CameraError:
            cam.close()
            raise
    return cam
