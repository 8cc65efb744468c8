"""Reference-based echo suppression: a partitioned-block frequency-domain NLMS echo canceller.

The kiosk knows exactly what it is playing (the reference). What its microphone hears while it plays is the
customer plus that reference after the room: delayed, attenuated, smeared. An adaptive FIR filter estimates
that path from the reference and subtracts its prediction from the microphone; what is left (the residual) is
the customer, which the VAD then listens to. This is what makes barge-in possible without the kiosk hearing
itself: half-duplex gating (ignoring the microphone while speaking) cannot tell the customer from the echo.

Overlap-save PBFDAF (Soo & Pang 1990; the structure WebRTC's AEC3 and speexdsp build on): ``block`` samples
per step, ``partitions`` blocks of filter, so the echo tail it can model is ``block * partitions`` samples
(256 × 8 = 128 ms at 16 kHz: speaker buffering, the room's delay and its early reflections). Adaptation is
normalised per frequency bin. Two filters run side by side so that the customer's voice (double talk) never
teaches the filter that is used to cancel the customer: see ``_step``.

Linear only: a speaker driven into distortion leaves a residual this cannot remove; the barge-in gate (energy
above the predicted echo) is there for that.
"""

from __future__ import annotations

import collections

import numpy as np


class EchoCanceller:
    MIN_REF_POWER = 100.0**2  # -50 dBFS: below this the reference is silence and teaches the filter nothing

    def __init__(self, block: int = 256, partitions: int = 8, mu: float = 0.5, smoothing: float = 0.9) -> None:
        if block <= 0 or partitions <= 0 or not 0 < mu <= 1:
            raise ValueError("block and partitions must be positive and mu in (0, 1]")
        self.block, self.partitions, self.mu, self.smoothing = block, partitions, mu, smoothing
        self.reset()

    def reset(self) -> None:
        n = self.block
        self._W = np.zeros((self.partitions, n + 1), np.complex128)  # foreground filter, per partition, per bin
        self._Wb = np.zeros_like(self._W)  # background filter (adapts)
        self._pb = self._pf = self._pd = 0.0  # smoothed power of background / foreground residual and of the mic
        self.updates = 0
        self._X = np.zeros((self.partitions, n + 1), np.complex128)  # spectra of the last reference blocks
        self._x_prev = np.zeros(n)
        self._mic_buf = np.zeros(0)
        self._ref_buf = np.zeros(0)
        self._out = np.zeros(0)
        self.echo_power = 0.0  # smoothed power of the predicted echo (int16 units²), for the barge-in gate
        self.residual_power = 0.0
        self.mic_power = 0.0
        self.resets = 0
        self._recent_echo: collections.deque = collections.deque(maxlen=4)
        self.frozen = False  # set by the listener during double talk, so the customer is not learned as echo

    @property
    def tail_ms(self) -> float:
        return 1000.0 * self.block * self.partitions / 16000

    def _step(self, d: np.ndarray, x: np.ndarray) -> np.ndarray:
        n = self.block
        self._X = np.roll(self._X, 1, axis=0)
        self._X[0] = np.fft.rfft(np.concatenate([self._x_prev, x]))
        self._x_prev = x
        Y = np.stack([np.sum(self._W * self._X, axis=0), np.sum(self._Wb * self._X, axis=0)])
        y, yb = np.fft.irfft(Y, 2 * n, axis=1)[:, n:]
        e, eb = d - y, d - yb
        a = self.smoothing
        p_mic, p_echo, p_res = float(np.mean(d * d)), float(np.mean(y * y)), float(np.mean(e * e))
        self.mic_power = a * self.mic_power + (1 - a) * p_mic
        self._recent_echo.append(p_echo)
        self.echo_power = a * self.echo_power + (1 - a) * p_echo
        self.residual_power = a * self.residual_power + (1 - a) * p_res
        ref_active = float(np.mean(x * x)) > self.MIN_REF_POWER
        if ref_active:
            # Two paths (the background/foreground scheme of Ochiai et al. 1977, as in speexdsp): the background
            # filter adapts on every block, double talk included; the foreground filter, whose output is used,
            # only takes the background's coefficients once they have cancelled better for a while. Double talk
            # can spoil the background, never the output; no double-talk detector has to be right first.
            self._pb = a * self._pb + (1 - a) * float(np.mean(eb * eb))
            self._pf = a * self._pf + (1 - a) * p_res
            self._pd = a * self._pd + (1 - a) * p_mic
            if not self.frozen:
                E = np.fft.rfft(np.concatenate([np.zeros(n), eb]))
                power = np.sum(np.abs(self._X) ** 2, axis=0)  # reference power per bin over the filter's span
                # Regularised with a share of the mean power: bins the reference barely excites get a small
                # step instead of a huge one (the usual way an NLMS diverges on speech, whose spectrum has holes).
                norm = self.mu / (power + 0.1 * float(np.mean(power)) + 1e-6)
                g = np.fft.irfft(np.conj(self._X) * (E * norm), 2 * n, axis=1)
                g[:, n:] = 0.0  # the gradient constraint: keep the filter causal and linear (not circular)
                self._Wb += np.fft.rfft(g, axis=1)
            if self._pb < 0.7 * self._pf and self._pb < self._pd:
                self._W[:] = self._Wb
                self._pf = self._pb
                self.updates += 1
            elif self._pb > 2.0 * self._pd + 1e4:
                # The background adds more than it removes (double talk, a changed echo path): restart it from
                # the foreground's last good coefficients.
                self._Wb[:] = self._W
                self._pb = self._pf
                self.resets += 1
        return e

    def process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Cancel ``ref`` (what the speaker played, same rate, time-aligned with ``mic``) from ``mic``.
        Any length in, the same length out (int16); internally works in ``block`` steps, with at most one
        block of delay on the output, taken from the start of the stream."""
        mic = np.asarray(mic, dtype=np.float64).reshape(-1)
        ref = np.asarray(ref, dtype=np.float64).reshape(-1)
        if mic.shape != ref.shape:
            raise ValueError(f"microphone and reference differ in length: {mic.shape} vs {ref.shape}")
        self._mic_buf = np.concatenate([self._mic_buf, mic])
        self._ref_buf = np.concatenate([self._ref_buf, ref])
        outs = [self._out]
        n = self.block
        while len(self._mic_buf) >= n:
            outs.append(self._step(self._mic_buf[:n], self._ref_buf[:n]))
            self._mic_buf, self._ref_buf = self._mic_buf[n:], self._ref_buf[n:]
        out = np.concatenate(outs)
        # Output exactly len(mic) samples; a call shorter than a block is padded with leading zeros.
        if len(out) < len(mic):
            out = np.concatenate([np.zeros(len(mic) - len(out)), out])
        self._out = out[len(mic):]
        return np.clip(np.round(out[: len(mic)]), -32768, 32767).astype(np.int16)

    def recent_echo_power(self) -> float:
        """The loudest predicted echo over the last four blocks (64 ms): unsmoothed, so the onset of a reply
        is not under-estimated the way a running average would."""
        return max(self._recent_echo, default=0.0)

    def erle_db(self) -> float:
        """Echo return loss enhancement now: microphone power over residual power, in dB."""
        return 10 * np.log10((self.mic_power + 1e-9) / (self.residual_power + 1e-9))
