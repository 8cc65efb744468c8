"""The vision stage of the kiosk loop: camera → perception (runtime.vision.perception) → sightings that feed
understanding and the screen.

What each sighting does (docs/vision.md, docs/runtime.md):

* a product barcode, an order QR (or an order number read off a receipt while the conversation waits for one),
  or a product the model recognized and held steady → a **camera turn** in the page's session: dialogue answers
  it (the product's card; the order's status, or the cancellation waiting for that number) and the reply is
  stored and shown like any other (``reply`` with ``"channel": "camera"``);
* every product sighting, scanned or recognized, becomes the session's *view*: "is this gluten-free?", "how
  much is it?" are about it for ``camera.view_ttl_s`` seconds (the loop's understand stage reads it);
* a product the model does not know becomes the view too, so "what is this?" gets "I don't recognize this
  product" instead of an answer about the last thing mentioned;
* a code the store has no meaning for → a short "I can't use that code" (its payload is never shown or opened);
* a face arriving → ``{"type": "wake"}`` to every page (the attract screen starts a conversation); the visitor
  leaving clears the session's view so the next customer does not inherit "this one".

The same code held in front of the lens is answered once, and again only after it has been out of view for
``repeat_after_s``. A scan that arrives while no page has a session wakes the page and is answered as soon as
the page's new session attaches (within ``PENDING_S``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from runtime.errors import InputError
from runtime.events import Sighting
from runtime.vision.perception import FrameResult, Perception

log = logging.getLogger("storeclerk.vision")

PENDING_S = 8.0  # a scan made on the attract screen still counts when the page's session attaches this soon after
WAKE_EVERY_S = 2.0


class VisionStage:
    def __init__(self, kiosk, camera, perception: Perception, *, repeat_after_s: float = 3.0,
                 recognized_cards: bool = True, wake_on_face: bool = True, clock=time.monotonic) -> None:
        self.kiosk = kiosk
        self.camera = camera
        self.perception = perception
        self.repeat_after_s = float(repeat_after_s)
        self.recognized_cards = recognized_cards
        self.wake_on_face = wake_on_face
        self.clock = clock
        self.session: str | None = None
        self.turns = 0
        self.sightings = 0
        self.frames = 0
        self._last_seen: dict[tuple[str, str | None], float] = {}  # (kind, value) -> last time in view
        self._pending: Sighting | None = None
        self._woke_at = float("-inf")
        self._bg: set[asyncio.Future] = set()

    # ---- the page ---------------------------------------------------------------------------------------
    def attach(self, session: str) -> None:
        """The page's session: camera turns and the view go there. A scan made just before is answered now."""
        st = self.kiosk.sessions.get(session)
        if st is None:
            return
        self.session = session
        st.camera = True
        pending, self._pending = self._pending, None
        if pending is not None and self.clock() - pending.ts <= PENDING_S:
            self._spawn(self._camera_turn(pending))

    def _state(self):
        return self.kiosk.sessions.get(self.session) if self.session else None

    def wants_ocr(self) -> bool:
        """Read receipts only while the conversation waits for an order number (OCR costs ~1 s a frame)."""
        st = self._state()
        p = st.pending if st is not None else None
        return bool(p) and p.get("kind") == "slot" and p.get("slot") == "order_id"

    # ---- the loop -----------------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vision")  # one thread: the detectors are not re-entrant
        try:
            while True:
                frame = await self.camera.aread(timeout=1.0)
                if frame is None:
                    if self.camera.health.state in ("ended", "closed"):
                        return
                    continue  # stalled or reconnecting: the camera keeps trying, we keep waiting
                self.frames += 1
                result = await loop.run_in_executor(self._pool, lambda f=frame: self.perception.step(f, want_ocr=self.wants_ocr()))
                await self.handle(result)
        finally:
            self._pool.shutdown(wait=False)

    async def handle(self, result: FrameResult) -> None:
        now = self.clock()
        if result.presence is not None:
            await self._presence(result.presence)
        if result.expression is not None:
            st = self._state()
            if st is not None:  # the face cue for this customer's frustration (never the face itself)
                st.face_cue = (tuple(result.expression.probabilities), now)
        for s in result.sightings:
            key = (s.kind, s.value)
            last = self._last_seen.get(key)
            self._last_seen[key] = now
            repeat = last is not None and now - last < self.repeat_after_s
            self.sightings += 1
            self.kiosk.metrics.inc("storeclerk_sightings_total", kind=s.kind, source=s.source)
            if s.kind in ("product", "unknown"):
                st = self._state()
                if st is not None:
                    st.in_view = s
            if repeat:
                if self._state() is None and s.kind != "unknown" and s.source != "recognizer":
                    await self._wake_for(s)  # still held up on the attract screen: keep it waiting, nudge the page
                continue  # the same code still in front of the lens, or the same product shown again at once
            if s.kind == "unknown" or (s.source == "recognizer" and not self.recognized_cards):
                continue  # the view is updated; nothing to say until the customer asks
            await self._camera_turn(s)
        # forget codes that left the view long ago, so the dict stays small on a kiosk that runs for months
        if len(self._last_seen) > 256:
            self._last_seen = {k: t for k, t in self._last_seen.items() if now - t < self.repeat_after_s}

    async def _camera_turn(self, s: Sighting) -> None:
        st = self._state()
        if st is None:
            await self._wake_for(s)
            return
        text = {"product": f"[{'scanned' if s.source == 'barcode' else 'showed'}: {s.label}]",
                "order": "[scanned an order code]" if s.source != "ocr" else "[showed a receipt]"}.get(s.kind, "[scanned a code]")
        try:
            reply = await self.kiosk.turn(self.session, text, channel="camera", sighting=s)
        except InputError as exc:  # busy, shutting down: the customer can scan again
            log.info("camera turn not taken: %s", exc.message)
            return
        self.turns += 1
        await self.kiosk.broadcast({"type": "reply", "channel": "camera", "sighting": s.as_dict(), **reply.as_dict()})

    async def _wake_for(self, s: Sighting) -> None:
        """No page has a session: keep the scan for when one attaches, and ask the pages to start one (again every
        couple of seconds while the code is held up, for a page that connected after the first nudge)."""
        self._pending = s
        now = self.clock()
        if now - self._woke_at >= WAKE_EVERY_S:
            self._woke_at = now
            await self.kiosk.broadcast({"type": "wake", "reason": "scan"})

    async def _presence(self, ev) -> None:
        self.kiosk.metrics.inc("storeclerk_presence_total", event=ev.kind)
        if ev.kind == "arrived":
            if self.wake_on_face:
                await self.kiosk.broadcast({"type": "wake", "reason": "face"})
        elif ev.kind == "left":
            st = self._state()
            if st is not None:
                st.in_view = None  # the next customer does not inherit "this one" (or this one's mood)
                st.face_cue = None
            self._last_seen.clear()

    def _spawn(self, coro) -> None:
        t = asyncio.ensure_future(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    def health(self) -> dict[str, Any]:
        cam = self.camera.health
        return {"ok": cam.state in ("ok", "starting"), "camera": cam.state, "source": cam.source,
                "frames": self.frames, "reconnects": cam.reconnects, "last_error": cam.last_error,
                "sightings": self.sightings, "turns": self.turns, **self.perception.health()}
