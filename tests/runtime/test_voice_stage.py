"""The voice stage end to end with WAV-backed devices: a spoken question in, a spoken answer out, the turn in
the conversation store, and the kiosk's own voice (mixed back into the microphone) never becoming a turn."""

import asyncio
import shutil
import subprocess

import numpy as np
import pytest

from device.audio import WavMicrophone, WavSpeaker
from device.wavio import read_wav

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def test_spoken_question_gets_a_spoken_answer(tmp_path):
    from runtime.app import build
    from runtime.config import load_config
    from runtime.voice.asr import WhisperRecognizer, store_prompt
    from runtime.voice.listener import Listener
    from runtime.voice.stage import VoiceStage
    from runtime.voice.tts import PiperTTS
    from runtime.voice.vad import Endpointer, SileroVAD

    wav = tmp_path / "q.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "how much are the bananas"], check=True)
    parts = build(load_config(None, {"state_dir": str(tmp_path / "state"), "kb.watch": False}))
    # Both in real time, and the speaker's output mixed back into the microphone as in a real kiosk, so the
    # kiosk hears its own answer while (and just after) it speaks.
    speaker = WavSpeaker(tmp_path / "reply.wav", realtime=True)
    mic = WavMicrophone(read_wav(wav, 16000), tail_silence_ms=7000, echo_from=speaker, echo_gain=0.8, realtime=True)
    captions = []

    async def listen(msg):
        captions.append(msg)

    async def go():
        tts = PiperTTS()
        await tts.start()  # warm, as in the running kiosk
        await parts.kiosk.start()
        parts.kiosk.subscribe(listen)
        stage = VoiceStage(parts.kiosk, mic, speaker, WhisperRecognizer(prompt=store_prompt(["Banana"])), tts,
                           Listener(Endpointer(SileroVAD())))
        try:
            await asyncio.wait_for(stage.run(), 120)
        finally:
            await parts.kiosk.stop()
            tts.close()
        return stage

    stage = asyncio.run(go())
    assert stage.turns == 1, stage.timings
    # The echo reached the microphone (gain 0.8) and never became speech: cancelled, or dropped as our own voice.
    assert stage.listener.barge_ins == 0 and stage.barge_ins == 0
    assert stage.listener.aec.echo_power > 0  # the canceller did see the reply coming back
    assert "banana" in stage.timings[0]["transcript"].lower() and stage.timings[0]["intent"] == "product_price"
    played = speaker.recorded()
    assert played.size > 22050 and np.abs(played).max() > 1000  # about a second or more of real speech
    assert any(c["type"] == "caption" and c["final"] for c in captions)
    states = [c["state"] for c in captions if c["type"] == "voice_state"]
    assert {"listening", "thinking", "speaking", "idle"} <= set(states)
    assert any(c["type"] == "reply" and c["channel"] == "voice" for c in captions)
    assert dict(stage.timings[0]["audio"])["pitch"] > 0  # prosody went with the turn
    from runtime.store import ConversationStore

    with ConversationStore(tmp_path / "state" / "conversations.sqlite3", readonly=True) as s:
        rows = s.turns("voice")
    assert [r["role"] for r in rows] == ["customer", "kiosk"]  # the kiosk's echo did not become a second turn
