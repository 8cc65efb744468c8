"""Full-duplex listening: echo cancellation, VAD, endpointing and barge-in, one 32 ms frame at a time.

``Listener.push(mic, ref, ts)`` takes what the microphone captured and what the speaker played over the same
span (the reference) and returns events: ``SpeechStart`` / ``SpeechEnd`` from the endpointer, and ``BargeIn``
when the customer talks over the kiosk. It is a pure state machine over audio (no clocks, no I/O), so the
same object runs in the kiosk, in ``voice-test`` and in the 10-minute self-trigger simulation of the benchmark.

While the kiosk plays (reference energy in the last ``hangover_ms``), speech heard on the echo-cancelled
residual becomes a barge-in only when all three hold, for ``barge_in_ms`` in a row:
  1. the VAD calls the residual speech;
  2. the echo canceller has converged (its ERLE over recent playback ≥ ``min_erle_db``): before that the
     residual is mostly the kiosk itself, and the listener falls back to half duplex;
  3. the residual is ``margin_db`` louder than the echo the canceller leaves behind (its echo estimate minus
     its ERLE): what remains after cancelling is not the kiosk's voice.
An utterance that starts during playback without a barge-in is the kiosk hearing itself: it is dropped
(``suppressed``), never turned into a turn.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from runtime.voice.echo import EchoCanceller
from runtime.voice.vad import FRAME_S, FRAME_SAMPLES, Endpointer, SpeechEnd, SpeechPause, SpeechStart


@dataclass(frozen=True, slots=True)
class BargeIn:
    """The customer started talking over the kiosk at ``ts`` (onset of the first speech frame)."""

    ts: float
    decided_ts: float  # end of the frame on which it was decided


class Listener:
    def __init__(self, endpointer: Endpointer, aec: EchoCanceller | None = None, *, barge_in_ms: float = 96,
                 margin_db: float = 10.0, min_erle_db: float = 12.0, hangover_ms: float = 300) -> None:
        if endpointer.vad is None:
            raise ValueError("Listener needs an Endpointer with a VAD")
        self.endpointer = endpointer
        self.aec = aec if aec is not None else EchoCanceller()
        self.barge_frames = max(1, int(round(barge_in_ms / 1000 / FRAME_S)))
        self.margin = 10 ** (margin_db / 10)
        self.min_erle_db = min_erle_db
        self.hangover_s = hangover_ms / 1000
        self.enabled = True  # barge-in allowed (push-to-talk and settings may turn it off)
        self._erle: collections.deque = collections.deque(maxlen=150)  # block ERLE over ~5 s of playback
        self._recent: collections.deque = collections.deque(maxlen=self.barge_frames + 12)  # residual frames
        self._pending = np.zeros(0, np.int16)
        self._pending_ref = np.zeros(0, np.int16)
        self._clock = 0.0
        self._play_until = float("-inf")
        self._run = 0
        self._run_start = 0.0
        self._barged = False
        self._utt_during_play = False
        self.suppressed = 0  # utterances heard during playback and dropped as the kiosk's own voice
        self.barge_ins = 0

    # -- state -----------------------------------------------------------------------------------------

    def playing(self, ts: float) -> bool:
        return ts < self._play_until

    @property
    def converged(self) -> bool:
        return len(self._erle) >= 30 and float(np.percentile(self._erle, 75)) >= self.min_erle_db

    def erle_db(self) -> float:
        return float(np.percentile(self._erle, 75)) if self._erle else 0.0

    def flush(self) -> SpeechEnd | None:
        """End the utterance in progress now (push-to-talk released, the microphone closed), through the same
        filter as every other: one that started while the kiosk talked, with no barge-in, is its own voice."""
        end = self.endpointer.flush()
        own = self._utt_during_play and not self._barged
        self._utt_during_play = self._barged = False
        if end is not None and own:
            self.suppressed += 1
            return None
        return end

    def reset_utterance(self) -> None:
        """Drop an utterance in progress (e.g. push-to-talk released with nothing said); keep the echo filter."""
        self.endpointer._reset_state()
        self._run = 0

    # -- audio -------------------------------------------------------------------------------------------

    def push(self, mic, ref=None, ts: float | None = None) -> list:
        """Any amount of 16 kHz int16 microphone audio, and the speaker's reference for the same samples
        (None: the kiosk played nothing). ``ts``: time of the first sample (default: continue the clock)."""
        mic = np.asarray(mic, dtype=np.int16).reshape(-1)
        ref = np.zeros_like(mic) if ref is None else np.asarray(ref, dtype=np.int16).reshape(-1)
        if ref.shape != mic.shape:
            raise ValueError(f"reference and microphone differ in length: {ref.shape} vs {mic.shape}")
        if ts is not None:
            self._clock = ts - len(self._pending) / 16000
        buf = np.concatenate([self._pending, mic])
        rbuf = np.concatenate([self._pending_ref, ref])
        n = len(buf) // FRAME_SAMPLES
        events: list = []
        for i in range(n):
            sl = slice(i * FRAME_SAMPLES, (i + 1) * FRAME_SAMPLES)
            events += self._frame(buf[sl], rbuf[sl])
        self._pending, self._pending_ref = buf[n * FRAME_SAMPLES:].copy(), rbuf[n * FRAME_SAMPLES:].copy()
        return events

    def _frame(self, mic: np.ndarray, ref: np.ndarray) -> list:
        ts = self._clock
        self._clock += FRAME_S
        ref_power = float(np.mean(ref.astype(np.float64) ** 2))
        if ref_power > EchoCanceller.MIN_REF_POWER:
            self._play_until = ts + FRAME_S + self.hangover_s
        playing = self.playing(ts)
        residual = self.aec.process(mic, ref) if (playing or self.aec.echo_power > 1.0) else mic
        aec = self.aec
        if ref_power > EchoCanceller.MIN_REF_POWER and self._run == 0:
            self._erle.append(aec.erle_db())
        prob = self.endpointer.vad.probability(residual)
        self._recent.append(residual)
        events: list = []
        was_idle = self.endpointer._state == "idle"
        for ev in self.endpointer.feed_probability(prob, residual, ts):
            if isinstance(ev, (SpeechStart, SpeechPause)):
                if self._utt_during_play and not self._barged:
                    continue  # the kiosk's own voice (or too faint to be sure): not a turn
                events.append(ev)
            elif isinstance(ev, SpeechEnd):
                if self._utt_during_play and not self._barged:
                    self.suppressed += 1
                else:
                    events.append(ev)
                self._utt_during_play = self._barged = False
        if was_idle and self.endpointer._state != "idle":
            self._utt_during_play = playing  # an utterance that starts while the kiosk talks
            self._barged = False
        if self.endpointer._state == "idle":
            self._utt_during_play = self._barged = False

        # Barge-in: speech on the residual that is clearly not what is left of the kiosk's voice.
        if playing and self.enabled and not self._barged:
            expected = aec.recent_echo_power() * 10 ** (-self.erle_db() / 10)
            speechy = prob >= self.endpointer.threshold and self.converged \
                and float(np.mean(residual.astype(np.float64) ** 2)) > self.margin * expected + 1e3
            if speechy:
                if self._run == 0:
                    self._run_start = ts
                self._run += 1
                if self._run >= self.barge_frames:
                    self.barge_ins += 1
                    events.append(BargeIn(self._run_start, ts + FRAME_S))
                    # The customer's utterance starts here (with a little pre-roll), not wherever the endpointer
                    # may have started on residual echo: that would put the kiosk's words in their transcript.
                    keep = list(self._recent)[-(self._run + 3):]
                    self.endpointer.restart(keep, self._run_start - 3 * FRAME_S)
                    if not any(isinstance(e, SpeechStart) for e in events):
                        events.append(SpeechStart(self._run_start))
                    self._utt_during_play = True
                    self._barged = True
                    self._run = 0
            else:
                self._run = 0
        elif not playing:
            self._run = 0
        aec.frozen = self._run > 0 or self._barged
        return events
