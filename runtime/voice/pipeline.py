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
from runtime.voice.vad import FRAME_SAMPLES, SAMPLE_RATE, Endpointer, SileroVAD, SpeechEnd

TAIL_S = 1.5  # silence appended so a file that ends mid-word still reaches an end of speech


def first_utterance(pcm16: np.ndarray, endpointer: Endpointer) -> tuple[SpeechEnd, float] | None:
    """The first utterance and the audio time at which the endpointer decided it had ended."""
    audio = np.concatenate([pcm16, np.zeros(int(TAIL_S * SAMPLE_RATE), dtype=np.int16)])
    for i in range(0, len(audio) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        for ev in endpointer.feed(audio[i : i + FRAME_SAMPLES], ts=i / SAMPLE_RATE):
            if isinstance(ev, SpeechEnd):
                return ev, (i + FRAME_SAMPLES) / SAMPLE_RATE
    return None


def voice_test(wav: str | Path, out: str | Path | None = None, trailing_silence_ms: int = 500) -> dict:
    from runtime.app import build
    from runtime.config import load_config
    from runtime.voice.asr import WhisperRecognizer, store_prompt
    from runtime.voice.stage import VoiceStage
    from runtime.voice.tts import PiperTTS

    try:
        pcm = read_wav(wav, SAMPLE_RATE)
    except AudioError as exc:
        raise InputError(str(exc), code="bad_audio") from None
    found = first_utterance(pcm, Endpointer(SileroVAD(), trailing_silence_ms=trailing_silence_ms))
    if found is None:
        raise InputError(f"{wav}: no speech found (silence, noise, or too short)", code="no_speech")
    utt, decided_at = found

    with tempfile.TemporaryDirectory() as state:
        parts = build(load_config(None, {"state_dir": state, "kb.watch": False}))
        asr = WhisperRecognizer(prompt=store_prompt([p.display_name for p in parts.services.kb.products]))
        tts = PiperTTS()
        speaker = WavSpeaker(out, realtime=False)  # records the spoken reply (to ``out`` when given)
        stage = VoiceStage(parts.kiosk, None, speaker, asr, tts, None, session="voice-test")

        async def run() -> dict:
            await tts.start()
            await parts.kiosk.start()
            try:
                r = await stage.answer(utt, answer_silence=True)
            finally:
                await parts.kiosk.stop()
                tts.close()
                speaker.close()
            eos = (decided_at - utt.ts) * 1000
            res = {
                "transcript": r["transcript"],
                "asr_confidence": round(r["asr_confidence"], 3),
                "intent": r["intent"],
                "confidence": round(r["confidence"], 4),
                "reply": r["reply"],
                "end_of_speech": round(eos, 1),
                "asr_final": round(eos + r["asr_ms"], 1),
                "understanding": round(eos + r["asr_ms"] + r["understanding_ms"], 1),
                "first_audio": round(eos + r["first_audio_ms"], 1),
                "reply_ms": round(r["reply_ms"], 1),
                "speech_s": round(utt.ts - utt.start_ts, 2),
            }
            if out is not None:
                res["out"] = str(out)
            return res

        return asyncio.run(run())
