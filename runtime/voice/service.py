"""Starting the voice stage inside ``storeclerk run``: devices, models, the stage, its health.

Voice is an extra, never a condition: without a microphone or speaker (this machine, CI, a kiosk whose USB
microphone is unplugged) the kiosk runs on the touchscreen, says why once in the log and on /healthz, and the
page hides its voice controls. Models load in a worker thread so the page is up while Whisper and Piper load.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from runtime.optional_stage import OptionalStage

log = logging.getLogger("storeclerk.voice")


class VoiceService(OptionalStage):
    def health(self) -> dict[str, Any]:
        out = self.base_health()
        if self.stage is not None:
            lst = self.stage.listener
            out.update(turns=self.stage.turns, barge_ins=self.stage.barge_ins, mode=self.stage.mode,
                       echo_suppressed=lst.suppressed, erle_db=round(lst.erle_db(), 1), asr=self.stage.asr.name)
        return out

    def _off(self, reason: str) -> None:
        self.state, self.reason = "off", reason
        log.warning("voice is off: %s (the touchscreen works; run with --no-voice to silence this)", reason)

    async def run(self) -> None:
        from device.audio import AudioError, PyAudioMicrophone, PyAudioSpeaker

        cfg = self.config
        try:
            mic = PyAudioMicrophone(cfg.get("voice.microphone")).open()
            speaker = PyAudioSpeaker(cfg.get("voice.speaker")).open()
        except (AudioError, OSError, ImportError) as exc:
            self._off(str(exc))
            return
        try:
            stage = await asyncio.to_thread(self._build, mic, speaker)
        except Exception as exc:  # a model that will not load: say which, keep the kiosk
            mic.close()
            speaker.close()
            self._off(f"could not load the voice models: {exc}")
            return
        self.stage, self.state = stage, "on"
        self.parts.kiosk.voice = stage
        await self.parts.kiosk.broadcast(stage.state())
        try:
            await stage.tts.start()
            await stage.run()
            self.state, self.reason = "off", "the microphone stream ended"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the microphone went away mid-session
            self.failed, self.state, self.reason = True, "failed", str(exc)
            log.error("voice stopped: %s", exc)
            self.parts.kiosk.metrics.inc("storeclerk_stage_errors_total", stage="voice")
        finally:
            self.parts.kiosk.voice = None
            await self.parts.kiosk.broadcast({"type": "voice_state", "state": "off", "muted": False, "mode": stage.mode})
            stage.tts.close()
            mic.close()
            speaker.close()

    def _build(self, mic, speaker):
        from runtime.voice.asr import store_vocabulary
        from runtime.voice.engines import fallback_recognizer, make_recognizer
        from runtime.voice.listener import Listener
        from runtime.voice.stage import VoiceStage
        from runtime.voice.tts import PiperTTS
        from runtime.voice.vad import Endpointer, SileroVAD

        cfg = self.config
        vocab = store_vocabulary(self.parts.services.kb)
        asr = fallback_recognizer(cfg.get("voice.asr.engine"), vosk_model=cfg.get("voice.asr.vosk_model"), phrases=vocab)
        captions = None
        if cfg.get("voice.captions") and asr.name.startswith("whisper"):
            try:
                captions = make_recognizer("pocketsphinx", phrases=vocab)
            except Exception as exc:
                log.info("no live captions: %s", exc)
        listener = Listener(Endpointer(SileroVAD(), trailing_silence_ms=cfg.get("voice.trailing_silence_ms"),
                                       early_ms=cfg.get("voice.early_decode_ms")))
        listener.enabled = bool(cfg.get("voice.barge_in"))
        return VoiceStage(self.parts.kiosk, mic, speaker, asr, PiperTTS(), listener, mode=cfg.get("voice.mode"),
                          captions=captions)
