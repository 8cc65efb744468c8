"""Cameras from files (image folders, MJPG videos written here), scripted backends for failures, and the
errors a misconfigured source gives. There is no camera on this machine: USB/RTSP are checked for their
error paths only."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.camera import (
    Camera,
    CameraError,
    Frame,
    SourceLost,
    SourceSpec,
    _gstreamer_available,
    image_size,
    open_camera,
    parse_source,
)

pytestmark = pytest.mark.timeout(120)


def numbered(i: int, size=(64, 48)) -> np.ndarray:
    """A frame that carries its own index in its pixel values (robust to JPEG/MJPG compression)."""
    return np.full((size[1], size[0], 3), (i * 20) % 250, np.uint8)


def index_of(frame: Frame) -> int:
    return int(round(float(frame.image.mean()) / 20))


@pytest.fixture
def folder(tmp_path) -> Path:
    d = tmp_path / "frames"
    d.mkdir()
    for i in range(5):
        cv2.imwrite(str(d / f"{i:02d}.png"), numbered(i))
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture
def video(tmp_path) -> Path:
    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    assert w.isOpened()
    for i in range(10):
        w.write(numbered(i))
    w.release()
    return path


def wait_for(cond, timeout=5.0, step=0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


# ------------------------------------------------------------------------------------------ sources


def test_image_folder_cycles_in_name_order_as_readonly_bgr(folder):
    with open_camera(str(folder), fps=60) as cam:
        frames = [cam.read(timeout=2) for _ in range(12)]
    assert all(f is not None for f in frames)
    assert [f.seq for f in frames] == list(range(1, 13))  # a reader faster than the source misses nothing
    assert [index_of(f) for f in frames] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    f = frames[0]
    assert f.image.dtype == np.uint8 and f.image.shape == (48, 64, 3) and f.size == (64, 48)
    assert all(b.ts > a.ts for a, b in zip(frames, frames[1:], strict=False))
    with pytest.raises(ValueError):
        f.image[0, 0, 0] = 1  # shared between readers: nobody may draw on it


def test_folder_played_once_ends_and_iteration_stops(folder):
    cam = open_camera(str(folder), fps=100, loop=False)
    got = [index_of(f) for f in cam.frames(timeout=3)]
    assert got == [0, 1, 2, 3, 4]
    assert cam.health.state == "ended"
    assert cam.read(timeout=0.1) is None
    cam.close()
    assert cam.health.state == "closed"


def test_single_image_file_repeats(folder):
    with open_camera(str(folder / "03.png"), fps=50) as cam:
        frames = [cam.read(timeout=2) for _ in range(3)]
    assert [index_of(f) for f in frames] == [3, 3, 3]


def test_video_file_written_with_videowriter(video):
    cam = open_camera(str(video), fps=100, loop=False)
    frames = list(cam.frames(timeout=3))
    cam.close()
    assert [index_of(f) for f in frames] == list(range(10))
    assert frames[0].image.shape == (48, 64, 3)


def test_video_loops_by_default(video):
    with open_camera(str(video), fps=100) as cam:
        idx = [index_of(cam.read(timeout=2)) for _ in range(14)]
    assert idx == list(range(10)) + [0, 1, 2, 3]


def test_unreadable_image_in_folder_is_skipped(folder):
    (folder / "02.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # header only, then garbage
    cam = open_camera(str(folder), fps=100, loop=False)
    assert [index_of(f) for f in cam.frames(timeout=3)] == [0, 1, 3, 4]
    cam.close()


async def _collect(cam):
    return [index_of(f) async for f in cam]


def test_async_iteration(folder):
    cam = open_camera(str(folder), fps=100, loop=False)
    assert asyncio.run(_collect(cam)) == [0, 1, 2, 3, 4]
    cam.close()


# ------------------------------------------------------------------------------------- newest frame, fps


def test_slow_reader_gets_the_newest_frame_not_a_backlog(folder):
    with open_camera(str(folder), fps=100) as cam:
        first = cam.read(timeout=2)
        time.sleep(0.4)  # ~40 frames published meanwhile
        newest = cam.latest()
        second = cam.read(timeout=2)
        assert second.seq >= newest.seq >= first.seq + 15
        third = cam.read(timeout=2)
        assert third.seq > second.seq  # no queued stale frames behind it
        h = cam.health
    assert h.skipped >= second.seq - first.seq - 1 >= 14


class FakeLive:
    """A live camera delivering frames as fast as it is asked; counts grabs and decodes; can fail."""

    def __init__(self, stats, fail_open=0, fail_after=None):
        self.stats, self.fail_open, self.fail_after = stats, fail_open, fail_after
        self.n = 0

    def open(self):
        self.stats["opens"] += 1
        if self.stats["opens"] <= self.fail_open:
            raise SourceLost(f"camera unplugged (attempt {self.stats['opens']})")

    def grab(self):
        self.stats["grabs"] += 1
        if self.fail_after is not None and self.stats["grabs"] > self.fail_after and not self.stats.get("failed"):
            self.stats["failed"] = True
            raise SourceLost("stream dropped")
        time.sleep(0.001)
        self.n += 1
        return True

    def retrieve(self):
        self.stats["decodes"] += 1
        return numbered(self.n % 10)

    def release(self):
        self.stats["releases"] += 1


def fake_stats():
    return {"opens": 0, "grabs": 0, "decodes": 0, "releases": 0}


LIVE = SourceSpec("usb", 0, "usb:0")


def test_fps_cap_on_a_live_source_drains_without_decoding():
    stats = fake_stats()
    cam = Camera(LIVE, fps=20, backend_factory=lambda: FakeLive(stats)).start()
    cam.wait_ready(2)
    n0, g0, t0 = cam.health.frames, stats["grabs"], time.monotonic()
    time.sleep(1.0)
    n1, g1, dt = cam.health.frames, stats["grabs"], time.monotonic() - t0
    cam.close()
    rate = (n1 - n0) / dt
    assert 12 <= rate <= 21, rate  # capped at 20/s (the lower bound only guards against a stuck grabber)
    assert (g1 - g0) > 3 * (n1 - n0)  # the device queue is drained far faster than frames are published
    assert stats["decodes"] == cam.health.frames  # only published frames are decoded


def test_fps_cap_on_a_file_source(folder):
    with open_camera(str(folder), fps=10) as cam:
        cam.read(timeout=2)
        n0, t0 = cam.health.frames, time.monotonic()
        time.sleep(1.0)
        rate = (cam.health.frames - n0) / (time.monotonic() - t0)
    assert 6 <= rate <= 11, rate


# --------------------------------------------------------------------------------------- reconnection


def test_source_failing_n_times_reconnects_with_backoff():
    stats = fake_stats()
    cam = Camera(LIVE, fps=50, backoff=(0.02, 0.08), backend_factory=lambda: FakeLive(stats, fail_open=4)).start()
    assert wait_for(lambda: cam.health.state == "reconnecting")
    assert "unplugged" in cam.health.last_error
    assert cam.read(timeout=3) is not None
    h = cam.health
    cam.close()
    assert stats["opens"] == 5 and h.state == "ok" and h.reconnects == 1 and h.failures == 0
    assert stats["releases"] >= 4  # a failed open is released too (no leaked device handles)


def test_backoff_grows_and_is_capped():
    stats = fake_stats()
    cam = Camera(LIVE, fps=50, backoff=(0.05, 0.2), backend_factory=lambda: FakeLive(stats, fail_open=10**6)).start()
    time.sleep(1.0)
    cam.close()
    # delays 0.05, 0.1, 0.2, 0.2, ...: ~7 attempts in a second; without backoff it would be thousands
    assert 4 <= stats["opens"] <= 9, stats["opens"]
    assert cam.health.failures == stats["opens"]


def test_failure_while_running_recovers():
    stats = fake_stats()
    cam = Camera(LIVE, fps=50, backoff=(0.02, 0.05), backend_factory=lambda: FakeLive(stats, fail_after=20)).start()
    cam.wait_ready(2)
    assert wait_for(lambda: cam.health.reconnects == 1 and cam.health.state == "ok")
    before = cam.read(timeout=2).seq
    assert cam.read(timeout=2).seq > before
    cam.close()
    assert stats["opens"] == 2 and cam.health.last_error == "stream dropped"


def test_video_file_vanishing_and_coming_back(video, tmp_path):
    cam = open_camera(str(video), fps=100, backoff=(0.02, 0.1))
    cam.read(timeout=2)
    hidden = tmp_path / "hidden.avi"
    shutil.move(video, hidden)
    assert wait_for(lambda: cam.health.state == "reconnecting")
    assert "gone" in cam.health.last_error
    shutil.move(hidden, video)
    assert wait_for(lambda: cam.health.state == "ok" and cam.health.reconnects >= 1)
    seq = cam.health.frames
    assert cam.read(timeout=2).seq > seq - 1
    cam.close()


def test_image_folder_removed_and_restored(folder, tmp_path):
    cam = open_camera(str(folder), fps=100, backoff=(0.02, 0.1))
    cam.read(timeout=2)
    moved = tmp_path / "away"
    folder.rename(moved)
    assert wait_for(lambda: cam.health.state == "reconnecting")
    moved.rename(folder)
    assert wait_for(lambda: cam.health.state == "ok" and cam.health.reconnects >= 1)
    cam.close()


def test_stall_is_reported():
    class Hangs(FakeLive):
        def grab(self):
            if self.n >= 1:
                stop.wait(5)  # a stream that stops answering without an error
                return False
            return super().grab()

    stop = threading.Event()
    cam = Camera(LIVE, fps=20, stall_after=0.2, backend_factory=lambda: Hangs(fake_stats())).start()
    cam.wait_ready(2)
    assert wait_for(lambda: cam.health.state == "stalled", timeout=2)
    stop.set()
    cam.close()


def test_close_stops_the_grabber_promptly(folder):
    cam = open_camera(str(folder), fps=5)
    cam.read(timeout=2)
    t0 = time.monotonic()
    cam.close()
    assert time.monotonic() - t0 < 1.0
    assert not cam._thread.is_alive()
    t0 = time.monotonic()
    leftovers = list(cam.frames(timeout=5))  # at most the one frame published before close; then it stops
    assert len(leftovers) <= 1 and time.monotonic() - t0 < 0.5
    cam.close()  # idempotent
    assert cam.health.state == "closed"


# ---------------------------------------------------------------------------------------- bad sources


@pytest.mark.parametrize(
    "source, words",
    [
        ("", "no camera source"),
        ("   ", "no camera source"),
        ("ftp://10.0.0.5/cam", "unsupported camera URL scheme"),
        ("file:///tmp/x.avi", "unsupported camera URL scheme"),
        ("-1", "out of range"),
        ("99", "out of range"),
        ("/dev/video97", "does not exist"),
        ("/no/such/clip.mp4", "not found"),
        ("a\x00b", "NUL"),
    ],
)
def test_bad_source_strings(source, words):
    with pytest.raises(CameraError, match=words):
        open_camera(source)


def test_credentials_never_shown():
    spec = parse_source("rtsp://bob:s3cret@10.0.0.5:554/stream")
    assert spec.kind == "stream" and "s3cret" not in spec.display and "bob" in spec.display
    with pytest.raises(CameraError) as exc:
        parse_source("ftp://bob:s3cret@10.0.0.5/x")
    assert "s3cret" not in str(exc.value)


def test_source_kinds(folder, video):
    assert parse_source("0") == SourceSpec("usb", 0, "usb:0")
    assert parse_source(str(folder)).kind == "folder"
    assert parse_source(str(video)).kind == "video"
    assert parse_source(str(folder / "01.png")).kind == "image"
    assert parse_source("rtsp://10.0.0.5/s").live


def test_gstreamer_pipeline_needs_appsink_and_gstreamer():
    with pytest.raises(CameraError, match="appsink"):
        open_camera("videotestsrc ! fakesink")
    if _gstreamer_available():
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(CameraError, match="no GStreamer support"):
        open_camera("nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv ! videoconvert ! appsink")


@pytest.mark.parametrize("fps", [0, -5, float("nan"), 1000, "15", True])
def test_bad_fps(folder, fps):
    with pytest.raises(CameraError, match="fps"):
        open_camera(str(folder), fps=fps)


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(CameraError, match="no .jpg"):
        open_camera(str(tmp_path), open_timeout=3)


def test_text_file_posing_as_video(tmp_path):
    bad = tmp_path / "clip.avi"
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(CameraError, match="clip.avi"):
        open_camera(str(bad), open_timeout=5)


def test_missing_usb_camera_fails_fast_with_wait():
    if Path("/dev/video0").exists():
        pytest.skip("a camera is attached")
    t0 = time.monotonic()
    with pytest.raises(CameraError, match="usb:0"):
        open_camera("0", open_timeout=5)
    assert time.monotonic() - t0 < 5


def test_missing_usb_camera_without_wait_keeps_retrying():
    if Path("/dev/video0").exists():
        pytest.skip("a camera is attached")
    cam = open_camera("0", wait=False, backoff=(0.05, 0.1))
    assert wait_for(lambda: cam.health.failures >= 2)
    assert cam.health.state == "reconnecting" and cam.read(timeout=0.05) is None
    cam.close()


def test_rtsp_refused_is_a_clear_error():
    with pytest.raises(CameraError, match=r"rtsp://127\.0\.0\.1:9/none"):
        open_camera("rtsp://127.0.0.1:9/none", open_timeout=8)


def test_image_size_reads_headers_only():
    ok, png = cv2.imencode(".png", numbered(1, (33, 21)))
    assert image_size(png.tobytes()) == ("PNG", 33, 21)
    ok, jpg = cv2.imencode(".jpg", numbered(1, (35, 19)))
    assert image_size(jpg.tobytes()) == ("JPEG", 35, 19)
    ok, bmp = cv2.imencode(".bmp", numbered(1, (7, 5)))
    assert image_size(bmp.tobytes()) == ("BMP", 7, 5)
    assert image_size(b"GIF89a....") is None
    assert image_size(jpg.tobytes()[:4]) is None
