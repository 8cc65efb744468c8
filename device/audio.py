"""Microphones and speakers: file-backed ones for tests and demos, PyAudio ones for the kiosk.

Everything produces / consumes 16-bit mono PCM. Microphones are async iterators of :class:`AudioChunk`
(512 samples = 32 ms at 16 kHz, the Silero VAD frame). Speakers have ``async play(pcm16, rate)`` and an
``async stop()`` for barge-in. ``device`` imports nothing else of ours.

The echo path: a :class:`WavSpeaker` hands what it actually plays (resampled to the microphone's rate) to any
:class:`EchoTap` a :class:`WavMicrophone` opened on it; the microphone mixes those samples into what it
captures, at a gain and after a fixed delay, so a test can hear the kiosk hearing itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.wavio import AudioError, read_wav, resample, to_int16, write_wav

__all__ = [
    "AudioChunk",
    "AudioError",
    "EchoTap",
    "PyAudioMicrophone",
    "PyAudioSpeaker",
    "WavMicrophone",
    "WavSpeaker",
    "describe_devices",
    "list_devices",
    "read_wav",
    "write_wav",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioChunk:
    """One block of captured audio: ``ts`` (time.monotonic of its first sample), int16 mono little-endian bytes."""

    ts: float
    pcm16: bytes
    rate: int

    @property
    def samples(self) -> int:
        return len(self.pcm16) // 2

    @property
    def duration(self) -> float:
        return self.samples / self.rate

    def array(self) -> np.ndarray:
        return np.frombuffer(self.pcm16, dtype="<i2")


def _as_int16(pcm16) -> np.ndarray:
    if isinstance(pcm16, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(pcm16), dtype="<i2").astype(np.int16)
    a = np.asarray(pcm16)
    if a.dtype.kind == "f":
        return to_int16(a.ravel())
    return np.clip(a.ravel(), -32768, 32767).astype(np.int16)


def _resample_int16(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    return x if src == dst else to_int16(resample(x.astype(np.float32) / 32768.0, src, dst))


# ----------------------------------------------------------------------------------------------- echo


class EchoTap:
    """What a speaker played, at the listener's rate, with a fixed delay (acoustic path + buffering).

    Two clocks. ``timed=False`` (a speaker that plays instantly): a FIFO, ``pull(n)`` takes the next ``n``
    samples. ``timed=True`` (a speaker that plays in real time): every pushed block is laid on the wall clock
    where it started playing (right after the previous block if it arrives early), and ``pull(n, ts)`` returns
    what was sounding over ``[ts - delay, ts - delay + n / rate)``. Only the timed form keeps the echo and the
    echo canceller's reference aligned when blocks arrive unevenly (a FIFO read at a steady pace stretches
    time by every underrun, and differently on each tap).
    """

    def __init__(self, rate: int, gain: float = 0.5, delay_ms: float = 0.0, *, timed: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.rate, self.gain = int(rate), float(gain)
        self.delay = int(round(delay_ms * self.rate / 1000))
        self.timed = timed
        self.clock = clock
        self._buf: deque[list] = deque()  # timed: [start_sample_index, samples]; FIFO: [0, samples]
        self._n = 0
        self._lock = threading.Lock()
        self._end = -1  # timed: sample index (on the clock × rate) where the last block ends

    def push(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.int16)
        with self._lock:
            if not self.timed:
                if not self._buf and self._n == 0 and self.delay:
                    self._buf.append([0, np.zeros(self.delay, np.int16)])  # the path's latency, from silence
                    self._n += self.delay
                self._buf.append([0, x])
                self._n += len(x)
                return
            start = max(int(round(self.clock() * self.rate)), self._end)
            self._buf.append([start, x])
            self._end = start + len(x)
            self._n += len(x)

    def pending(self) -> int:
        return self._n

    def pull(self, n: int, ts: float | None = None) -> np.ndarray:
        """``n`` echoed samples (zeros where the speaker played nothing), gain not yet applied. A timed tap
        needs ``ts``, the time of the listener's first sample, on the same clock."""
        out = np.zeros(n, np.int16)
        with self._lock:
            if self.timed:
                if ts is None:
                    raise ValueError("a timed EchoTap needs the listener's timestamp")
                a = int(round(ts * self.rate)) - self.delay
                b = a + n
                while self._buf and self._buf[0][0] + len(self._buf[0][1]) <= a:
                    self._n -= len(self._buf.popleft()[1])  # already heard
                for start, x in self._buf:
                    if start >= b:
                        break
                    lo, hi = max(a, start), min(b, start + len(x))
                    if hi > lo:
                        out[lo - a : hi - a] = x[lo - start : hi - start]
                return out
            got = 0
            while got < n and self._buf:
                head = self._buf[0][1]
                take = min(n - got, len(head))
                out[got : got + take] = head[:take]
                got += take
                if take == len(head):
                    self._buf.popleft()
                else:
                    self._buf[0][1] = head[take:]
            self._n -= got
        return out


