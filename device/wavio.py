"""WAV reading/writing and resampling in numpy (no scipy), for the kiosk's audio devices and tests.

``read_wav`` accepts PCM 8/16/24/32-bit integer and 32/64-bit float WAVs (plain or WAVE_FORMAT_EXTENSIBLE), any
channel count (downmixed to mono) and any rate (resampled), and returns int16 mono at the asked rate. Anything it
cannot read raises :class:`AudioError` (a ``ValueError``) whose message says what is wrong with which file.
"""

from __future__ import annotations

import math
import os
import struct
import wave
from pathlib import Path

import numpy as np

__all__ = ["AudioError", "WavInfo", "read_wav", "read_wav_info", "resample", "to_int16", "write_wav"]

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
_FORMAT_NAMES = {0x0002: "MS ADPCM", 0x0006: "A-law", 0x0007: "mu-law", 0x0011: "IMA ADPCM", 0x0055: "MP3"}


class AudioError(ValueError):
    """An audio file or device the kiosk cannot use; the message names the file/device and the reason."""


class WavInfo:
    """What a WAV file's header says: format tag, channels, rate, bits, frames, data offset."""

    __slots__ = ("bits", "channels", "data_offset", "data_size", "fmt", "frames", "rate")

    def __init__(self, fmt: int, channels: int, rate: int, bits: int, data_offset: int, data_size: int):
        self.fmt, self.channels, self.rate, self.bits = fmt, channels, rate, bits
        self.data_offset, self.data_size = data_offset, data_size
        self.frames = data_size // (channels * (bits // 8))

    @property
    def duration(self) -> float:
        return self.frames / self.rate

    def __repr__(self) -> str:
        kind = "float" if self.fmt == _FLOAT else "pcm"
        return f"WavInfo({kind}{self.bits}, {self.channels} ch, {self.rate} Hz, {self.frames} frames)"


def read_wav_info(path: str | os.PathLike[str]) -> WavInfo:
    """Parse the RIFF chunks of ``path`` (without reading the samples); AudioError when it is not a usable WAV."""
    path = Path(path)
    try:
        size = path.stat().st_size
        fh = open(path, "rb")
    except OSError as e:
        raise AudioError(f"{path}: cannot open ({e.strerror or e})") from e
    with fh:
        if size == 0:
            raise AudioError(f"{path}: empty file (0 bytes), not a WAV")
        head = fh.read(12)
        if len(head) < 12:
            raise AudioError(f"{path}: truncated header ({size} bytes), not a WAV")
        if head[:4] in (b"RF64", b"BW64"):
            raise AudioError(f"{path}: RF64/BW64 (>4 GB) WAVs are not supported; convert to a plain WAV")
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise AudioError(f"{path}: not a WAV file (starts with {head[:4]!r}, expected b'RIFF'...b'WAVE')")
        fmt = None
        data = None
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            cid, csize = struct.unpack("<4sI", fh.read(8))
            body = pos + 8
            if cid == b"fmt ":
                raw = fh.read(min(csize, 64))
                if len(raw) < 16:
                    raise AudioError(f"{path}: corrupt header (fmt chunk of {len(raw)} bytes, need 16)")
                tag, channels, rate, _byte_rate, _align, bits = struct.unpack("<HHIIHH", raw[:16])
                if tag == _EXTENSIBLE:
                    if len(raw) < 40:
                        raise AudioError(f"{path}: corrupt header (WAVE_FORMAT_EXTENSIBLE fmt chunk too short)")
                    tag = struct.unpack("<H", raw[24:26])[0]  # first two bytes of the SubFormat GUID
                fmt = (tag, channels, rate, bits)
            elif cid == b"data":
                avail = max(0, size - body)
                # A recording cut short (crash mid-write) or a streaming writer's 0 / 0xFFFFFFFF size:
                # use the bytes that are there.
                dsize = avail if csize == 0 or csize > avail else csize
                data = (body, dsize)
                if fmt is not None:
                    break
            pos = body + csize + (csize & 1)
        if fmt is None:
            raise AudioError(f"{path}: corrupt header (no 'fmt ' chunk)")
        if data is None:
            raise AudioError(f"{path}: corrupt or truncated WAV (no 'data' chunk)")
    tag, channels, rate, bits = fmt
    if channels == 0:
        raise AudioError(f"{path}: corrupt header (0 channels)")
    if rate == 0:
        raise AudioError(f"{path}: corrupt header (sample rate 0)")
    if tag == _PCM:
        if bits not in (8, 16, 24, 32):
            raise AudioError(f"{path}: unsupported PCM sample width {bits} bits (supported: 8, 16, 24, 32)")
    elif tag == _FLOAT:
        if bits not in (32, 64):
            raise AudioError(f"{path}: unsupported float sample width {bits} bits (supported: 32, 64)")
    else:
        name = _FORMAT_NAMES.get(tag, f"format tag 0x{tag:04x}")
        raise AudioError(f"{path}: unsupported WAV encoding {name}; convert to PCM 16-bit (e.g. sox in.wav -b 16 -e signed out.wav)")
    return WavInfo(tag, channels, rate, bits, data[0], data[1])


