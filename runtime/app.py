"""Assembling the kiosk from its configuration, and running it under uvicorn (``storeclerk run``).

Load order matters for a kiosk that must come up unattended: the bundle and the knowledge base are
validated first (a broken file stops start-up with a message naming it), then the stores open, then the
server binds, and only then does systemd hear READY.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.config import KioskConfig
from runtime.dialogue import DialogueManager, Services, load_dialogue
from runtime.errors import ConfigError
from runtime.loop import Kiosk
from runtime.metrics import Metrics
from runtime.notify import build_notifiers
from runtime.paths import data_dir, default_bundle_dir
from runtime.recommend import Recommender

log = logging.getLogger("storeclerk.app")
DAY_S = 24 * 3600


class Retrieval:
    """The KB retriever as dialogue uses it, plus ``agreeing_hit``: a KB answer for text the intent model did
    not place (out of scope), given only when (1) lexical (BM25) and semantic (encoder) retrieval put the same
    entry first and (2) that entry's similarity is an outlier against the whole KB (``OUTLIER_Z`` standard
    deviations above the mean). (2) is relative to the KB, so it carries over to another store's KB, where an
    absolute cosine cut would not: "can you fix my car's gearbox" agrees on EV charging at z≈3.1, "where can I
    charge my electric car" at z≈6.0 (probes in docs/knowledge-base.md)."""

    OUTLIER_Z = 4.5

    def __init__(self, retriever: Any) -> None:
        self.r = retriever

    def search(self, query: str, k: int = 3, kinds=None):
        return self.r.search(query, k=k, kinds=kinds)

    def agreeing_hit(self, query: str, kinds=None):
        lex = self.r.search(query, k=1, kinds=kinds, method="bm25")
        if not lex:
            return None
        sem = self.r.search(query, k=10_000, kinds=kinds, method="embedding")
        if len(sem) < 3 or lex[0].entry_id != sem[0].entry_id:
            return None
        rest = np.array([h.score for h in sem[1:]], dtype=np.float64)
        z = (sem[0].score - rest.mean()) / max(rest.std(), 1e-6)
        return sem[0] if z >= self.OUTLIER_Z else None


@dataclass
class KioskParts:
    config: KioskConfig
    kiosk: Kiosk
    services: Services
    kb_dir: Path
    dialogue_path: Path
    state_dir: Path
    watcher: Any = None
    extras: dict = field(default_factory=dict)


def _embed_fn(classifier, kiosk_ref: list):
    def embed(texts: list[str]) -> np.ndarray:
        k = kiosk_ref[0] if kiosk_ref else None
        if k is not None:
            vecs = [k.query_vector(t) for t in texts]
            if vecs and all(v is not None for v in vecs):
                return np.stack(vecs)
        return classifier.embed(texts)

    return embed