# ----------------------------------------------------------------------------------------------- WAV mic


class WavMicrophone:
    """A microphone that plays a WAV file (or an int16 array) as :class:`AudioChunk` s.

    ``realtime=True`` paces chunks at the wall clock (a chunk is yielded once its last sample would have
    been captured); otherwise chunks come as fast as the consumer takes them, with ``ts`` on a virtual clock
    starting at the first read. The last chunk is zero-padded to full size; ``tail_silence_ms`` of silence
    follows the file so endpointing can fire. ``echo_from`` mixes what that speaker plays into the signal.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | np.ndarray,
        rate: int = 16000,
        chunk_ms: int = 32,
        realtime: bool = False,
        tail_silence_ms: int = 0,
        echo_from: WavSpeaker | None = None,
        echo_gain: float = 0.5,
        echo_delay_ms: float = 50.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rate = int(rate)
        self.chunk = max(1, self.rate * int(chunk_ms) // 1000)
        if isinstance(path, np.ndarray):
            self.path = None
            self.samples = _as_int16(path)
        else:
            self.path = Path(path)
            self.samples = read_wav(self.path, self.rate)
        self.realtime = realtime
        self.tail = int(self.rate * tail_silence_ms / 1000)
        self.clock = clock
        self.echo = echo_from.tap(self.rate, gain=echo_gain, delay_ms=echo_delay_ms) if echo_from is not None else None
        self.chunks_read = 0

    @property
    def duration(self) -> float:
        return (len(self.samples) + self.tail) / self.rate

    def __aiter__(self) -> AsyncIterator[AudioChunk]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[AudioChunk]:
        total = len(self.samples) + self.tail
        n_chunks = math.ceil(total / self.chunk) if total else 0
        dur = self.chunk / self.rate
        t0 = self.clock()
        for i in range(n_chunks):
            a = i * self.chunk
            block = np.zeros(self.chunk, np.int16)
            src = self.samples[a : a + self.chunk]
            block[: len(src)] = src
            if self.realtime:
                delay = t0 + (i + 1) * dur - self.clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    await asyncio.sleep(0)
            else:
                await asyncio.sleep(0)
            if self.echo is not None:
                e = self.echo.pull(self.chunk, t0 + i * dur).astype(np.float32) * self.echo.gain
                block = np.clip(block.astype(np.float32) + e, -32768, 32767).astype(np.int16)
            self.chunks_read += 1
            yield AudioChunk(t0 + i * dur, block.astype("<i2", copy=False).tobytes(), self.rate)


# ----------------------------------------------------------------------------------------------- WAV speaker


class _Playback:
    """Shared barge-in bookkeeping for the speakers, and their taps: what was played, for echo simulation
    (``WavMicrophone(echo_from=...)``) and as the reference the kiosk's echo canceller subtracts."""

    def __init__(self):
        self._taps: list[EchoTap] = []
        self._gen = 0
        self._playing = 0
        self._idle: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None

    def _events(self):
        if self._lock is None:
            self._idle, self._stop, self._lock = asyncio.Event(), asyncio.Event(), asyncio.Lock()
            self._idle.set()
        return self._idle, self._stop, self._lock

    @property
    def is_playing(self) -> bool:
        return self._playing > 0

    @contextlib.asynccontextmanager
    async def _turn(self):
        """One play(): counted as playing from the call (so stop() waits for it), serialised with the others.
        Yields the stop generation it runs under, or None when a stop() came before the speaker was free
        (the play is dropped)."""
        idle, stop, lock = self._events()
        gen = self._gen
        self._playing += 1
        idle.clear()
        try:
            async with lock:
                if gen != self._gen:
                    yield None
                    return
                stop.clear()
                yield gen
        finally:
            self._playing -= 1
            if self._playing == 0:
                idle.set()

    def _stopped(self, gen: int) -> bool:
        return gen != self._gen or self._stop.is_set()

    def _tap_copies(self, x: np.ndarray, rate: int) -> list[tuple[EchoTap, np.ndarray]]:
        return [(t, _resample_int16(x, rate, t.rate)) for t in self._taps]

    @staticmethod
    def _feed_taps(copies, a: int, b: int, n: int, rate: int) -> None:
        """Hand samples [a, b) of an n-sample block played at ``rate`` to each tap, at the tap's own rate."""
        for tap, y in copies:
            ya, yb = a * tap.rate // rate, (len(y) if b >= n else b * tap.rate // rate)
            if yb > ya:
                tap.push(y[ya:yb])

    def tap(self, rate: int, gain: float = 0.5, delay_ms: float = 0.0) -> EchoTap:
        """Everything played from now on, resampled to ``rate`` (timed when playback is real time)."""
        t = EchoTap(rate, gain, delay_ms, timed=getattr(self, "realtime", True))
        self._taps.append(t)
        return t

    async def stop(self) -> float:
        """Barge-in: cut the current playback (and any play() waiting behind it); return the seconds it took."""
        idle, stop, _ = self._events()
        t0 = time.perf_counter()
        self._gen += 1
        if not self.is_playing:
            return 0.0
        stop.set()
        await idle.wait()
        return time.perf_counter() - t0


