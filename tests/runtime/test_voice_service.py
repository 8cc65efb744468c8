"""``storeclerk run``'s voice: off with a reason when there is no audio device (the kiosk goes on), and on, end
to end, when the devices open (WAV-backed stand-ins for PortAudio here)."""

import asyncio
import shutil
import subprocess

import pytest

import device.audio as audio
from device.audio import AudioError, WavMicrophone, WavSpeaker


def _parts(tmp_path, **over):
    from runtime.app import build
    from runtime.config import load_config

    return build(load_config(None, {"state_dir": str(tmp_path / "state"), "kb.watch": False, **over})), load_config(
        None, {"state_dir": str(tmp_path / "state"), "kb.watch": False, **over})


def test_no_microphone_turns_voice_off_with_a_reason(tmp_path, monkeypatch, caplog):
    from runtime.voice.service import VoiceService

    class NoMic:
        def __init__(self, device=None):
            self.device = device

        def open(self):
            raise AudioError("no default input audio device; input devices available: none")

    monkeypatch.setattr(audio, "PyAudioMicrophone", NoMic)
    parts, config = _parts(tmp_path)
    svc = VoiceService(config, parts)
    parts.kiosk.extra_health["voice"] = svc.health

    async def go():
        await parts.kiosk.start()
        try:
            await svc.run()
            return parts.kiosk.healthz()
        finally:
            await parts.kiosk.stop()

    h = asyncio.run(go())
    assert h["status"] == "ok" and h["voice"]["state"] == "off"
    assert "no default input audio device" in h["voice"]["reason"]
    assert parts.kiosk.voice is None
    assert "voice is off" in caplog.text and "--no-voice" in caplog.text


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_voice_service_answers_a_spoken_question(tmp_path, monkeypatch):
    from device.wavio import read_wav
    from runtime.voice.service import VoiceService

    wav = tmp_path / "q.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "what time do you close today"], check=True)
    speaker = WavSpeaker(tmp_path / "out.wav", realtime=True)

    class Mic(WavMicrophone):
        def __init__(self, device=None):
            super().__init__(read_wav(wav, 16000), tail_silence_ms=9000, realtime=True, echo_from=speaker)

        def open(self):
            return self

        def close(self):
            pass

    class Spk:
        def __init__(self, device=None):
            pass

        def open(self):
            return speaker

    monkeypatch.setattr(audio, "PyAudioMicrophone", Mic)
    monkeypatch.setattr(audio, "PyAudioSpeaker", Spk)
    parts, config = _parts(tmp_path, **{"voice.captions": False})
    svc = VoiceService(config, parts)
    seen = []

    async def listen(msg):
        seen.append(msg)

    async def go():
        await parts.kiosk.start()
        parts.kiosk.subscribe(listen)
        try:
            await asyncio.wait_for(svc.run(), 120)
        finally:
            await parts.kiosk.stop()

    asyncio.run(go())
    heard = [(m.get("text"), m.get("reply")) for m in seen if m["type"] in ("reply", "caption")]
    assert svc.health()["turns"] == 1 and svc.health()["state"] == "off", heard  # the WAV microphone ended
    assert svc.health()["reason"] == "the microphone stream ended"
    replies = [m for m in seen if m["type"] == "reply"]
    assert replies and replies[0]["intent"] == "store_hours" and replies[0]["channel"] == "voice"
    assert any(m["type"] == "voice_state" and m["state"] == "speaking" for m in seen)
    assert speaker.plays >= 1 and parts.kiosk.voice is None
