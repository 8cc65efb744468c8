"""The voice stage of the kiosk loop: microphone → echo cancelling, VAD, endpointing → Whisper → the kiosk's
turn → Piper → speaker, with barge-in.

It sits in front of the loop's understand stage like the touchscreen does (DESIGN §2): a final transcript
becomes a turn on channel "voice" in the page's current session (``attach``), its prosody rides along as the
audio modality, and the reply is spoken as well as shown. To the page it broadcasts (docs/runtime.md):
``voice_state`` on every change, ``caption`` (partial while the customer talks when a streaming recogniser is
configured, final once transcribed) and ``reply`` with ``"channel": "voice"``.

Full duplex: every microphone chunk goes through the ``Listener`` with the speaker's reference (a tap on what
the speaker plays), so the kiosk's own voice is cancelled before the VAD hears it and the customer can talk
over the kiosk (barge-in: playback stops and the rest of the reply is dropped). Until the echo canceller has
converged the listener is half duplex. ``mode="ptt"``: only speech that starts while the push-to-talk button
is held counts, and letting go ends the utterance at once (no trailing-silence wait).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from runtime.voice.listener import BargeIn, Listener
from runtime.voice.vad import SpeechEnd, SpeechPause, SpeechStart

log = logging.getLogger("storeclerk.voice")
STATES = ("off", "idle", "listening", "thinking", "speaking")  # voice_state values the page knows
REF_LAG_MS = 32.0


class VoiceStage:
    def __init__(self, kiosk, mic, speaker, asr, tts, listener: Listener | None, session: str = "voice", *,
                 mode: str = "open", captions=None, prosody: bool = True) -> None:
        if mode not in ("open", "ptt"):
            raise ValueError(f"voice mode must be 'open' or 'ptt', not {mode!r}")
        self.kiosk = kiosk
        self.mic = mic
        self.speaker = speaker
        self.asr = asr
        self.tts = tts
        self.listener = listener
        self.session = session
        self.mode = mode
        self.captions = captions  # a streaming recogniser (pocketsphinx) for live captions, or None
        self.use_prosody = prosody
        self.turns = 0
        self.barge_ins = 0
        self.timings: list[dict[str, Any]] = []
        self.barge_in_ms: list[float] = []
        self.muted = False
        self._state = "idle"
        self._ptt = False
        self._utt_ok = True  # the utterance in progress counts (ptt mode: it started with the button held)
        self._cut = False  # the reply being spoken was barged in on: drop the rest
        self._queue: asyncio.Queue[SpeechEnd] | None = None
        self._caption_stream = None
        self._caption_text = ""
        self._bg: set[asyncio.Future] = set()
        self._early: tuple[float, float, asyncio.Future] | None = None  # (start_ts, ts, transcript) decoded at a pause
        self.early_hits = 0

    # ---- the page's controls (runtime/server.py) ---------------------------------------------------

    def state(self) -> dict:
        return {"type": "voice_state", "state": self._state, "muted": self.muted, "mode": self.mode}

    def attach(self, session: str) -> None:
        """Voice turns go into this session (the page's), so a spoken question and a typed one share context."""
        self.session = session

    def set_muted(self, muted: bool) -> None:
        self.muted = bool(muted)
        if self.muted and self.speaker.is_playing:
            self._cut = True
            self._spawn(self.speaker.stop())
        self._announce()

    def push_to_talk(self, pressed: bool) -> None:
        pressed = bool(pressed)
        if pressed == self._ptt:
            return
        self._ptt = pressed
        if pressed:
            if self.speaker.is_playing:  # pressing the button is the explicit barge-in
                self._cut = True
                self._spawn(self.speaker.stop())
            self._utt_ok = True
            self._set_state("listening")
        elif self.listener is not None:
            end = self.listener.flush()
            if end is not None and self._queue is not None:
                self._queue.put_nowait(end)
            elif self._state == "listening":
                self._set_state("idle")

    def _spawn(self, coro) -> None:
        """Fire and forget from a sync control (a button press), keeping a reference so the task is not
        collected before it runs."""
        t = asyncio.ensure_future(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self._announce()

    def _announce(self) -> None:
        self._spawn(self.kiosk.broadcast(self.state()))

    async def _caption(self, text: str, final: bool) -> None:
        await self.kiosk.broadcast({"type": "caption", "session": self.session, "text": text, "final": final})

    # ---- the microphone loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Until the microphone ends (a WAV file) or the task is cancelled (a live device)."""
        if self.listener is None:
            raise ValueError("VoiceStage.run needs a Listener")
        self._queue = asyncio.Queue()
        # The reference is read REF_LAG_MS late so that what the speaker played just before this microphone
        # chunk ended has surely been handed to the tap (the speaker and the microphone run on their own
        # timers); the echo canceller then models (path delay - lag), which its 128-ms filter covers for the
        # 32-160 ms paths of USB and HDMI audio (output buffering dominates them).
        ref_tap = self.speaker.tap(16000, gain=1.0, delay_ms=REF_LAG_MS) if hasattr(self.speaker, "tap") else None
        worker = asyncio.create_task(self._answer_loop())
        self._announce()
        try:
            async for chunk in self.mic:
                pcm = np.frombuffer(chunk.pcm16, dtype=np.int16)
                ref = ref_tap.pull(len(pcm), chunk.ts) if ref_tap is not None else None
                for ev in self.listener.push(pcm, ref, ts=chunk.ts):
                    await self._on_event(ev)
                if self._caption_stream is not None and self.listener.endpointer.in_speech:
                    await self._feed_captions(pcm)
            end = self.listener.flush()
            if end is not None and self._utt_ok:
                await self._queue.put(end)
            await self._queue.join()
        finally:
            worker.cancel()

    async def _on_event(self, ev) -> None:
        if isinstance(ev, BargeIn):
            if not self.speaker.is_playing:
                return
            self._cut = True
            stop_s = await self.speaker.stop()
            self.barge_ins += 1
            ms = (time.monotonic() - ev.ts) * 1000 if self.mic is not None else stop_s * 1000
            self.barge_in_ms.append(ms)
            self.kiosk.metrics.observe("storeclerk_barge_in_seconds", ms / 1000)
            log.info("barge-in: playback stopped %.0f ms after the customer started talking", ms)
            self._set_state("listening")
        elif isinstance(ev, SpeechStart):
            self._utt_ok = self.mode == "open" or self._ptt
            if not self._utt_ok:
                return
            self._set_state("listening")
            await self._caption("…", False)
            if self.captions is not None:
                self._caption_stream = self.captions.stream()
                self._caption_text = ""
        elif isinstance(ev, SpeechPause):
            if self._utt_ok:
                # Decode while the endpointer still waits for the rest of the trailing silence: if the customer
                # stays quiet this transcript is the final one, ready up to (trailing - early) ms sooner.
                fut = asyncio.ensure_future(asyncio.to_thread(self.asr.transcribe, ev.audio, ev.rate))
                self._early = (ev.start_ts, ev.ts, fut)
        elif isinstance(ev, SpeechEnd):
            self._caption_stream = None
            if self._utt_ok:
                await self._queue.put(ev)
            self._utt_ok = self.mode == "open"

    async def _feed_captions(self, pcm: np.ndarray) -> None:
        try:
            text = await asyncio.to_thread(self._caption_stream.accept, pcm)
        except Exception as exc:  # captions are a nicety: never let them stop listening
            log.warning("live captions stopped: %s", exc)
            self._caption_stream = None
            return
        if text and text != self._caption_text:
            self._caption_text = text
            await self._caption(text, False)

    async def _answer_loop(self) -> None:
        while True:
            utt = await self._queue.get()
            try:
                await self.answer(utt)
            except Exception as exc:  # a voice failure must not stop the kiosk; the screen still works
                log.error("voice turn failed: %s", exc)
                self.kiosk.metrics.inc("storeclerk_stage_errors_total", stage="voice")
                self._set_state("idle")
            finally:
                self._queue.task_done()

    # ---- one spoken turn ---------------------------------------------------------------------------

    async def answer(self, utt: SpeechEnd, *, answer_silence: bool = False) -> dict[str, Any] | None:
        """Transcribe one utterance, take the kiosk's turn and speak the reply. Returns what was heard and said
        with timings in ms from the start of this call, or None when no words were heard (noise) and
        ``answer_silence`` is off. Raises on failure (``run`` logs it and listens on)."""
        t0 = time.perf_counter()
        self._set_state("thinking")
        early, self._early = self._early, None
        if early is not None and early[0] == utt.start_ts and early[1] == utt.ts:
            tr = await early[2]  # decoded at the pause, on exactly this audio
            self.early_hits += 1
        else:
            tr = await asyncio.to_thread(self.asr.transcribe, utt.audio, utt.rate)
        t_asr = time.perf_counter()
        if not tr.text.strip() and not answer_silence:
            self._set_state("idle")
            return None
        await self._caption(tr.text, True)
        audio: tuple[tuple[str, float], ...] = ()
        if self.use_prosody and len(utt.audio):
            from runtime.voice.prosody import FEATURES, prosody

            try:
                vec = prosody(utt.audio, utt.rate, words=len(tr.text.split())).as_vector()
                audio = tuple(zip(FEATURES, (round(float(v), 4) for v in vec), strict=True))
            except ValueError as exc:
                log.info("no prosody for this utterance: %s", exc)
        session = self.session
        reply = await self.kiosk.turn(session, tr.text, channel="voice", audio=audio)
        t_reply = time.perf_counter()
        await self.kiosk.broadcast({"type": "reply", **reply.as_dict(), "channel": "voice"})
        first = None
        self._cut = False
        if not self.muted:
            self._set_state("speaking")
            async for pcm, rate in self.tts.synthesize(reply.text):
                if first is None:
                    first = time.perf_counter()
                if self._cut or self.muted:
                    break  # barged in on, or muted: the rest of the reply is not spoken (it is on the screen)
                await self.speaker.play(pcm, rate)
        if self._state != "listening":
            self._set_state("idle")
        self.turns += 1
        res = {"transcript": tr.text, "asr_confidence": tr.confidence, "intent": reply.intent,
               "confidence": reply.confidence, "reply": reply.text, "asr_ms": (t_asr - t0) * 1000,
               "understanding_ms": dict(reply.stage_ms).get("intent", 0.0), "reply_ms": (t_reply - t_asr) * 1000,
               "first_audio_ms": ((first or t_reply) - t0) * 1000, "barged_in": self._cut, "session": session,
               "audio": dict(audio)}
        self.timings.append(res)
        return res