class WavSpeaker(_Playback):
    """A speaker that records what it plays (at ``rate``) and writes it to ``path`` on close.

    ``realtime=True`` (default) plays in ``chunk_ms`` blocks at wall-clock pace, so ``stop()`` can cut it;
    ``realtime=False`` "plays" instantly. What is played is also pushed, resampled, to every echo tap.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, rate: int = 22050, chunk_ms: int = 20, realtime: bool = True):
        super().__init__()
        self.path = Path(path) if path is not None else None
        self.rate = int(rate)
        self.chunk_ms = int(chunk_ms)
        self.realtime = realtime
        self._recorded: list[np.ndarray] = []
        self.plays = 0
        self.cuts = 0
        self.closed = False

    def recorded(self) -> np.ndarray:
        """Everything played so far (int16 at ``self.rate``), plays back to back."""
        return np.concatenate(self._recorded) if self._recorded else np.zeros(0, np.int16)

    async def play(self, pcm16, rate: int | None = None) -> bool:
        """Play int16 mono (bytes or array) at ``rate`` (default: the speaker's). True if played to the end."""
        if self.closed:
            raise AudioError("WavSpeaker: play() after close()")
        rate = int(rate or self.rate)
        src = _as_int16(pcm16)
        async with self._turn() as gen:
            if gen is None:
                return False
            self.plays += 1
            x = _resample_int16(src, rate, self.rate)
            echoes = self._tap_copies(src, rate)
            if not self.realtime:
                self._emit(x, echoes, 0, len(x))
                await asyncio.sleep(0)
                return True
            step = max(1, self.rate * self.chunk_ms // 1000)
            dur = step / self.rate
            t0 = time.monotonic()
            for i, a in enumerate(range(0, len(x), step)):
                if self._stopped(gen):
                    self.cuts += 1
                    return False
                self._emit(x, echoes, a, min(len(x), a + step))
                wait = t0 + (i + 1) * dur - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), wait)
            if self._stopped(gen):
                self.cuts += 1
                return False
            return True

    def _emit(self, x: np.ndarray, echoes, a: int, b: int) -> None:
        self._recorded.append(x[a:b])
        self._feed_taps(echoes, a, b, len(x), self.rate)

    def close(self) -> Path | None:
        """Write the recording (if a path was given) and return its path."""
        self.closed = True
        if self.path is not None:
            write_wav(self.path, self.recorded(), self.rate)
        return self.path

    async def __aenter__(self) -> WavSpeaker:
        return self

    async def __aexit__(self, *exc) -> None:
        if self.is_playing:
            await self.stop()
        self.close()


