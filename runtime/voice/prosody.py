"""Prosody of one utterance: how it was said rather than what was said (loudness, pitch, tempo).

``prosody(pcm16, rate)`` returns a small frozen record, and ``as_vector()`` a fixed-order float32 vector with
each feature scaled to roughly [0, 1] so a fusion model can take it next to the text embedding. numpy only
(the kiosk core has no scipy), and vectorised over frames: a 2-s utterance costs a few milliseconds.

* Frames: 25 ms analysis window every 10 ms.
* Pitch: YIN (de Cheveigné & Kawahara 2002) — difference function through the FFT, cumulative mean
  normalisation, the first dip under an absolute threshold, parabolic interpolation — searched over 60–400 Hz.
* Voiced frame: periodic enough (YIN aperiodicity under ``VOICING``) and loud enough (``active`` below); a frame
  with no voiced neighbour is dropped as a spurious blip.
* Syllable nuclei: peaks of the 300–2500 Hz band energy (where vowel formants sit, so fricatives and low hum
  barely count) that rise ``DIP_DB`` above the dip before them and fall on voiced speech, after de Jong &
  Wempe (2009). The rate is per second of *speech*: pauses of ``MIN_PAUSE_S`` or more are not counted.

Silence (or audio too quiet to measure) gives zeros throughout, never NaN; ``energy_db`` is then 0.0, which no
measured level can be (int16 audio is always below 0 dBFS), so 0.0 reads as "nothing measured".
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

F0_MIN, F0_MAX = 60.0, 400.0
WIN_S, HOP_S = 0.025, 0.010
THRESHOLD = 0.15      # YIN absolute threshold: the first dip under it is the period (avoids octave-too-low picks)
VOICING = 0.35        # best aperiodicity a frame may have and still count as voiced
FLOOR_DB = -70.0      # dBFS below which a frame is silence whatever the rest of the utterance does
RELATIVE_DB = 40.0    # …and frames this far under the loudest are background, not speech
BAND_HZ = (300.0, 2500.0)
DIP_DB = 2.0
MIN_PAUSE_S = 0.25
BLOCK = 128  # frames per pitch batch
FULL_SCALE = 32768.0  # 0 dBFS is a full-scale square wave, so a full-scale sine reads -3 dBFS
_SMOOTH = np.hanning(7)[1:-1] / np.hanning(7)[1:-1].sum()  # 50 ms: merges a vowel's ripples, keeps syllables apart

FEATURES: tuple[str, ...] = (
    "duration",         # log1p(duration_s) / log1p(10): 0 s → 0, 10 s → 1
    "energy",           # (energy_db + 60) / 50: -60 dBFS → 0, -10 dBFS → 1; 0 when nothing was measured
    "energy_std",       # energy_db_std / 10
    "pitch",            # log2(pitch_hz / 60) / log2(400 / 60): 60 Hz → 0, 400 Hz → 1; 0 when unvoiced
    "pitch_range",      # pitch_range_st / 12: one octave → 1
    "voiced_fraction",  # as is
    "syllable_rate",    # syllable_rate / 8
    "words_per_s",      # words_per_s / 4; 0 when the word count is unknown
)


@dataclasses.dataclass(frozen=True)
class Prosody:
    duration_s: float
    energy_db: float        # mean frame RMS in dBFS over voiced frames (over loud frames for whispered speech)
    energy_db_std: float    # spread of that level in dB: flat vs. emphatic delivery
    pitch_hz: float         # median F0 of voiced frames; 0 when nothing is voiced
    pitch_range_st: float   # 10th–90th percentile F0 range in semitones
    voiced_fraction: float  # share of all 10 ms frames that carry a pitch
    syllable_rate: float    # syllable nuclei per second of speech
    words_per_s: float | None  # words per second of speech, when the caller knows the word count
    syllables: int = 0      # nuclei found (what syllable_rate is counted from)
    speech_s: float = 0.0   # seconds of speech: from the first to the last loud frame, long pauses left out

    def as_vector(self) -> np.ndarray:
        """float32, in the order of ``FEATURES``, each scaled as documented there (and clipped to [0, 2])."""
        energy = 0.0 if self.energy_db == 0.0 else (self.energy_db + 60.0) / 50.0
        pitch = math.log2(self.pitch_hz / F0_MIN) / math.log2(F0_MAX / F0_MIN) if self.pitch_hz > 0 else 0.0
        v = np.array([
            math.log1p(self.duration_s) / math.log1p(10.0),
            energy,
            self.energy_db_std / 10.0,
            pitch,
            self.pitch_range_st / 12.0,
            self.voiced_fraction,
            self.syllable_rate / 8.0,
            (self.words_per_s or 0.0) / 4.0,
        ], dtype=np.float32)
        return np.clip(v, 0.0, 2.0)


def _check(pcm16, rate, words) -> np.ndarray:
    if not isinstance(pcm16, np.ndarray):
        raise ValueError(f"prosody needs a numpy int16 array, got {type(pcm16).__name__}")
    if pcm16.dtype != np.int16:
        raise ValueError(f"prosody needs int16 PCM, got dtype {pcm16.dtype} (convert with device.wavio.to_int16)")
    if pcm16.ndim != 1:
        raise ValueError(f"prosody needs mono audio (a 1-D array), got shape {pcm16.shape}; downmix first")
    if pcm16.size == 0:
        raise ValueError("prosody needs at least one sample, got an empty array")
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not 8000 <= rate <= 192000:
        raise ValueError(f"rate must be an integer sample rate from 8000 to 192000 Hz, got {rate!r}")
    if words is not None and (isinstance(words, bool) or not isinstance(words, (int, np.integer)) or words < 0):
        raise ValueError(f"words must be a non-negative integer or None, got {words!r}")
    return pcm16


def _frames(x: np.ndarray, length: int, hop: int, win: int) -> np.ndarray:
    """(n_frames, length) strided view; frames start every ``hop`` while a whole ``win`` fits, zero-padded on."""
    n = 1 + max(0, len(x) - win) // hop
    need = (n - 1) * hop + length
    if len(x) < need:
        x = np.concatenate([x, np.zeros(need - len(x), x.dtype)])
    return np.lib.stride_tricks.sliding_window_view(x, length)[: n * hop : hop]


def _yin(frames: np.ndarray, win: int, tau_min: int, tau_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Period (fractional samples) and aperiodicity for each frame; frames hold win + tau_max + 2 samples."""
    lags = tau_max + 2
    n_fft = 1 << int(math.ceil(math.log2(win + lags)))
    # Contiguous zero-padded copies: rfft pads a strided view far more slowly than it transforms this.
    buf = np.zeros((2, len(frames), n_fft))
    buf[0, :, :win] = frames[:, :win]
    buf[1, :, : frames.shape[1]] = frames
    spec_a, spec_b = np.fft.rfft(buf, axis=-1)
    # No circular wrap: the window (win) plus the largest lag fit inside n_fft.
    r = np.fft.irfft(np.conj(spec_a) * spec_b, n_fft)[:, :lags]
    cs = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(frames * frames, axis=1)], axis=1)
    energy = cs[:, win : win + lags] - cs[:, :lags]  # Σ x² over the window shifted by each lag
    d = np.maximum(energy[:, :1] + energy - 2.0 * r, 0.0)
    total = np.cumsum(d[:, 1:], axis=1)
    cmnd = np.ones_like(d)
    with np.errstate(divide="ignore", invalid="ignore"):
        cmnd[:, 1:] = np.where(total > 0, d[:, 1:] * np.arange(1, lags) / total, 1.0)

    region = cmnd[:, tau_min : tau_max + 1]
    nxt = cmnd[:, tau_min + 1 : tau_max + 2]
    dip = (region < THRESHOLD) & (nxt >= region)  # the first local minimum under the threshold
    tau = np.where(dip.any(axis=1), dip.argmax(axis=1), region.argmin(axis=1)) + tau_min
    rows = np.arange(len(frames))
    a, b, c = cmnd[rows, tau - 1], cmnd[rows, tau], cmnd[rows, tau + 1]
    den = a - 2.0 * b + c
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(den > 1e-12, 0.5 * (a - c) / den, 0.0)
    return tau + np.clip(shift, -1.0, 1.0), b