def build(config: KioskConfig) -> KioskParts:
    from runtime.intents import IntentClassifier
    from runtime.kb import HybridRetriever
    from runtime.orders import SqliteOrderSource
    from runtime.store import ConversationStore

    bundle = Path(config.get("bundle") or default_bundle_dir())
    kb_dir = Path(config.get("kb_dir") or data_dir() / "kb")
    dialogue_path = Path(config.get("dialogue") or data_dir() / "dialogue" / "dialogue.yml")
    state_dir = config.state_dir()
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the state directory {state_dir}: {exc} (set state_dir in the config)") from None

    classifier = IntentClassifier.from_bundle(bundle)
    kb, spec = load_kb_and_dialogue(kb_dir, dialogue_path, classifier.labels)
    extractor = _extractor_for(kb_dir)
    kiosk_ref: list = []
    # KB retrieval and recommendations use the bundle's retrieval encoder (un-fine-tuned MiniLM, trained for
    # sentence similarity) when it has one; fine-tuning for intents made the intent encoder worse at search
    # (docs/knowledge-base.md). Older bundles fall back to the intent encoder, reusing each turn's vector.
    from runtime.embedder import retrieval_embedder

    retr = retrieval_embedder(classifier.engine)
    embed = retr.embed if retr is not None else _embed_fn(classifier, kiosk_ref)
    retriever = Retrieval(HybridRetriever(kb, embed))
    orders = SqliteOrderSource(state_dir / "orders.sqlite3")
    demo = kb_dir / "orders.csv"
    if demo.exists() and hasattr(orders, "seed_from_csv"):
        orders.seed_from_csv(demo)
    store = ConversationStore(state_dir / "conversations.sqlite3", retention_days=int(config.get("store.retention_days")),
                              redact=extractor.redact, store_media=bool(config.get("store.store_media")))
    services = Services(kb=kb, retriever=retriever, orders=orders, recommender=Recommender(kb.products, embed))
    manager = DialogueManager(spec, services)
    kiosk = Kiosk(classifier=classifier, extractor=extractor, dialogue=manager, store=store, metrics=Metrics(),
                  idle_timeout_s=float(config.get("session.idle_timeout_s")), max_sessions=int(config.get("session.max_sessions")),
                  queue_size=int(config.get("loop.queue_size")), stage_timeout_s=float(config.get("loop.stage_timeout_s")))
    kiosk_ref.append(kiosk)
    kiosk.notifiers = build_notifiers(config.get("handoff.notifiers"), kiosk.broadcast)
    parts = KioskParts(config, kiosk, services, kb_dir, dialogue_path, state_dir, extras={"embed": embed})
    parts.watcher = _watcher(parts, kb, float(config.get("kb.poll_s")))
    kiosk.extra_health["kb"] = parts.watcher.health
    # The step each model runs on ("cpu", "cuda", ...): a kiosk that silently fell back to the CPU shows here.
    kiosk.extra_health["bundle"] = lambda: {"ok": True, "path": str(bundle), "providers": {
        model: next((r.step for r in record if r.chosen), None) for model, record in classifier.engine.selection.items()}}
    return parts


def _extractor_for(kb_dir: Path):
    from runtime.entities import EntityExtractor

    catalog = kb_dir / "catalog.csv"
    gazetteer = data_dir() / "entities" / "gazetteer.yml"
    return EntityExtractor.from_files(gazetteer, catalog) if catalog.exists() else EntityExtractor.default()


def load_kb_and_dialogue(kb_dir: Path, dialogue_path: Path, labels=None):
    """(KB, dialogue spec), each validated and the dialogue's answers checked against the KB: start-up, hot
    reload and ``storeclerk doctor`` accept exactly the same files."""
    from runtime.kb import KnowledgeBase

    kb = KnowledgeBase.load(kb_dir)
    spec = load_dialogue(dialogue_path, labels)
    check_dialogue_against_kb(spec, kb)
    return kb, spec


def check_dialogue_against_kb(spec, kb) -> None:
    missing = []
    for ref in sorted(set(spec.answer_ids())):
        key = ref.split(":", 1)[1]
        try:
            found = kb.faq(key)
        except KeyError:
            found = None
        if found is None:
            missing.append(ref)
    if missing:
        raise ConfigError(f"{spec.path}: refers to knowledge-base entries that do not exist: {', '.join(missing)}")


def _watcher(parts: KioskParts, kb, poll_s: float):
    """The KB watcher also watches the dialogue file: a KB is only swapped in when the dialogue's answers
    exist in it, and the dialogue only when it is valid."""
    from runtime.kb import HybridRetriever, KBWatcher

    staged: dict = {}

    def load(kb_dir: Path):
        new_kb, staged["spec"] = load_kb_and_dialogue(kb_dir, parts.dialogue_path, parts.kiosk.classifier.labels)
        return new_kb

    def swap(new_kb) -> None:
        # Everything that depends on the KB is built before anything is swapped: a failure here leaves the
        # old KB serving (the watcher reports it).
        embed = parts.extras["embed"]
        retriever = Retrieval(HybridRetriever(new_kb, embed, reuse=parts.services.retriever.r))
        recommender = Recommender(new_kb.products, embed)
        extractor = _extractor_for(parts.kb_dir)
        s = parts.services
        s.kb, s.retriever, s.recommender = new_kb, retriever, recommender
        parts.kiosk.dialogue.spec = staged.pop("spec", parts.kiosk.dialogue.spec)
        parts.kiosk.extractor = extractor
        parts.kiosk.metrics.inc("storeclerk_kb_reload_total", result="ok")

    def rejected(message: str) -> None:
        parts.kiosk.metrics.inc("storeclerk_kb_reload_total", result="rejected")

    return KBWatcher(parts.kb_dir, swap, poll_s=poll_s, initial=kb, on_error=rejected, extra_files=[parts.dialogue_path],
                     loader=load)


