"""Is someone standing at the kiosk? Face presence for waking the screen and counting visits.

    presence = FacePresence()                       # OpenCV's frontal-face Haar cascade, loaded on first use
    reading = presence.update(frame)                # FaceReading(boxes=[(x, y, w, h)], present=True, event=...)
    reading.event                                   # PresenceEvent("arrived", ts, faces=1, visit=7) or None

Presence, not identity: the detector returns boxes only. No face crop, embedding or picture is kept or
returned, and nothing here can tell two people apart; ``visits`` counts arrivals and ``visitors`` adds the
most faces seen at once during each visit.

Why hysteresis: a per-frame detector flickers (a head turns, a hand passes, a poster face is caught for a
frame). ``arrived`` needs ``arrive_frames`` consecutive frames with a face and ``left`` needs ``leave_frames``
consecutive frames without one, so one missed or spurious frame changes nothing. At 15 fps the defaults
(3 and 30) mean 0.2 s to wake and 2 s of absence to end a visit.

The detector is OpenCV's bundled ``haarcascade_frontalface_default.xml`` (the 4.x wheels carry it in
``cv2.data.haarcascades``; OpenCV 5 wheels do not, hence the ``<5`` pin). It finds frontal faces out to
about 1.5 m at 640x480 with the defaults; a DNN detector (YuNet) would be more robust to pose and light but no installed
package ships its weights offline. Frames are scaled to ``detect_width`` pixels wide first: a face worth
waking for is large, and the cascade's cost grows with the pixel count.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import ConfigError
from runtime.vision.images import as_gray

__all__ = ["FaceDetector", "FacePresence", "FaceReading", "PresenceEvent"]

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
Box = tuple[int, int, int, int]


class FaceDetector:
    """Face boxes ``(x, y, w, h)`` in frame pixels from a Haar cascade. ``min_face``: the smallest face to
    report, as a fraction of the frame width (0.1 = 64 px at 640 wide, a face within ~1.5 m with a typical
    60-70 degree lens: someone at the kiosk, not a shopper passing behind); small faces are what make a
    cascade slow. ``scale_factor`` stays fine (1.1): at 1.15-1.2 faces between the scanned scales were missed.
    ``cascade``: a file name in ``cv2.data.haarcascades`` or a path."""

    def __init__(self, cascade: str = DEFAULT_CASCADE, *, detect_width: int = 320, min_face: float = 0.1,
                 scale_factor: float = 1.1, min_neighbors: int = 5):
        if not 0 < min_face < 1:
            raise ConfigError(f"min_face is a fraction of the frame width (0-1), not {min_face!r}")
        if detect_width < 64:
            raise ConfigError(f"detect_width must be at least 64 pixels, not {detect_width!r}")
        self.cascade_name = cascade
        self.detect_width, self.min_face = int(detect_width), float(min_face)
        self.scale_factor, self.min_neighbors = float(scale_factor), int(min_neighbors)
        self._clf: Any = None
        self._lock = threading.Lock()

    @property
    def cascade_path(self) -> Path:
        import cv2

        p = Path(self.cascade_name)
        return p if p.is_absolute() or p.parent != Path(".") else Path(cv2.data.haarcascades) / p

    def load(self) -> FaceDetector:
        import cv2

        with self._lock:
            if self._clf is None:
                path = self.cascade_path
                if not path.is_file():
                    raise ConfigError(f"face cascade {path} not found: OpenCV 5 wheels no longer ship Haar cascades; "
                                      "install opencv-python-headless>=4.10,<5 (and no other OpenCV)")
                clf = cv2.CascadeClassifier(str(path))
                if clf.empty():
                    raise ConfigError(f"face cascade {path} could not be loaded (not a cascade XML, or damaged)")
                self._clf = clf
        return self

    def detect(self, frame: Any) -> list[Box]:
        """Faces in ``frame`` (BGR/gray uint8 or a camera ``Frame``), largest first. ``InputError`` for an
        unusable frame."""
        import cv2

        gray = as_gray(frame)
        self.load()
        h, w = gray.shape
        scale = min(1.0, self.detect_width / w)
        small = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) \
            if scale < 1.0 else gray
        if int(small.max()) - int(small.min()) < 16:  # flat frame: no face, and no cascade time spent on it
            return []
        small = cv2.equalizeHist(small)  # kiosks face windows and shop lights: even out exposure
        side = max(24, round(self.min_face * small.shape[1]))  # the cascade's own window is 24x24
        found = self._clf.detectMultiScale(small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                           minSize=(side, side))
        boxes = [(round(x / scale), round(y / scale), round(bw / scale), round(bh / scale)) for x, y, bw, bh in found]
        return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)


@dataclass(frozen=True)
class PresenceEvent:
    """``kind``: ``arrived`` or ``left``. ``faces``: faces in the frame that triggered it (``arrived``) or the
    most seen at once during the visit (``left``). ``visit``: the visit's number since start. ``duration``:
    seconds from arrival to departure (``left`` only)."""

    kind: str
    ts: float
    faces: int
    visit: int
    duration: float | None = None


@dataclass(frozen=True)
class FaceReading:
    boxes: list[Box] = field(default_factory=list)
    present: bool = False
    event: PresenceEvent | None = None

    @property
    def count(self) -> int:
        return len(self.boxes)


class FacePresence:
    """The presence state machine over a :class:`FaceDetector` (see the module docstring).
    :meth:`observe` takes a face count directly, so the hysteresis can be driven without a detector."""

    def __init__(self, detector: FaceDetector | None = None, *, arrive_frames: int = 3, leave_frames: int = 30,
                 clock: Any = time.monotonic):
        if arrive_frames < 1 or leave_frames < 1:
            raise ConfigError(f"arrive_frames and leave_frames must be at least 1, not {arrive_frames}/{leave_frames}")
        self.detector = detector if detector is not None else FaceDetector()
        self.arrive_frames, self.leave_frames = int(arrive_frames), int(leave_frames)
        self.clock = clock
        self.present = False
        self.visits = 0
        self.visitors = 0
        self._run = 0  # consecutive frames disagreeing with ``present``
        self._peak = 0
        self._since: float | None = None

    def observe(self, faces: int, ts: float | None = None) -> PresenceEvent | None:
        """Feed one frame's face count; the event this frame causes, if any."""
        if isinstance(faces, bool) or not isinstance(faces, int) or faces < 0:
            raise ValueError(f"faces must be a count >= 0, not {faces!r}")
        ts = self.clock() if ts is None else ts
        if self.present:
            if faces > 0:
                self._run = 0
                if faces > self._peak:
                    self.visitors += faces - self._peak
                    self._peak = faces
                return None
            self._run += 1
            if self._run < self.leave_frames:
                return None
            self.present, self._run = False, 0
            duration = ts - self._since if self._since is not None else None
            return PresenceEvent("left", ts, self._peak, self.visits, duration)
        if faces == 0:
            self._run = 0
            return None
        self._run += 1
        if self._run < self.arrive_frames:
            return None
        self.present, self._run = True, 0
        self.visits += 1
        self.visitors += faces
        self._peak, self._since = faces, ts
        return PresenceEvent("arrived", ts, faces, self.visits)

    def update(self, frame: Any, ts: float | None = None) -> FaceReading:
        """Detect faces in ``frame`` and advance the state machine. ``ts`` defaults to the frame's own
        timestamp when it is a camera ``Frame``."""
        boxes = self.detector.detect(frame)
        if ts is None:
            ts = getattr(frame, "ts", None)
        event = self.observe(len(boxes), ts)
        return FaceReading(boxes, self.present, event)

    def reset(self) -> None:
        """Forget the current visit (counts are kept), e.g. when the camera reconnects."""
        self.present, self._run, self._peak, self._since = False, 0, 0, None