def _decimate(x: np.ndarray, q: int) -> np.ndarray:
    """Every q-th sample after a windowed-sinc low-pass at 0.8 × the new Nyquist frequency."""
    if q == 1:
        return x
    half = 4 * q
    n = np.arange(-half, half + 1)
    h = np.sinc(0.8 * n / q) * np.hamming(len(n))
    h /= h.sum()
    padded = np.concatenate([np.zeros(half), x, np.zeros(half)])
    return np.lib.stride_tricks.sliding_window_view(padded, len(h))[::q] @ h


def _speech_span(active: np.ndarray, hop_s: float) -> float:
    on = np.flatnonzero(active)
    if on.size == 0:
        return 0.0
    gaps = np.diff(on) - 1  # silent frames between consecutive loud ones
    paused = gaps[gaps * hop_s >= MIN_PAUSE_S].sum()
    return float((on[-1] - on[0] + 1 - paused) * hop_s)


def _nuclei(env_db: np.ndarray, candidates: np.ndarray) -> int:
    inner = env_db[1:-1]
    peak = np.zeros_like(candidates)
    peak[1:-1] = (inner > env_db[:-2]) & (inner >= env_db[2:])
    kept: list[int] = []
    for p in np.flatnonzero(peak & candidates):  # a handful per second: a loop over peaks, not samples
        if kept:
            q = kept[-1]
            if min(env_db[q], env_db[p]) - env_db[q : p + 1].min() < DIP_DB:
                if env_db[p] > env_db[q]:
                    kept[-1] = p  # the same syllable: keep its louder peak
                continue
        kept.append(int(p))
    return len(kept)