# ----------------------------------------------------------------------------------------------- PyAudio


@contextlib.contextmanager
def _quiet_stderr():
    """PortAudio's ALSA/JACK probing prints pages of noise to fd 2 on machines without sound; hide it
    (set STORECLERK_AUDIO_DEBUG=1 to see it)."""
    if os.environ.get("STORECLERK_AUDIO_DEBUG"):
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _open_pyaudio(factory=None):
    if factory is not None:
        return factory()
    try:
        import pyaudio
    except ImportError as e:  # pragma: no cover - depends on the install
        raise AudioError("PyAudio is not installed (pip install 'storeclerk[kiosk]'; Debian needs portaudio19-dev)") from e
    try:
        with _quiet_stderr():
            return pyaudio.PyAudio()
    except Exception as e:  # pragma: no cover - PortAudio init failure
        raise AudioError(f"PortAudio failed to initialise: {e}") from e


def _devices(pa) -> list[dict]:
    out = []
    for i in range(pa.get_device_count()):
        d = pa.get_device_info_by_index(i)
        out.append(
            {
                "index": int(d.get("index", i)),
                "name": str(d.get("name", f"device {i}")),
                "inputs": int(d.get("maxInputChannels", 0)),
                "outputs": int(d.get("maxOutputChannels", 0)),
                "default_rate": float(d.get("defaultSampleRate", 0.0)),
            }
        )
    return out


def list_devices(_pa_factory=None) -> list[dict]:
    """Audio devices PortAudio sees: ``[{index, name, inputs, outputs, default_rate}]``; [] when none (or no PyAudio)."""
    try:
        pa = _open_pyaudio(_pa_factory)
    except AudioError as e:
        log.warning("%s", e)
        return []
    try:
        return _devices(pa)
    finally:
        with contextlib.suppress(Exception):
            pa.terminate()


def describe_devices(devices: list[dict] | None = None) -> str:
    """Human-readable device table for ``storeclerk doctor``."""
    devices = list_devices() if devices is None else devices
    if not devices:
        return "no audio devices found (PortAudio sees none); tests and demos use the WAV-backed microphone and speaker"
    lines = [f"{'idx':>3}  {'in':>2}  {'out':>3}  {'rate':>6}  name"]
    for d in devices:
        lines.append(f"{d['index']:>3}  {d['inputs']:>2}  {d['outputs']:>3}  {int(d['default_rate']):>6}  {d['name']}")
    return "\n".join(lines)


def _resolve(pa, device: int | str | None, kind: str) -> dict:
    """Pick a device by index, by (case-insensitive, exact then substring) name, or the default one."""
    key = "inputs" if kind == "input" else "outputs"
    devs = _devices(pa)
    usable = [d for d in devs if d[key] > 0]
    have = ", ".join(f"{d['index']}: {d['name']!r}" for d in usable) or "none"
    if device is None or device == "" or device == "default":
        try:
            info = pa.get_default_input_device_info() if kind == "input" else pa.get_default_output_device_info()
            idx = int(info["index"])
        except (OSError, KeyError) as e:
            raise AudioError(f"no default {kind} audio device ({e}); {kind} devices available: {have}") from e
        match = [d for d in devs if d["index"] == idx]
        if match and match[0][key] > 0:
            return match[0]
        raise AudioError(f"the default {kind} device ({idx}) has no {kind} channels; {kind} devices available: {have}")
    if isinstance(device, int) or (isinstance(device, str) and device.strip().isdigit()):
        idx = int(device)
        match = [d for d in devs if d["index"] == idx]
        if not match:
            raise AudioError(f"{kind} device index {idx} does not exist; {kind} devices available: {have}")
        if match[0][key] == 0:
            raise AudioError(f"device {idx} ({match[0]['name']!r}) has no {kind} channels; {kind} devices available: {have}")
        return match[0]
    name = str(device).lower()
    exact = [d for d in usable if d["name"].lower() == name]
    sub = [d for d in usable if name in d["name"].lower()]
    if exact or sub:
        return (exact or sub)[0]
    raise AudioError(f"no {kind} device named {device!r}; {kind} devices available: {have}")