def reload_kb(parts: KioskParts) -> dict:
    """Validate the KB and dialogue files on disk and, only if both are good, swap them in. A broken file
    keeps the last good KB serving and is reported (file and line) on /healthz."""
    ok = parts.watcher.reload()
    h = parts.watcher.health()
    return {"reloaded": ok, "products": h["products"], "faqs": h["faqs"], "error": h["last_error"], "errors": h["errors"]}


async def _retention(parts: KioskParts) -> None:
    while True:
        await asyncio.sleep(DAY_S)
        n = await parts.kiosk._store_call("purge_expired")
        log.info("retention: purged %s expired sessions", n)


def serve(config: KioskConfig) -> int:
    """``storeclerk run``: build, bind, tell systemd, serve until SIGTERM/SIGINT, shut down cleanly."""
    import uvicorn

    from device import systemd
    from runtime.server import create_app

    logging.getLogger("storeclerk").setLevel(config.get("log_level"))
    parts = build(config)
    kiosk = parts.kiosk
    host, port = config.get("server.host"), int(config.get("server.port"))
    server_box: list = []

    async def on_started() -> None:
        if config.get("kb.watch"):
            kiosk.add_task(parts.watcher.run(), "kb-watch")
        kiosk.add_task(_retention(parts), "retention")
        kiosk.add_task(_announce(server_box, host, port, parts), "announce")
        if config.get("voice.enabled"):
            from runtime.voice.service import VoiceService

            voice = VoiceService(config, parts)
            kiosk.extra_health["voice"] = voice.health
            kiosk.add_task(voice.run(), "voice")
        from runtime.vision.service import VisionService

        vision = VisionService(config, parts)
        kiosk.extra_health["vision"] = vision.health
        kiosk.add_task(vision.run(), "vision")
        if systemd.watchdog_interval():
            kiosk.add_task(systemd.watchdog_loop(lambda: kiosk.healthz()["running"]), "watchdog")

    async def on_stopping() -> None:
        systemd.notify("STOPPING=1")

    store_name = config.get("store_name") or getattr(parts.services.kb.store, "name", "")
    app = create_app(kiosk, media_dir=parts.kb_dir / "images", max_body_bytes=int(config.get("server.max_body_bytes")),
                     store_name=store_name, on_started=on_started, on_stopping=on_stopping,
                     admin={"kb_reload": lambda: reload_kb(parts)})
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           ws_max_size=64 * 1024, lifespan="on", timeout_graceful_shutdown=5))
    server_box.append(server)
    # uvicorn catches SIGTERM/SIGINT, shuts down gracefully, then re-raises the signal to the handler that was
    # installed before it: make that a no-op so a clean shutdown exits 0 (systemd then logs no failure).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if getattr(server, "started", False) is False and not server.should_exit:
        print(f"storeclerk: could not start the server on {host}:{port} (is the port in use?)", file=sys.stderr)
        return 1
    return 0


async def _announce(server_box: list, host: str, port: int, parts: KioskParts) -> None:
    from device import systemd

    for _ in range(600):
        if server_box and server_box[0].started:
            break
        await asyncio.sleep(0.05)
    actual = port
    try:
        socks = server_box[0].servers[0].sockets
        actual = socks[0].getsockname()[1]
    except Exception:
        pass
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{actual}/"
    print(f"storeclerk kiosk ready: {url}  (state: {parts.state_dir}; Ctrl-C to stop)", flush=True)
    systemd.notify(f"READY=1\nSTATUS=serving on {url}")


__all__ = ["KioskParts", "Retrieval", "build", "reload_kb", "serve"]