def prosody(pcm16: np.ndarray, rate: int = 16000, words: int | None = None) -> Prosody:
    """Prosodic features of one mono int16 utterance. ValueError for empty, non-int16 or multi-channel input."""
    x = _check(pcm16, rate, words).astype(np.float64)
    x -= x.mean()  # a microphone's DC offset is not loudness and skews the difference function
    x /= FULL_SCALE
    duration = len(x) / rate
    win, hop = round(WIN_S * rate), round(HOP_S * rate)
    frames = _frames(x, win, hop, win)
    power = np.einsum("ij,ij->i", frames, frames) / win
    level = 10.0 * np.log10(np.maximum(power, 1e-12))
    active = level > max(FLOOR_DB, float(level.max()) - RELATIVE_DB)

    # Pitch needs nothing above 4 kHz: analysing at about 8 kHz halves the cost of every transform.
    q = max(1, rate // 8000)
    low, low_rate = _decimate(x, q), rate / q
    tau_min, tau_max = int(low_rate / F0_MAX), int(math.ceil(low_rate / F0_MIN))
    low_win = round(WIN_S * low_rate)
    starts = np.rint(np.arange(len(frames)) * (hop / q)).astype(np.intp)  # the same instants as the full-rate frames
    length = low_win + tau_max + 2
    low = np.concatenate([low, np.zeros(max(0, starts[-1] + length - len(low)))])
    low_frames = low[starts[:, None] + np.arange(length)]
    # In blocks of frames small enough for the transforms to stay in cache: a long utterance costs its length,
    # not several times that in memory traffic.
    blocks = [_yin(low_frames[i : i + BLOCK], low_win, tau_min, tau_max) for i in range(0, len(low_frames), BLOCK)]
    period, aperiodicity = (np.concatenate(parts) for parts in zip(*blocks, strict=True))
    period *= q
    voiced = active & (aperiodicity < VOICING)
    neighbour = np.zeros_like(voiced)
    neighbour[1:] |= voiced[:-1]
    neighbour[:-1] |= voiced[1:]
    voiced &= neighbour
    f0 = rate / period[voiced]

    speech_s = _speech_span(active, hop / rate)
    if voiced.any():
        lv = level[voiced]
        p10, p50, p90 = np.percentile(f0, [10, 50, 90])
        pitch, spread = float(p50), float(12.0 * np.log2(p90 / p10))
    else:
        lv = level[active]  # whispered: no pitch, but the level still says something
        pitch = spread = 0.0
    energy_db, energy_std = (float(lv.mean()), float(lv.std())) if lv.size else (0.0, 0.0)

    syllables = 0
    if voiced.any():
        n_fft = 1 << int(math.ceil(math.log2(low_win)))
        spec = np.fft.rfft(low_frames[:, :low_win] * np.hanning(low_win), n_fft)
        lo, hi = (int(round(f * n_fft / low_rate)) for f in BAND_HZ)
        band = np.sum(spec[:, lo : hi + 1].real ** 2 + spec[:, lo : hi + 1].imag ** 2, axis=1)
        smooth = np.convolve(band, _SMOOTH, mode="same")
        env_db = 10.0 * np.log10(np.maximum(smooth, 1e-12))
        near_voice = np.convolve(voiced.astype(np.int8), np.ones(5, np.int8), mode="same") > 0
        syllables = _nuclei(env_db, near_voice & active)
    syl_rate = syllables / speech_s if speech_s > 0 else 0.0
    wps = None if words is None else (words / speech_s if speech_s > 0 else 0.0)
    return Prosody(duration, energy_db, energy_std, pitch, spread, float(voiced.mean()), float(syl_rate),
                   None if wps is None else float(wps), syllables, speech_s)