class _LinearStream:
    """Streaming linear-interpolation resampler (state carried between blocks) for devices that cannot run at
    the asked rate. Cheap; no anti-alias filter beyond a box average when downsampling by ≥ 2."""

    def __init__(self, src: int, dst: int):
        self.step = src / dst
        self.pos = 0.0
        self.prev = np.zeros(1, np.float32)
        self.box = int(self.step) if self.step >= 2 else 1
        self.hist = np.zeros(self.box - 1, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        if self.box > 1:
            xx = np.concatenate([self.hist, x])
            c = np.cumsum(np.concatenate([[0.0], xx]))
            x = ((c[self.box :] - c[: -self.box]) / self.box).astype(np.float32)
            self.hist = xx[-(self.box - 1) :]
        buf = np.concatenate([self.prev, x])
        last = len(buf) - 1
        n = int(math.floor((last - self.pos) / self.step)) + 1 if last >= self.pos else 0
        p = self.pos + np.arange(n) * self.step
        y = np.interp(p, np.arange(len(buf)), buf)
        self.pos = self.pos + n * self.step - last
        self.prev = buf[-1:]
        return y


class PyAudioMicrophone:
    """A PortAudio capture stream (callback thread → asyncio.Queue) yielding :class:`AudioChunk` s.

    Opens the device at ``rate`` when it supports it, otherwise at its default rate and resamples. When the
    consumer falls behind, the oldest chunks are dropped (``dropped`` counts them): a live microphone must not
    back up. Use ``async with PyAudioMicrophone(...) as mic: async for chunk in mic: ...``.
    """

    def __init__(self, device: int | str | None = None, rate: int = 16000, chunk_ms: int = 32, queue_size: int = 64, _pa_factory=None):
        self.device = device
        self.rate = int(rate)
        self.chunk = max(1, self.rate * int(chunk_ms) // 1000)
        self.queue_size = queue_size
        self.dropped = 0
        self.info: dict | None = None
        self.device_rate = self.rate
        self._factory = _pa_factory
        self._pa = None
        self._stream = None
        self._queue: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resampler: _LinearStream | None = None
        self._pending = np.zeros(0, np.int16)
        self._closed = False

    def open(self) -> PyAudioMicrophone:
        """Open the stream (needs a running event loop). AudioError names the asked device and those that exist."""
        if self._stream is not None:
            return self
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(self.queue_size)
        pa = _open_pyaudio(self._factory)
        try:
            info = _resolve(pa, self.device, "input")
            fmt = 8  # pyaudio.paInt16
            rate = self.rate
            try:
                ok = pa.is_format_supported(rate, input_device=info["index"], input_channels=1, input_format=fmt)
            except ValueError:
                ok = False
            if not ok:
                rate = int(info["default_rate"]) or self.rate
                self._resampler = _LinearStream(rate, self.rate)
            self.device_rate = rate
            frames = max(1, int(round(self.chunk * rate / self.rate)))
            try:
                with _quiet_stderr():
                    self._stream = pa.open(format=fmt, channels=1, rate=rate, input=True, input_device_index=info["index"],
                                           frames_per_buffer=frames, stream_callback=self._callback)
            except (OSError, ValueError) as e:
                raise AudioError(f"cannot open input device {info['index']} ({info['name']!r}) at {rate} Hz mono int16: {e}") from e
        except BaseException:
            with contextlib.suppress(Exception):
                pa.terminate()
            raise
        self._pa, self.info = pa, info
        log.info("microphone: %s (index %d) at %d Hz", info["name"], info["index"], rate)
        return self

    def _callback(self, in_data, frame_count, time_info, status):  # PortAudio's thread
        ts = time.monotonic() - frame_count / max(1, self.device_rate)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._put, ts, in_data)
        return (None, 1 if self._closed else 0)  # paContinue / paComplete

    def _put(self, ts: float, data: bytes) -> None:  # event loop thread
        if self._closed:
            return
        x = np.frombuffer(data, dtype="<i2")
        if self._resampler is not None:
            x = to_int16(self._resampler(x.astype(np.float32) / 32768.0))
        buf = np.concatenate([self._pending, x]) if len(self._pending) else x
        while len(buf) >= self.chunk:
            chunk, buf = buf[: self.chunk], buf[self.chunk :]
            if self._queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    self._queue.get_nowait()
                    self.dropped += 1
            self._queue.put_nowait(AudioChunk(ts, chunk.astype("<i2").tobytes(), self.rate))
            ts += self.chunk / self.rate
        self._pending = np.array(buf, np.int16)

    def __aiter__(self) -> AsyncIterator[AudioChunk]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[AudioChunk]:
        self.open()
        while not self._closed:
            chunk = await self._queue.get()
            if chunk is None:  # close() was called
                return
            yield chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._queue is not None:  # wake a consumer blocked on get(); the queue is the loop's, close() may not be
            loop = self._loop

            def _wake():
                with contextlib.suppress(asyncio.QueueEmpty):
                    if self._queue.full():
                        self._queue.get_nowait()
                self._queue.put_nowait(None)

            with contextlib.suppress(RuntimeError):
                if loop is not None and not loop.is_closed():
                    loop.call_soon_threadsafe(_wake)
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.stop_stream()
                self._stream.close()
        if self._pa is not None:
            with contextlib.suppress(Exception):
                self._pa.terminate()
        self._stream = self._pa = None

    async def __aenter__(self) -> PyAudioMicrophone:
        return self.open()

    async def __aexit__(self, *exc) -> None:
        self.close()


class PyAudioSpeaker(_Playback):
    """A PortAudio output stream. ``play()`` writes in ``chunk_ms`` blocks from a worker thread and checks for
    ``stop()`` between blocks, so barge-in cuts within one block (plus the device's own buffer)."""

    def __init__(self, device: int | str | None = None, rate: int = 22050, chunk_ms: int = 20, _pa_factory=None):
        super().__init__()
        self.device = device
        self.rate = int(rate)
        self.chunk_ms = int(chunk_ms)
        self.info: dict | None = None
        self._factory = _pa_factory
        self._pa = None
        self._streams: dict[int, object] = {}

    def open(self) -> PyAudioSpeaker:
        if self._pa is None:
            pa = _open_pyaudio(self._factory)
            try:
                self.info = _resolve(pa, self.device, "output")
            except BaseException:
                with contextlib.suppress(Exception):
                    pa.terminate()
                raise
            self._pa = pa
            log.info("speaker: %s (index %d)", self.info["name"], self.info["index"])
        return self

    def _stream(self, rate: int):
        if rate not in self._streams:
            try:
                with _quiet_stderr():
                    self._streams[rate] = self._pa.open(format=8, channels=1, rate=rate, output=True,
                                                        output_device_index=self.info["index"])
            except (OSError, ValueError) as e:
                raise AudioError(f"cannot open output device {self.info['index']} ({self.info['name']!r}) at {rate} Hz: {e}") from e
        return self._streams[rate]

    async def play(self, pcm16, rate: int | None = None) -> bool:
        self.open()
        rate = int(rate or self.rate)
        x = _as_int16(pcm16)
        async with self._turn() as gen:
            if gen is None:
                return False
            try:
                stream = self._stream(rate)
            except AudioError:
                if rate == int(self.info["default_rate"]):
                    raise
                rate2 = int(self.info["default_rate"])
                x, rate = _resample_int16(x, rate, rate2), rate2
                stream = self._stream(rate)
            step = max(1, rate * self.chunk_ms // 1000)
            cancelled = threading.Event()
            refs = self._tap_copies(x, rate)

            def _write() -> bool:
                for a in range(0, len(x), step):
                    if cancelled.is_set():
                        return False
                    b = min(len(x), a + step)
                    self._feed_taps(refs, a, b, len(x), rate)  # the echo canceller's reference, as it goes out
                    stream.write(x[a:b].astype("<i2").tobytes())
                return True

            fut = asyncio.get_running_loop().run_in_executor(None, _write)
            stopper = asyncio.ensure_future(self._stop.wait())
            done, _ = await asyncio.wait({fut, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                cancelled.set()
                with contextlib.suppress(Exception):
                    await fut
                return False
            stopper.cancel()
            return bool(fut.result())

    def close(self) -> None:
        for s in self._streams.values():
            with contextlib.suppress(Exception):
                s.stop_stream()
                s.close()
        self._streams.clear()
        if self._pa is not None:
            with contextlib.suppress(Exception):
                self._pa.terminate()
        self._pa = None
