"""The kiosk's loop: stages as asyncio tasks over bounded queues (DESIGN §2).

    input (touch / API / voice)  ─► understand ─► dialogue ─► respond ─► screen (+ speaker)
        TouchText                   Understanding   Action     Reply

* Customer input is never dropped: the input queue is bounded, and a full queue makes the *caller* wait
  (and, past ``loop.stage_timeout_s``, answer "busy") instead of silently losing a turn.
* ``understand`` drains up to ``BATCH`` waiting turns and runs them through the encoder as one batch: with
  many concurrent clients this is what keeps the round trip flat.
* A stage that raises or overruns its timeout marks itself degraded (shown on /healthz), and the turn gets
  an apologetic reply that offers a person: the kiosk degrades, it never stops.
* ``respond`` commits the customer's turn and the reply to the conversation store *before* the reply is
  released to the screen.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from runtime.dialogue import DialogueManager
from runtime.dialogue.manager import DEICTIC
from runtime.errors import InputError
from runtime.events import Action, Reply, Sighting, TouchText, Understanding
from runtime.metrics import Metrics
from runtime.notify import Handoff, notify_all
from runtime.sessions import SessionManager, SessionState, check_session_id

log = logging.getLogger("storeclerk.loop")

BATCH = 16
CHANNELS = ("touch", "api", "voice", "button", "camera")
# What a camera turn means to dialogue: a scanned product is a question about it, an order code a status check.
SIGHTING_INTENTS = {"product": "product_info", "order": "track_order", "code": "oos", "unknown": "oos"}
# "What is this?" said to a kiosk with a camera asks about the thing held up, whatever the text model thinks
# (it reads "what is this?" alone as a request for help: measured on the kiosk bundle).
WHAT_IS_THIS = re.compile(r"\s*(what('s| is| are)|which (product|one) is) (this|that|these|those|it)"
                          r"( one| thing| product| here)?\s*[?.!]*\s*", re.I)
FACE_CUE_TTL_S = 5.0
PRODUCT_INTENTS = frozenset({"product_info", "product_price", "find_product"})
FUSED_INTENT_MIN = 0.5  # a face reading older than this is not this turn's face
MAX_TEXT = 2000  # characters kept from one turn; the encoder reads 128 tokens anyway


@dataclasses.dataclass
class StageHealth:
    name: str
    ok: bool = True
    last_error: str | None = None
    errors: int = 0
    processed: int = 0
    last_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Kiosk:
    """Owns the stages and the sessions. ``turn()`` is what the HTTP API, the WebSocket and tests call."""

    def __init__(self, *, classifier, extractor, dialogue: DialogueManager, store=None, notifiers=(), metrics=None,
                 idle_timeout_s: float = 90.0, max_sessions: int = 64, queue_size: int = 64,
                 stage_timeout_s: float = 5.0) -> None:
        self.classifier = classifier
        self.extractor = extractor
        self.dialogue = dialogue
        self.store = store
        self.notifiers = list(notifiers)
        self.metrics = metrics or Metrics()
        self.voice = None  # the VoiceStage when a microphone and speaker are configured (server: voice messages)
        self.vision = None  # the VisionStage when a camera is configured
        self.fusion = None  # runtime.fusion.FusionModel when the bundle has one (and it fits the bundle's models)
        engine = getattr(classifier, "engine", None)
        if engine is not None and getattr(engine, "bundle", None) is not None:
            from runtime.fusion import load_optional

            self.fusion = load_optional(engine)
        self.view_ttl_s = 20.0  # how long a sighting stays "this one" (config camera.view_ttl_s)
        self.sessions = SessionManager(idle_timeout_s, max_sessions)
        self.queue_size = queue_size
        self.stage_timeout_s = stage_timeout_s
        self.health = {n: StageHealth(n) for n in ("understand", "dialogue", "respond", "store", "notify")}
        self.extra_health: dict[str, Callable[[], dict]] = {}
        self._listeners: list[Callable[[dict], Awaitable[None]]] = []
        self._tasks: list[asyncio.Task] = []
        # One thread for the encoder, one for SQLite: each library is then used from one thread only.
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="understand")
        self._store_pool = ThreadPoolExecutor(1, thread_name_prefix="store")
        self._running = False
        # The encoder already embedded each turn for the intent; retrieval reuses that vector (see query_vector).
        self._query_vectors: dict[str, np.ndarray] = {}
        self.started_at = time.time()
        self._describe_metrics()

    # --------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        if self._running:
            return
        self._q_in: asyncio.Queue = asyncio.Queue(self.queue_size)
        self._q_dialogue: asyncio.Queue = asyncio.Queue(self.queue_size)
        self._q_respond: asyncio.Queue = asyncio.Queue(self.queue_size)
        self._futures: dict[tuple[str, int], asyncio.Future] = {}
        self._running = True
        for name, coro in (("understand", self._understand_stage()), ("dialogue", self._dialogue_stage()),
                           ("respond", self._respond_stage()), ("reaper", self._reaper())):
            self._tasks.append(asyncio.create_task(coro, name=f"stage:{name}"))

    async def stop(self) -> None:
        """Ends every session (so their end is recorded), stops the stages, closes the store."""
        if not self._running:
            return
        self._running = False
        for sid in self.sessions.ids():
            await self.end_session(sid, "shutdown")
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(InputError("the kiosk is shutting down", code="shutdown"))
        if self.store is not None:
            await asyncio.get_running_loop().run_in_executor(self._store_pool, self.store.close)
        self._infer_pool.shutdown(wait=False)
        self._store_pool.shutdown(wait=True)

    def add_task(self, coro, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    def subscribe(self, fn: Callable[[dict], Awaitable[None]]) -> Callable[[], None]:
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    async def broadcast(self, msg: dict) -> None:
        for fn in list(self._listeners):
            try:
                await fn(msg)
            except Exception as exc:  # one dead page must not stop the others
                log.debug("listener failed: %s", exc)

    # ----------------------------------------------------------------------------------------- inputs
    async def start_session(self, sid: str, channel: str = "touch") -> SessionState:
        st, created, evicted = self.sessions.touch(sid, channel)
        for old in evicted:
            self.metrics.inc("storeclerk_sessions_ended_total", reason="evicted")
            await self._store_call("end_session", old.id, "evicted")
            await self.broadcast({"type": "ended", "session": old.id, "reason": "evicted"})
        if created:
            self.metrics.inc("storeclerk_sessions_started_total", channel=channel)
            await self._store_call("start_session", sid, channel)
        return st

    async def end_session(self, sid: str, reason: str) -> bool:
        st = self.sessions.end(sid)
        if st is None:
            return False
        self.metrics.inc("storeclerk_sessions_ended_total", reason=reason)
        await self._store_call("end_session", sid, reason)
        await self.broadcast({"type": "ended", "session": sid, "reason": reason})
        return True

    async def turn(self, sid: str, text: Any, channel: str = "touch", timeout: float | None = None,
                   audio: tuple[tuple[str, float], ...] = (), sighting: Sighting | None = None) -> Reply:
        """One customer turn, end to end. Raises ``InputError`` for unusable input (bad session id, text
        that is not a string) and when the kiosk is too busy to take the turn."""
        if not self._running:
            raise InputError("the kiosk is not running", code="not_running")
        check_session_id(sid)
        if not isinstance(text, str):
            raise InputError("text must be a string", code="bad_text")
        if channel not in CHANNELS:
            raise InputError(f"unknown channel {channel!r}", code="bad_channel")
        if (channel == "camera") != (sighting is not None):
            raise InputError("a camera turn needs a sighting, and only a camera turn has one", code="bad_channel")
        text = text.replace("\x00", "")[:MAX_TEXT]
        st = await self.start_session(sid, channel)
        n = st.next_turn()
        ev = TouchText(sid, text, n, channel, audio=tuple(audio), sighting=sighting)
        fut = asyncio.get_running_loop().create_future()
        self._futures[(sid, n)] = fut
        wait = timeout if timeout is not None else self.stage_timeout_s * 3
        try:
            try:
                await asyncio.wait_for(self._q_in.put(ev), wait)
            except asyncio.TimeoutError:
                self.metrics.inc("storeclerk_busy_total")
                raise InputError("the kiosk is busy; please try again", code="busy") from None
            return await asyncio.wait_for(asyncio.shield(fut), wait)
        except asyncio.TimeoutError:
            raise InputError("the kiosk took too long to answer; please try again", code="timeout") from None
        finally:
            self._futures.pop((sid, n), None)

    async def staff(self, sid: str) -> Reply:
        """The "call staff" button: a hand-off without going through understanding."""
        return await self.turn(sid, "", channel="button")

    # ----------------------------------------------------------------------------------------- stages
    def _fail(self, stage: str, exc: BaseException) -> None:
        h = self.health[stage]
        h.ok = False
        h.errors += 1
        h.last_error = f"{type(exc).__name__}: {exc}"[:300]
        self.metrics.inc("storeclerk_stage_errors_total", stage=stage)
        log.error("stage %s failed: %s", stage, h.last_error)

    def _done(self, stage: str, seconds: float) -> None:
        h = self.health[stage]
        h.processed += 1
        h.last_ms = seconds * 1000
        if not h.ok and h.errors and h.processed % 10 == 0:
            h.ok = True  # ten good runs since the last failure: healthy again (the error stays on record)
        self.metrics.observe("storeclerk_stage_seconds", seconds, stage=stage)

    def _understand_batch(self, events: list[TouchText]) -> list[Understanding]:
        texts = [e.text for e in events]
        t0 = time.perf_counter()
        preds = self.classifier.predict(texts, with_embedding=True)
        t_int = time.perf_counter()
        out = []
        now = time.monotonic()
        for ev, pred in zip(events, preds, strict=True):
            ents = tuple(
                {"type": e.type, "value": e.value, "start": e.start, "end": e.end, "text": e.text}
                for e in (self.extractor.extract(ev.text) if self.extractor is not None else [])
            )
            emb = pred.embedding
            if emb is not None:
                emb = emb / max(float(np.linalg.norm(emb)), 1e-12)
                self._query_vectors[ev.text] = emb
            # Sightings feed understanding: what the camera shows (or showed moments ago) is what "this one" is.
            st = self.sessions.get(ev.session)
            camera = st is not None and st.camera
            seen = st.view(now, self.view_ttl_s) if camera else None
            intent, conf, oos = pred.intent, pred.confidence, pred.out_of_scope
            if camera and WHAT_IS_THIS.fullmatch(ev.text):
                intent, conf, oos = "product_info", max(conf, 0.9), False
            product = seen.value if seen is not None and seen.kind == "product" else None
            fused = self._fuse(ev, pred, st, seen, now) if emb is not None else None
            emotion = refers = frustration = None
            if fused is not None:
                refers, frustration = fused.refers_to_view, fused.frustration
                emotion = "frustrated" if fused.frustrated else "calm"
                # a question with "this/it/that one" stays about the view whatever the pointing score says: that word is
                # what the dialogue goes by (DEICTIC); the model's doubt decides only for questions without one
                if product is not None and refers < self.fusion.refers_threshold and not DEICTIC.search(ev.text):
                    product = None  # "how much are bananas" while holding milk: the question is not about the view
                if product is not None and intent not in PRODUCT_INTENTS and fused.intent in PRODUCT_INTENTS \
                        and fused.confidence >= FUSED_INTENT_MIN and refers >= self.fusion.refers_threshold:
                    # "tell me about this" with a pack held up: the text model alone reads a request for help; the
                    # fusion model, seeing the product, reads a product question (docs/fusion.md)
                    intent, conf, oos = fused.intent, fused.confidence, False
            out.append(Understanding(ev.session, ev.turn, ev.text, intent, conf, oos, ents,
                                     tuple(pred.alternatives), channel=ev.channel, product=product, emotion=emotion,
                                     stage_ms=(("intent", (t_int - t0) * 1000),), audio=ev.audio, sighting=seen,
                                     refers_to_view=refers, frustration=frustration))
        return out

    def _fuse(self, ev: TouchText, pred, st: SessionState | None, seen: Sighting | None, now: float):
        """The fusion model's reading of this turn (text + what is in view + the voice's prosody + the face cue),
        or None without a fusion model. It never overrides the intent model's intent or out-of-scope decision
        (that rejection is calibrated on CLINC150; docs/fusion.md); it says whether the question points at the
        view, and whether the customer sounds frustrated."""
        if self.fusion is None:
            return None
        try:
            image = None
            if seen is not None and seen.kind == "product":
                if seen.top_k:
                    image = self.fusion.image_vector(top_k=seen.top_k)
                elif seen.value in self.fusion.product_ids:
                    image = self.fusion.image_vector(product=seen.value)
            face = None
            if st is not None and st.face_cue is not None and now - st.face_cue[1] <= FACE_CUE_TTL_S:
                face = st.face_cue[0]
            return self.fusion.predict(pred.embedding, image=image, face=face, audio=ev.audio or None)
        except Exception as exc:  # a fusion failure costs the cues, never the turn
            log.warning("fusion model failed on a turn: %s", exc)
            self.metrics.inc("storeclerk_stage_errors_total", stage="fusion")
            return None

    @staticmethod
    def _camera_understanding(ev: TouchText) -> Understanding:
        """A scan needs no classifier: the code says what it is."""
        s = ev.sighting
        assert s is not None
        ents: tuple[dict, ...] = ()
        if s.kind == "order" and s.value:
            ents = ({"type": "order_id", "value": s.value, "start": 0, "end": 0, "text": s.value},)
        return Understanding(ev.session, ev.turn, ev.text, SIGHTING_INTENTS.get(s.kind, "oos"), float(s.score),
                             s.kind in ("code", "unknown"), ents, channel="camera",
                             product=s.value if s.kind == "product" else None, sighting=s)

    async def _understand_stage(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._q_in.get()]
            while len(batch) < BATCH and not self._q_in.empty():
                batch.append(self._q_in.get_nowait())
            staff = [e for e in batch if e.channel == "button"]
            texts = [e for e in batch if e.channel not in ("button", "camera")]
            results: list[Understanding] = [
                Understanding(e.session, e.turn, "", "contact_human_agent", 1.0, False, channel="button") for e in staff
            ] + [self._camera_understanding(e) for e in batch if e.channel == "camera"]
            if texts:
                t0 = time.perf_counter()
                try:
                    results += await asyncio.wait_for(loop.run_in_executor(self._infer_pool, self._understand_batch, texts),
                                                      self.stage_timeout_s)
                    self._done("understand", (time.perf_counter() - t0) / len(texts))
                except Exception as exc:  # includes the timeout: answer every waiting turn anyway
                    self._fail("understand", exc)
                    results += [Understanding(e.session, e.turn, e.text, "error", 0.0, True) for e in texts]
            for u in results:
                await self._q_dialogue.put(u)

    async def _dialogue_stage(self) -> None:
        while True:
            u: Understanding = await self._q_dialogue.get()
            st = self.sessions.get(u.session)
            if st is None:  # ended while its turn was in flight (idle, evicted): answer it in a fresh state
                st = SessionState(u.session)
            t0 = time.perf_counter()
            try:
                if u.intent == "error":
                    act = Action(u.session, u.turn, "error", self.dialogue.spec.text("error"), u,
                                 quick_replies=({"label": "Call staff", "text": "I'd like to talk to a person"},))
                elif u.channel == "button":
                    act = self.dialogue.handoff(u, st, "button")
                else:
                    act = self.dialogue.handle(u, st)
                self._done("dialogue", time.perf_counter() - t0)
            except Exception as exc:
                self._fail("dialogue", exc)
                act = Action(u.session, u.turn, "error", "Sorry, something went wrong on my side.", u)
            finally:
                self._query_vectors.pop(u.text, None)
            await self._q_respond.put(act)

    async def _respond_stage(self) -> None:
        while True:
            acts: list[Action] = [await self._q_respond.get()]
            while len(acts) < BATCH and not self._q_respond.empty():
                acts.append(self._q_respond.get_nowait())
            t0 = time.perf_counter()
            try:
                replies = [self._reply(a) for a in acts]
                await self._record(acts, replies)  # one transaction for every waiting exchange (group commit)
                for act, reply in zip(acts, replies, strict=True):
                    self._release(act, reply)
                self._done("respond", (time.perf_counter() - t0) / len(acts))
            except Exception as exc:
                self._fail("respond", exc)
                for act in acts:
                    fut = self._futures.get((act.session, act.turn))
                    if fut is not None and not fut.done():
                        fut.set_result(Reply(act.session, act.turn, "Sorry, something went wrong on my side.", "error", 0.0))

    @staticmethod
    def _reply(act: Action) -> Reply:
        u = act.understanding
        return Reply(act.session, act.turn, act.reply, u.intent if u else "", u.confidence if u else 0.0,
                     u.entities if u else (), act.cards, act.quick_replies, act.handoff, act.end_session,
                     u.stage_ms if u else ())

    def _release(self, act: Action, reply: Reply) -> None:
        self._count(act)
        fut = self._futures.get((act.session, act.turn))
        if fut is not None and not fut.done():
            fut.set_result(reply)
        if act.handoff:
            self.add_task(self._notify(act), name="notify")
        if act.end_session:
            self.add_task(self.end_session(act.session, "goodbye"), name="end")

    async def _record(self, acts: list[Action], replies: list[Reply]) -> None:
        """Each customer turn with its reply, committed before any reply is released. A store failure degrades
        the kiosk (logged, on /healthz) but the customer still gets an answer."""
        if self.store is None:
            return
        now = time.time()
        batch = []
        for act, reply in zip(acts, replies, strict=True):
            u = act.understanding
            if u is None:
                continue
            stage_ms = {k: round(v, 3) for k, v in u.stage_ms}
            batch.append((act.session, [
                {"role": "customer", "text": u.text or f"[{u.channel}]", "intent": u.intent, "confidence": float(u.confidence),
                 "out_of_scope": bool(u.out_of_scope), "handoff": act.handoff, "latency_ms": (now - u.ts) * 1000,
                 "stage_ms": stage_ms},
                {"role": "kiosk", "text": reply.text, "intent": u.intent, "handoff": act.handoff},
            ]))
        if batch:
            await self._store_call("add_exchanges", batch)

    async def _store_call(self, method: str, *args, **kw) -> Any:
        if self.store is None:
            return None
        t0 = time.perf_counter()
        try:
            res = await asyncio.get_running_loop().run_in_executor(self._store_pool, lambda: getattr(self.store, method)(*args, **kw))
            self._done("store", time.perf_counter() - t0)
            return res
        except Exception as exc:
            self._fail("store", exc)
            return None

    def _count(self, act: Action) -> None:
        u = act.understanding
        self.metrics.inc("storeclerk_turns_total", intent=u.intent if u else "none", kind=act.kind)
        if u is not None and u.out_of_scope:
            self.metrics.inc("storeclerk_out_of_scope_total")
        if act.handoff:
            self.metrics.inc("storeclerk_handoffs_total", reason=act.handoff_reason or "request")
        if u is not None:
            self.metrics.observe("storeclerk_turn_seconds", time.time() - u.ts)

    async def _notify(self, act: Action) -> None:
        u = act.understanding
        summary = u.text if u else ""
        if summary and self.extractor is not None:
            summary = self.extractor.redact(summary)
        h = Handoff(act.session, act.handoff_reason or "request", summary[:200], u.intent if u else None)
        t0 = time.perf_counter()

        def on_error(name: str, exc: BaseException) -> None:
            self._fail("notify", RuntimeError(f"{name}: {exc}"))

        failed = await notify_all(self.notifiers, h, on_error)
        if not failed:
            self._done("notify", time.perf_counter() - t0)

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for sid in self.sessions.expired():
                await self.end_session(sid, "idle")
            self.metrics.set("storeclerk_sessions_active", len(self.sessions))

    def query_vector(self, text: str) -> np.ndarray | None:
        return self._query_vectors.get(text)

    # ----------------------------------------------------------------------------------------- health
    def healthz(self) -> dict[str, Any]:
        stages = {n: h.as_dict() for n, h in self.health.items()}
        extra = {}
        for name, fn in self.extra_health.items():
            try:
                extra[name] = fn()
            except Exception as exc:
                extra[name] = {"ok": False, "last_error": str(exc)}
        ok = all(h.ok for h in self.health.values()) and all(e.get("ok", True) for e in extra.values())
        return {
            "status": "ok" if ok else "degraded",
            "running": self._running,
            "uptime_s": round(time.time() - self.started_at, 1),
            "sessions": len(self.sessions),
            "stages": stages,
            **extra,
            "latency_ms": self.metrics.percentiles("storeclerk_stage_seconds"),
        }

    def _describe_metrics(self) -> None:
        m = self.metrics
        m.describe("storeclerk_stage_seconds", "Time spent in each stage per event")
        m.describe("storeclerk_turn_seconds", "Customer turn: input to reply released")
        m.describe("storeclerk_turns_total", "Turns answered, by intent and action kind")
        m.describe("storeclerk_stage_errors_total", "Stage failures (the kiosk degraded instead of stopping)")
        m.describe("storeclerk_handoffs_total", "Hand-offs to staff, by reason")
        m.describe("storeclerk_out_of_scope_total", "Turns judged out of scope")
        m.describe("storeclerk_sessions_started_total", "Sessions started")
        m.describe("storeclerk_sessions_ended_total", "Sessions ended, by reason")
        m.describe("storeclerk_sessions_active", "Sessions alive now")
        m.describe("storeclerk_busy_total", "Turns refused because the input queue stayed full")
        m.describe("storeclerk_http_requests_total", "HTTP requests by path and status")
        m.describe("storeclerk_http_seconds", "HTTP request latency by path")
        m.describe("storeclerk_input_errors_total", "Rejected input by code")