def _decode(raw: bytes, info: WavInfo) -> np.ndarray:
    """Interleaved samples → float32 in [-1, 1], shape (frames, channels)."""
    ch, width = info.channels, info.bits // 8
    usable = len(raw) - len(raw) % (ch * width)
    raw = raw[:usable] if usable != len(raw) else raw
    if info.fmt == _FLOAT:
        x = np.frombuffer(raw, dtype="<f4" if width == 4 else "<f8").astype(np.float32)
        x = np.nan_to_num(x, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
    elif width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        x = v.astype(np.float32) / float(1 << 23)
    else:
        x = (np.frombuffer(raw, dtype="<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    return x.reshape(-1, ch)


def to_int16(x: np.ndarray) -> np.ndarray:
    """float in [-1, 1] → int16, clipping (not wrapping) what is out of range."""
    return np.rint(np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)


def read_wav(path: str | os.PathLike[str], rate: int | None = 16000) -> np.ndarray:
    """Read a WAV as int16 mono at ``rate`` (None keeps the file's rate). Raises AudioError on anything unusable."""
    info = read_wav_info(path)
    target = info.rate if rate is None else int(rate)
    frame_bytes = info.channels * info.bits // 8
    with open(path, "rb") as fh:
        fh.seek(info.data_offset)
        if info.fmt == _PCM and info.bits == 16 and info.channels == 1 and target == info.rate:
            raw = fh.read(info.frames * 2)
            return np.frombuffer(raw, dtype="<i2", count=len(raw) // 2).astype(np.int16)  # one copy: native, writeable
        # Decode and downmix a block at a time, so a long multi-channel float file never exists as a float copy.
        mono = np.empty(info.frames, np.float32)
        block = 1 << 18
        for a in range(0, info.frames, block):
            raw = fh.read(min(block, info.frames - a) * frame_bytes)
            x = _decode(raw, info)
            mono[a : a + len(x)] = x[:, 0] if info.channels == 1 else x.mean(axis=1, dtype=np.float32)
    if target != info.rate:
        mono = resample(mono, info.rate, target)
    return to_int16(mono)


def write_wav(path: str | os.PathLike[str], pcm16, rate: int, channels: int = 1) -> Path:
    """Write int16 samples (bytes or array; interleaved when channels > 1) as a PCM 16-bit WAV."""
    path = Path(path)
    if isinstance(pcm16, (bytes, bytearray, memoryview)):
        data = bytes(pcm16)
    else:
        arr = np.asarray(pcm16)
        if arr.dtype != np.int16:
            arr = to_int16(arr) if arr.dtype.kind == "f" else np.clip(arr, -32768, 32767).astype(np.int16)
        data = arr.astype("<i2", copy=False).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(data)
    return path


def _kernel(d: np.ndarray, fc: float, half: float) -> np.ndarray:
    """Hann-windowed sinc low-pass (cutoff ``fc`` of the input Nyquist) at input-sample distances ``d``."""
    w = np.where(np.abs(d) < half, 0.5 * (1.0 + np.cos(np.pi * d / half)), 0.0)
    return (fc * np.sinc(fc * d) * w).astype(np.float32)


def resample(x: np.ndarray, src: int, dst: int, quality: int = 16, block: int = 32768) -> np.ndarray:
    """Band-limited polyphase resampling (windowed sinc, ~``quality`` zero crossings each side) of a 1-D signal.

    Works on float or int input and returns float32 (same scale as the input). Output length is
    ceil(len(x) * dst / src). Processed in blocks of output samples so memory stays ~O(len(x)).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError("resample: expects a 1-D signal")
    src, dst = int(src), int(dst)
    if src <= 0 or dst <= 0:
        raise ValueError(f"resample: rates must be positive (got {src} → {dst})")
    if src == dst or x.size == 0:
        return x.copy() if src == dst else np.zeros(0, np.float32)
    g = math.gcd(src, dst)
    up, down = dst // g, src // g
    fc = min(1.0, dst / src) * 0.94  # a little below Nyquist of the lower rate
    half = quality / fc  # window half-width in input samples
    k = int(math.ceil(half))
    offsets = np.arange(-k + 1, k + 1)  # taps relative to floor(t)
    table = None
    if up <= 8192:
        frac = np.arange(up, dtype=np.float64) / up
        table = _kernel(offsets[None, :] - frac[:, None], fc, half)
        table /= table.sum(axis=1, keepdims=True)  # unit DC gain per phase
    xp = np.concatenate([np.zeros(k, np.float32), x, np.zeros(k + 1, np.float32)])
    n_out = int(math.ceil(x.size * up / down))
    out = np.empty(n_out, np.float32)
    step = max(1, block // max(1, len(offsets) // 32))
    for a in range(0, n_out, step):
        n = np.arange(a, min(n_out, a + step), dtype=np.int64)
        num = n * down
        base, phase = num // up, num % up
        idx = base[:, None] + offsets[None, :] + k
        if table is not None:
            h = table[phase]
        else:
            h = _kernel(offsets[None, :] - (phase / up)[:, None], fc, half)
            h /= h.sum(axis=1, keepdims=True)
        out[a : a + len(n)] = np.einsum("ij,ij->i", xp[idx], h)
    return out
