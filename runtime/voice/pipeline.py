"""``storeclerk voice-test``: one WAV through VAD → Whisper → understanding → dialogue → Piper, with the
latencies a customer feels, each measured from the end of speech in the file.

The file is fed frame by frame as if it were being spoken (audio time), and the end-of-speech decision is
taken by the same endpointer the live microphone will use; the work after it (ASR, understanding, dialogue,
first TTS audio) is timed on the wall clock and added. So ``end_of_speech`` is the endpointing delay (the
trailing silence it waits for), and ``first_audio`` is what the customer waits before the kiosk starts to
answer.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import numpy as np

from device.audio import WavSpeaker
from device.wavio import AudioError, read_wav
from runtime.errors import InputError
from runtime.voice.vad import FRAME_SAMPLES, SAMPLE_RATE, Endpointer, SileroVAD, SpeechEnd, SpeechPause

TAIL_S = 1.5  # silence appended so a file that ends mid-word still reaches an end of speech


def first_utterance(pcm16: np.ndarray, endpointer: Endpointer) -> tuple[SpeechEnd, float] | None:
    """The first utterance and the audio time at which the endpointer decided it had ended."""
    found = first_utterance_timed(pcm16, endpointer)
    return (found[0], found[1]) if found else None


def first_utterance_timed(pcm16: np.ndarray, endpointer: Endpointer) -> tuple[SpeechEnd, float, float | None] | None:
    """The first utterance, the audio time at which it was decided, and the audio time of the pause at which
    decoding could start early on exactly that audio (None when there was no such pause)."""
    audio = np.concatenate([pcm16, np.zeros(int(TAIL_S * SAMPLE_RATE), dtype=np.int16)])
    pause: tuple[SpeechPause, float] | None = None
    for i in range(0, len(audio) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        for ev in endpointer.feed(audio[i : i + FRAME_SAMPLES], ts=i / SAMPLE_RATE):
            if isinstance(ev, SpeechPause):
                pause = (ev, (i + FRAME_SAMPLES) / SAMPLE_RATE)
            if isinstance(ev, SpeechEnd):
                same = pause is not None and pause[0].ts == ev.ts and pause[0].start_ts == ev.start_ts
                return ev, (i + FRAME_SAMPLES) / SAMPLE_RATE, (pause[1] if same else None)
    return None


def voice_test(wav: str | Path, out: str | Path | None = None, trailing_silence_ms: int | None = None,
               early_decode_ms: float | None = -1) -> dict:
    """One WAV: the ``storeclerk voice-test`` contract."""
    return voice_turns([wav], [out], trailing_silence_ms=trailing_silence_ms, early_decode_ms=early_decode_ms)[0]


def voice_turns(wavs: list, outs: list | None = None, trailing_silence_ms: int | None = None,
                early_decode_ms: float | None = -1, on_result=None) -> list[dict]:
    """Several WAVs through one warm kiosk (models loaded once, as in the running kiosk), each in a session
    of its own. Raises ``InputError`` on the first file that is not audio or holds no speech."""
    from runtime.app import build
    from runtime.config import load_config
    from runtime.voice.asr import make_whisper, store_vocabulary
    from runtime.voice.stage import VoiceStage
    from runtime.voice.tts import PiperTTS

    defaults = load_config(None)
    trailing = defaults.get("voice.trailing_silence_ms") if trailing_silence_ms is None else trailing_silence_ms
    early = defaults.get("voice.early_decode_ms") if early_decode_ms == -1 else early_decode_ms
    outs = list(outs) if outs is not None else [None] * len(wavs)
    utts = []
    vad = SileroVAD()
    for wav in wavs:
        try:
            pcm = read_wav(wav, SAMPLE_RATE)
        except AudioError as exc:
            raise InputError(str(exc), code="bad_audio") from None
        vad.reset()
        found = first_utterance_timed(pcm, Endpointer(vad, trailing_silence_ms=trailing, early_ms=early))
        if found is None:
            raise InputError(f"{wav}: no speech found (silence, noise, or too short)", code="no_speech")
        utts.append(found)

    with tempfile.TemporaryDirectory() as state:
        parts = build(load_config(None, {"state_dir": state, "kb.watch": False}))
        asr = make_whisper(store_vocabulary(parts.services.kb))
        tts = PiperTTS()

        async def run() -> list[dict]:
            await tts.start()
            await parts.kiosk.start()
            results = []
            try:
                for i, ((utt, decided_at, paused_at), out) in enumerate(zip(utts, outs, strict=True)):
                    speaker = WavSpeaker(out, realtime=False)  # records the spoken reply (to ``out`` when given)
                    stage = VoiceStage(parts.kiosk, None, speaker, asr, tts, None, session=f"voice-test-{i}")
                    try:
                        r = await stage.answer(utt, answer_silence=True)
                    finally:
                        speaker.close()
                    results.append(_timeline(r, utt, decided_at, paused_at, out))
                    if on_result is not None:
                        on_result(results[-1])
            finally:
                await parts.kiosk.stop()
                tts.close()
            return results

        return asyncio.run(run())


def _timeline(r: dict, utt: SpeechEnd, decided_at: float, paused_at: float | None, out) -> dict:
    eos = (decided_at - utt.ts) * 1000
    # With an early pause on the same audio the live stage starts Whisper there; the transcript is ready when
    # both the decode and the endpointer are done.
    asr_final = eos + r["asr_ms"] if paused_at is None else max(eos, (paused_at - utt.ts) * 1000 + r["asr_ms"])
    res = {
        "transcript": r["transcript"],
        "asr_confidence": round(r["asr_confidence"], 3),
        "intent": r["intent"],
        "confidence": round(r["confidence"], 4),
        "reply": r["reply"],
        "end_of_speech": round(eos, 1),
        "asr_final": round(asr_final, 1),
        "understanding": round(asr_final + r["understanding_ms"], 1),
        "first_audio": round(asr_final + r["first_audio_ms"] - r["asr_ms"], 1),
        "asr_ms": round(r["asr_ms"], 1),
        "tts_first_ms": round(r["first_audio_ms"] - r["asr_ms"] - r["reply_ms"], 1),
        "early_decode": paused_at is not None,
        "reply_ms": round(r["reply_ms"], 1),
        "speech_s": round(utt.ts - utt.start_ts, 2),
    }
    if out is not None:
        res["out"] = str(out)
    return res
