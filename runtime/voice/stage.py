"""The voice stage of the kiosk loop: microphone → VAD/endpointing → Whisper → the kiosk's turn → Piper → speaker.

It sits in front of the loop's understand stage like the touchscreen does (DESIGN §2): a final transcript
becomes a turn on channel "voice", and the reply is spoken as well as shown. Captions go to the page as
``{"type": "caption", "text": ..., "final": bool}``.

Half duplex for now: speech that starts while the kiosk is speaking, or within ``hangover_s`` after it stopped
(the room's echo and the endpointer's trailing silence), is not turned into a turn, so the kiosk cannot
answer its own voice. Timestamps of microphone chunks and of playback share ``time.monotonic``.
Barge-in (stopping playback when the customer talks over it) and reference-based echo suppression are the
next steps of the voice issue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from runtime.voice.vad import Endpointer, SpeechEnd, SpeechStart

log = logging.getLogger("storeclerk.voice")


class VoiceStage:
    def __init__(self, kiosk, mic, speaker, asr, tts, endpointer: Endpointer, session: str = "voice",
                 hangover_s: float = 0.4) -> None:
        self.kiosk = kiosk
        self.mic = mic
        self.speaker = speaker
        self.asr = asr
        self.tts = tts
        self.endpointer = endpointer
        self.session = session
        self.turns = 0
        self.ignored_while_speaking = 0
        self.timings: list[dict[str, Any]] = []
        self._speaking = False
        self.hangover_s = hangover_s
        self._quiet_from = float("-inf")  # monotonic time from which mic speech counts again

    def _own_voice(self, ev) -> bool:
        start = ev.start_ts if isinstance(ev, SpeechEnd) else ev.ts
        return self._speaking or start < self._quiet_from

    async def run(self) -> None:
        """Until the microphone ends (a WAV file) or the task is cancelled (a live device)."""
        pending: set[asyncio.Task] = set()
        async for chunk in self.mic:
            events = self.endpointer.push(np.frombuffer(chunk.pcm16, dtype=np.int16), ts=chunk.ts)
            for ev in events:
                if self._own_voice(ev):
                    self.ignored_while_speaking += isinstance(ev, SpeechEnd)
                    continue
                if isinstance(ev, SpeechStart):
                    await self.kiosk.broadcast({"type": "caption", "session": self.session, "text": "…", "final": False})
                elif isinstance(ev, SpeechEnd):
                    # One utterance at a time: the next one is only taken after this reply has been spoken.
                    self._speaking = True
                    t = asyncio.create_task(self._answer_logged(ev))
                    pending.add(t)
                    t.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def answer(self, utt: SpeechEnd, *, answer_silence: bool = False) -> dict[str, Any] | None:
        """Transcribe one utterance, take the kiosk's turn and speak the reply. Returns what was heard and said
        with timings in ms from the start of this call, or None when no words were heard (noise) and
        ``answer_silence`` is off. Raises on failure (``run`` logs it and listens on)."""
        t0 = time.perf_counter()
        try:
            tr = await asyncio.to_thread(self.asr.transcribe, utt.audio, utt.rate)
            t_asr = time.perf_counter()
            if not tr.text.strip() and not answer_silence:
                return None
            await self.kiosk.broadcast({"type": "caption", "session": self.session, "text": tr.text, "final": True})
            reply = await self.kiosk.turn(self.session, tr.text, channel="voice")
            t_reply = time.perf_counter()
            first = None
            async for pcm, rate in self.tts.synthesize(reply.text):
                if first is None:
                    first = time.perf_counter()
                await self.speaker.play(pcm, rate)
            self.turns += 1
            res = {"transcript": tr.text, "asr_confidence": tr.confidence, "intent": reply.intent,
                   "confidence": reply.confidence, "reply": reply.text, "asr_ms": (t_asr - t0) * 1000,
                   "understanding_ms": dict(reply.stage_ms).get("intent", 0.0), "reply_ms": (t_reply - t_asr) * 1000,
                   "first_audio_ms": ((first or t_reply) - t0) * 1000}
            self.timings.append(res)
            return res
        finally:
            self._quiet_from = time.monotonic() + self.hangover_s
            self._speaking = False

    async def _answer_logged(self, utt: SpeechEnd) -> None:
        try:
            await self.answer(utt)
        except Exception as exc:  # a voice failure must not stop the kiosk; the screen still works
            log.error("voice turn failed: %s", exc)
            self.kiosk.metrics.inc("storeclerk_stage_errors_total", stage="voice")
