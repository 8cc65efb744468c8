"""Voice activity detection: Silero VAD v6 on ONNX Runtime, and a pure end-of-speech segmenter.

``SileroVAD`` loads the ONNX copy that ``faster-whisper`` ships (``faster_whisper/assets/silero_vad_v6.onnx``)
with onnxruntime directly; it never imports ``faster_whisper`` (nor ``silero_vad``, which pulls torch).

That graph's interface (inspected): ``input`` float32 ``[n, 576]`` = 64 samples of context (the tail of the
previous frame) + one 512-sample frame at 16 kHz in [-1, 1]; ``h``/``c`` float32 ``[1, 1, 128]`` LSTM state;
outputs ``speech_probs`` ``[n]``, ``hn``, ``cn``. There is no ``sr`` input: the graph is 16 kHz only.

``Endpointer`` is a plain state machine fed 512-sample frames (it calls the VAD, or takes a probability
directly in ``feed_probability`` so timing logic is testable without audio) and returns events.
"""

from __future__ import annotations

import collections
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
FRAME_SAMPLES = 512
CONTEXT_SAMPLES = 64
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE  # 32 ms


def default_model_path() -> Path:
    """The Silero VAD v6 ONNX file inside the installed faster-whisper package (found without importing it)."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("faster-whisper is not installed: it ships assets/silero_vad_v6.onnx")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "silero_vad_v6.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"Silero VAD model not found at {path}")
    return path


class SileroVAD:
    """Streaming Silero VAD: ``probability(frame)`` per 512-sample 16 kHz frame, keeping the recurrent state."""

    def __init__(self, model_path: str | os.PathLike | None = None, *, threads: int = 1) -> None:
        import onnxruntime as ort

        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(self.model_path), sess_options=opts,
                                             providers=["CPUExecutionProvider"])
        names = {i.name for i in self._session.get_inputs()}
        if names != {"input", "h", "c"}:
            raise ValueError(f"unexpected Silero VAD inputs {sorted(names)} (expected input, h, c)")
        self.reset()

    def reset(self) -> None:
        """Forget the recurrent state and the context (call between unrelated audio streams)."""
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)

    def probability(self, frame) -> float:
        """Speech probability of one frame: 512 int16 samples (ndarray or bytes) at 16 kHz, or float32 in [-1, 1]."""
        if isinstance(frame, (bytes, bytearray, memoryview)):
            frame = np.frombuffer(frame, dtype=np.int16)
        frame = np.asarray(frame)
        if frame.shape != (FRAME_SAMPLES,):
            raise ValueError(f"Silero VAD takes frames of {FRAME_SAMPLES} samples at 16 kHz, got shape {frame.shape}")
        x = frame.astype(np.float32) / 32768.0 if frame.dtype == np.int16 else frame.astype(np.float32)
        inp = np.concatenate([self._context, x])[None, :]
        prob, self._h, self._c = self._session.run(None, {"input": inp, "h": self._h, "c": self._c})
        self._context = x[-CONTEXT_SAMPLES:].copy()
        return float(np.asarray(prob).reshape(-1)[0])


@dataclass(frozen=True, slots=True)
class SpeechStart:
    """Speech began at ``ts`` (seconds, same clock as the frames fed). Emitted once ``min_speech_ms`` is reached."""

    ts: float


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    """Speech ended at ``ts`` (end of the last speech frame). ``audio``: int16 mono at ``rate``, from
    ``start_ts - pre_roll`` to ``ts + post_roll``. ``reason``: "silence", "max_length" or "released"
    (push-to-talk let go)."""

    ts: float
    start_ts: float
    audio: np.ndarray
    rate: int = SAMPLE_RATE
    reason: str = "silence"

    @property
    def duration(self) -> float:
        return self.ts - self.start_ts


@dataclass(frozen=True, slots=True)
class SpeechPause:
    """The customer has been silent for ``early_ms``: the utterance *may* be over. Same fields as the
    ``SpeechEnd`` that follows if they stay silent (identical ``ts`` and ``audio``), so a transcript started
    now (decoding while the endpointer still waits) can be used as is; if speech resumes it is discarded."""

    ts: float
    start_ts: float
    audio: np.ndarray
    rate: int = SAMPLE_RATE


class Endpointer:
    """Turns a stream of 512-sample frames into ``SpeechStart`` / ``SpeechEnd`` events.

    A frame is speech when its probability ≥ ``threshold``; once in speech, it stays speech until the
    probability drops under ``threshold - 0.15`` (Silero's hysteresis). An utterance is confirmed (SpeechStart)
    after ``min_speech_ms`` of speech frames; a candidate that goes silent for ``trailing_silence_ms`` before
    that is dropped (clicks, coughs). A confirmed utterance ends after ``trailing_silence_ms`` of silence or
    at ``max_utterance_s``.
    """

    def __init__(self, vad: SileroVAD | None = None, threshold: float = 0.5, min_speech_ms: float = 250,
                 trailing_silence_ms: float = 500, max_utterance_s: float = 15, *, pre_roll_ms: float = 300,
                 post_roll_ms: float = 100, early_ms: float | None = None) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        if min_speech_ms < 0 or trailing_silence_ms <= 0 or max_utterance_s <= 0 or pre_roll_ms < 0 or post_roll_ms < 0:
            raise ValueError("durations must be positive")
        self.vad = vad
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)
        self.min_speech_s = min_speech_ms / 1000
        self.trailing_silence_s = trailing_silence_ms / 1000
        self.max_utterance_s = max_utterance_s
        self._pre_frames = int(round(pre_roll_ms / 1000 / FRAME_S))
        self._post_frames = min(int(round(post_roll_ms / 1000 / FRAME_S)),
                                int(self.trailing_silence_s / FRAME_S))
        # The pause event needs the post-roll already captured, so its audio equals the final utterance's.
        self.early_s = None if early_ms is None else max(early_ms / 1000, self._post_frames * FRAME_S)
        if self.early_s is not None and self.early_s >= self.trailing_silence_s:
            self.early_s = None
        self._pending = np.zeros(0, dtype=np.int16)
        self._clock = 0.0
        self._reset_state()

    def _reset_state(self) -> None:
        self._state = "idle"  # idle | candidate | speech
        self._pre: collections.deque = collections.deque(maxlen=max(self._pre_frames, 1))
        self._frames: list[np.ndarray] = []  # audio since start (pre-roll included)
        self._start_ts = 0.0
        self._speech_s = 0.0
        self._last_speech_end = 0.0
        self._last_speech_idx = 0  # index in _frames after the last speech frame
        self._silence_s = 0.0
        self._paused = False  # a SpeechPause was sent for the current silence

    def reset(self) -> None:
        """Drop any utterance in progress and the VAD state (e.g. after barge-in handling or a new session)."""
        self._reset_state()
        self._pending = np.zeros(0, dtype=np.int16)
        if self.vad is not None:
            self.vad.reset()

    @property
    def in_speech(self) -> bool:
        return self._state == "speech"

    def push(self, pcm16, ts: float | None = None) -> list:
        """Feed any amount of 16 kHz int16 audio (bytes or ndarray); returns the events of complete frames.
        ``ts``: time of the first sample of this chunk (default: continues the internal sample clock)."""
        samples = np.frombuffer(pcm16, dtype=np.int16) if isinstance(pcm16, (bytes, bytearray, memoryview)) \
            else np.asarray(pcm16, dtype=np.int16)
        if ts is not None:
            self._clock = ts - len(self._pending) / SAMPLE_RATE
        buf = np.concatenate([self._pending, samples])
        events: list = []
        n = len(buf) // FRAME_SAMPLES
        for i in range(n):
            events += self.feed(buf[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES])
        self._pending = buf[n * FRAME_SAMPLES:].copy()
        return events

    def feed(self, frame: np.ndarray, ts: float | None = None) -> list:
        """One 512-sample int16 frame starting at ``ts`` (default: the internal clock)."""
        if self.vad is None:
            raise ValueError("Endpointer has no VAD: use feed_probability")
        return self.feed_probability(self.vad.probability(frame), frame, ts)

    def feed_probability(self, prob: float, frame: np.ndarray | None = None, ts: float | None = None) -> list:
        """The state machine itself: one frame's probability (and its audio, kept for the utterance)."""
        if frame is None:
            frame = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        if ts is None:
            ts = self._clock
        self._clock = ts + FRAME_S
        end = ts + FRAME_S
        events: list = []
        if self._state == "idle":
            if prob >= self.threshold:
                self._state = "candidate"
                self._frames = list(self._pre) if self._pre_frames else []
                self._start_ts = ts
                self._speech_s = 0.0
                self._silence_s = 0.0
                self._add(frame, speech=True, end=end)
                if self._speech_s >= self.min_speech_s:
                    self._state = "speech"
                    events.append(SpeechStart(self._start_ts))
            elif self._pre_frames:
                self._pre.append(frame)
            return events

        is_speech = prob >= self.neg_threshold if self._state == "speech" else prob >= self.threshold
        self._add(frame, speech=is_speech, end=end)
        if self._state == "candidate":
            if self._speech_s >= self.min_speech_s:
                self._state = "speech"
                events.append(SpeechStart(self._start_ts))
            elif self._silence_s >= self.trailing_silence_s:
                self._reset_state()  # too short: a click, not speech
            return events

        if self._silence_s >= self.trailing_silence_s:
            events.append(self._finish("silence"))
        elif self.early_s is not None and self._silence_s >= self.early_s and not self._paused:
            self._paused = True
            events.append(SpeechPause(self._last_speech_end, self._start_ts, self._utterance_audio()))
        elif end - self._start_ts >= self.max_utterance_s:
            events.append(self._finish("max_length"))
        return events

    def restart(self, frames: list[np.ndarray], start_ts: float) -> None:
        """Begin the utterance again at ``start_ts`` with ``frames`` (its audio from there on, all speech):
        a barge-in decided that the customer started talking there, and whatever the endpointer had taken
        for speech before it was the kiosk's own voice."""
        self._reset_state()
        self._state = "speech"
        self._start_ts = start_ts
        end = start_ts
        for f in frames:
            end += FRAME_S
            self._add(f, speech=True, end=end)

    def flush(self) -> SpeechEnd | None:
        """End the utterance in progress now (push-to-talk released): its SpeechEnd if speech was confirmed,
        else None; the endpointer is idle afterwards either way."""
        if self._state == "speech":
            return self._finish("released")
        self._reset_state()
        return None

    def _add(self, frame: np.ndarray, *, speech: bool, end: float) -> None:
        self._frames.append(np.asarray(frame, dtype=np.int16))
        if speech:
            self._speech_s += FRAME_S
            self._silence_s = 0.0
            self._paused = False
            self._last_speech_end = end
            self._last_speech_idx = len(self._frames)
        else:
            self._silence_s += FRAME_S

    def _utterance_audio(self) -> np.ndarray:
        keep = self._frames[:min(self._last_speech_idx + self._post_frames, len(self._frames))]
        return np.concatenate(keep) if keep else np.zeros(0, dtype=np.int16)

    def _finish(self, reason: str) -> SpeechEnd:
        event = SpeechEnd(ts=self._last_speech_end, start_ts=self._start_ts, audio=self._utterance_audio(), reason=reason)
        self._reset_state()
        return event
