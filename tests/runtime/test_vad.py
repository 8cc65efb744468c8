"""Silero VAD on ONNX Runtime and the end-of-speech segmenter (runtime/voice/vad.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from runtime.voice.vad import FRAME_SAMPLES, Endpointer, SileroVAD, SpeechEnd, SpeechStart

REPO = Path(__file__).resolve().parents[2]
RATE = 16000


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD()


def _resample(x: np.ndarray, src: int, dst: int = RATE) -> np.ndarray:
    t = np.arange(int(len(x) * dst / src)) / dst
    return np.interp(t, np.arange(len(x)) / src, x.astype(np.float32)).astype(np.int16)


def _voiced_span(x: np.ndarray, rate: int) -> tuple[float, float]:
    """First and last 10 ms window whose peak is above 5% of the utterance's peak: the true speech boundaries."""
    win = rate // 100
    n = len(x) // win
    peaks = np.abs(x[: n * win].astype(np.int32)).reshape(n, win).max(axis=1)
    on = np.flatnonzero(peaks > 0.05 * peaks.max())
    return on[0] * win / rate, (on[-1] + 1) * win / rate


@pytest.fixture(scope="module")
def utterance(tmp_path_factory) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    wav = tmp_path_factory.mktemp("vad") / "oat.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "where can I find the oat milk"], check=True, capture_output=True)
    with wave.open(str(wav)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return _resample(x, w.getframerate())


def _events(ep: Endpointer, audio: np.ndarray) -> list:
    return ep.push(audio)


def test_silence_is_not_speech(vad):
    vad.reset()
    probs = [vad.probability(np.zeros(FRAME_SAMPLES, np.int16)) for _ in range(60)]
    assert max(probs) < 0.1
    assert _events(Endpointer(vad), np.zeros(3 * RATE, np.int16)) == []


def test_low_white_noise_is_not_speech(vad):
    vad.reset()
    noise = np.random.default_rng(0).normal(0, 300, 4 * RATE).clip(-32768, 32767).astype(np.int16)  # ≈ -41 dBFS
    assert _events(Endpointer(vad), noise) == []


def test_espeak_utterance_gives_one_pair_near_true_boundaries(vad, utterance):
    vad.reset()
    lead, tail = 1.0, 1.5
    audio = np.concatenate([np.zeros(int(lead * RATE), np.int16), utterance, np.zeros(int(tail * RATE), np.int16)])
    t0, t1 = _voiced_span(utterance, RATE)
    true_start, true_end = lead + t0, lead + t1
    events = _events(Endpointer(vad), audio)
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd], events
    start, end = events
    assert abs(start.ts - true_start) <= 0.3, (start.ts, true_start)
    assert abs(end.ts - true_end) <= 0.3, (end.ts, true_end)
    assert end.start_ts == start.ts and end.reason == "silence" and end.rate == RATE
    # the utterance audio covers the speech plus a little pre-roll, and not the whole stream
    assert end.audio.dtype == np.int16
    assert (true_end - true_start) <= len(end.audio) / RATE <= (true_end - true_start) + 0.8


def test_timestamps_follow_the_callers_clock(vad, utterance):
    vad.reset()
    ep = Endpointer(vad)
    audio = np.concatenate([np.zeros(RATE // 2, np.int16), utterance, np.zeros(RATE, np.int16)])
    events = []
    for i in range(0, len(audio), 1600):  # 100 ms chunks, like a microphone
        events += ep.push(audio[i:i + 1600], ts=1000.0 + i / RATE)
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd]
    assert 1000.2 < events[0].ts < 1001.0 and events[1].ts > events[0].ts


def _feed(ep: Endpointer, probs: list[float]) -> list:
    out = []
    for i, p in enumerate(probs):
        out += ep.feed_probability(p, ts=i * FRAME_SAMPLES / RATE)
    return out


def test_short_blip_is_dropped_and_long_speech_is_split():
    ep = Endpointer(None, min_speech_ms=250, trailing_silence_ms=500, max_utterance_s=2)
    assert _feed(ep, [0.0] * 5 + [0.9] * 4 + [0.0] * 30) == []  # 128 ms < 250 ms: a click
    ep = Endpointer(None, min_speech_ms=250, trailing_silence_ms=500, max_utterance_s=2)
    events = _feed(ep, [0.9] * 100 + [0.0] * 20)  # 3.2 s of speech, cap 2 s
    kinds = [(type(e).__name__, getattr(e, "reason", None)) for e in events]
    assert kinds == [("SpeechStart", None), ("SpeechEnd", "max_length"), ("SpeechStart", None), ("SpeechEnd", "silence")]
    # hysteresis: dips between threshold-0.15 and threshold do not end the utterance
    ep = Endpointer(None)
    events = _feed(ep, [0.9] * 10 + [0.4] * 30 + [0.9] * 10 + [0.0] * 20)
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd]


def test_frame_cost_and_shape_check(vad):
    vad.reset()
    frame = np.random.default_rng(1).normal(0, 3000, FRAME_SAMPLES).astype(np.int16)
    for _ in range(5):
        vad.probability(frame)
    t0 = time.perf_counter()
    for _ in range(100):
        vad.probability(frame)
    ms = (time.perf_counter() - t0) * 10
    print(f"Silero VAD: {ms:.3f} ms per 32 ms frame")
    assert ms < 5.0  # ~0.2 ms here; the bound only catches a pathological setup
    with pytest.raises(ValueError):
        vad.probability(np.zeros(480, np.int16))


def test_vad_never_imports_torch():
    code = ("import sys, numpy as np\n"
            "from runtime.voice import SileroVAD, Endpointer\n"
            "v = SileroVAD(); Endpointer(v).push(np.zeros(16000, np.int16))\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'faster_whisper', 'silero_vad', 'piper')]\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
