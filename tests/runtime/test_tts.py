"""Piper TTS in its own process (runtime/voice/tts.py + runtime/voice/piper_worker.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.voice.tts import PiperTTS, TTSError, default_voice_path, split_first_clause, split_sentences

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tts():
    t = PiperTTS()
    asyncio.run(t.start())
    yield t
    t.close()


def _collect(tts: PiperTTS, text: str) -> list[tuple[float, bytes, int]]:
    async def go():
        t0 = time.perf_counter()
        return [(time.perf_counter() - t0, pcm, rate) async for pcm, rate in tts.synthesize(text)]

    return asyncio.run(go())


def test_split_sentences():
    assert split_sentences("Hi there! Oat milk is in aisle 4. Want a map?\nOK") == \
        ["Hi there!", "Oat milk is in aisle 4.", "Want a map?", "OK"]
    assert split_sentences("  ") == []
    assert split_first_clause(["Oat milk is in aisle four, on the left side.", "Next."]) == \
        ["Oat milk is in aisle four,", "on the left side.", "Next."]
    assert split_first_clause(["Yes, it is."]) == ["Yes, it is."]  # too short to split


def test_synthesizes_non_silent_audio_at_the_voice_rate(tts):
    rate = json.loads(Path(f"{default_voice_path()}.json").read_text())["audio"]["sample_rate"]
    chunks = _collect(tts, "Where can I find the oat milk?")
    assert chunks and all(r == rate for _, _, r in chunks)
    audio = np.frombuffer(b"".join(p for _, p, _ in chunks), dtype=np.int16)
    assert 0.8 < len(audio) / rate < 4.0
    assert np.abs(audio).max() > 3000 and audio.astype(np.float64).std() > 300


def test_streams_first_sentence_before_the_second(tts):
    tts.split_first = False
    try:
        first, second = "The bakery opens at seven in the morning.", "Fresh bread is ready by eight, every single day."
        chunks = _collect(tts, f"{first} {second}")
    finally:
        tts.split_first = True
    assert len(chunks) >= 2
    t_first, t_last = chunks[0][0], chunks[-1][0]
    # the first sentence arrived on its own, well before the second was done
    assert t_first < t_last and t_first < 0.8 * t_last, (t_first, t_last)
    first_alone = np.frombuffer(b"".join(p for _, p, _ in _collect(tts, first)), dtype=np.int16)
    assert len(chunks[0][1]) // 2 == len(first_alone)  # that first chunk is exactly sentence one (now cached)


def test_cache_hit_is_fast_and_needs_no_worker(tts):
    text = "Welcome! How can I help you today?"
    cold = b"".join(p for _, p, _ in _collect(tts, text))
    tts.close()  # no worker at all: a cached prompt must still play
    t0 = time.perf_counter()
    warm = b"".join(p for _, p, _ in _collect(tts, text))
    elapsed = time.perf_counter() - t0
    assert warm == cold and elapsed < 0.05, elapsed
    assert tts.worker_pid is None
    asyncio.run(tts.start())  # leave a warm worker for the other tests


LONG = ("Oat milk is in aisle four. Almond milk is right next to it. Soy milk is on the bottom shelf. "
        "Lactose free milk is in the dairy case by the eggs. Ask me if you want a map of the store.")


def _kill_after_first_chunk(tts: PiperTTS, text: str) -> tuple[list[bytes], BaseException | None]:
    async def go():
        got: list[bytes] = []
        try:
            async for pcm, _ in tts.synthesize(text):
                if not got:
                    os.kill(tts.worker_pid, signal.SIGKILL)
                got.append(pcm)
        except TTSError as exc:
            return got, exc
        return got, None

    return asyncio.run(go())


def test_killed_worker_is_restarted_transparently_and_next_call_works(tts):
    tts._cache.clear()
    starts = tts.worker_starts
    got, err = _kill_after_first_chunk(tts, LONG)
    assert err is None
    assert len(got) == len(split_first_clause(split_sentences(LONG)))  # one chunk per sentence, none lost or repeated
    assert tts.worker_starts == starts + 1 and tts.worker_pid is not None
    assert all(np.abs(np.frombuffer(p, np.int16)).max() > 1000 for p in got)


def test_killed_worker_without_retries_raises_a_clear_error_then_recovers():
    t = PiperTTS(retries=0, cache_size=0)
    try:
        asyncio.run(t.start())
        got, err = _kill_after_first_chunk(t, LONG)
        assert isinstance(err, TTSError) and err.code == "tts" and "worker died" in str(err), err
        assert 1 <= len(got) < len(split_sentences(LONG))
        after = _collect(t, "Sorry about that.")  # the next call starts a fresh worker
        assert after and t.worker_starts == 2
    finally:
        t.close()
    assert t.worker_pid is None


def test_barge_in_close_early_then_next_call_is_clean(tts):
    async def go():
        gen = tts.synthesize(LONG + " One more sentence for good measure.")
        async for _ in gen:
            break
        await gen.aclose()  # customer interrupted: the remaining sentences are cancelled
        return [p async for p, _ in tts.synthesize("Okay.")]

    out = asyncio.run(go())
    assert out and len(b"".join(out)) > 1000


def test_piper_and_torch_stay_out_of_the_kiosk_process():
    code = ("import asyncio, sys\n"
            "from runtime.voice.tts import PiperTTS\n"
            "t = PiperTTS()\n"
            "async def go():\n"
            "    return [p async for p, _ in t.synthesize('Hello there.')]\n"
            "assert asyncio.run(go())\n"
            "t.close()\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('piper', 'torch', 'espeakbridge')]\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
