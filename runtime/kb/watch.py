"""Hot reload: notice edits to the KB files, validate the new KB, and swap it in only if it is good.

    watcher = KBWatcher(kb_dir, on_change=lambda kb: rebuild_retriever(kb), poll_s=2.0)
    task = asyncio.create_task(watcher.run())   # or watcher.start_thread() outside asyncio
    watcher.kb            # the last good KnowledgeBase
    watcher.health()      # {"ok": ..., "last_error": "data/kb/faq.yml line 42: …", "errors": [...], ...}

Polling (file mtimes and sizes, every ``poll_s`` seconds) instead of inotify: inotify is missing on some of
the file systems a kiosk mounts its data from (overlay, network shares), and a two-second delay is
invisible to an operator. A change is acted on once the files have stopped changing for one poll, so a
half-saved file is not loaded. A KB that fails validation, or whose ``on_change`` callback raises (say the
retriever cannot be rebuilt), is rejected: the last good KB keeps serving and the error (file and line) is
kept for ``/healthz`` until a later edit fixes it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from runtime.errors import ConfigError
from runtime.kb.loader import IMAGES_DIR, KB_FILES, KnowledgeBase

log = logging.getLogger(__name__)

Snapshot = tuple[tuple[str, int | None, int | None], ...]


def snapshot(kb_dir: Path, extra: Iterable[Path] = ()) -> Snapshot:
    """(path, mtime_ns, size) of every KB file and product image (None, None for a missing file)."""
    files = [kb_dir / n for n in KB_FILES]
    imgs = kb_dir / IMAGES_DIR
    try:
        files += sorted(p for p in imgs.iterdir() if p.is_file())
    except OSError:
        pass
    out = []
    for p in [*files, *extra]:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(p), None, None))
    return tuple(out)


class KBWatcher:
    """Watches one KB directory. ``on_change(kb)`` is called (in the watcher's thread) with each new valid KB;
    ``on_error(message)`` with each rejected one. Thread-safe: ``kb`` is swapped under a lock."""

    def __init__(self, kb_dir: str | Path, on_change: Callable[[KnowledgeBase], Any] | None = None, *,
                 poll_s: float = 2.0, initial: KnowledgeBase | None = None,
                 on_error: Callable[[str], Any] | None = None, extra_files: Iterable[str | Path] = (),
                 loader: Callable[[Path], KnowledgeBase] = KnowledgeBase.load) -> None:
        self.kb_dir = Path(kb_dir)
        self.on_change = on_change
        self.on_error = on_error
        self.poll_s = float(poll_s)
        self.extra_files = tuple(Path(p) for p in extra_files)
        self._load = loader
        self._lock = threading.RLock()
        self._kb = initial
        self.last_error: str | None = None
        self.errors: list[str] = []
        self.last_reload: dt.datetime | None = None
        self.last_check: dt.datetime | None = None
        self.reloads = 0
        self.rejected = 0
        self._seen = snapshot(self.kb_dir, self.extra_files)  # what the current KB (or the last attempt) was built from
        self._pending: Snapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if initial is None:
            self.reload()

    @property
    def kb(self) -> KnowledgeBase | None:
        with self._lock:
            return self._kb

    # ---- one step ----------------------------------------------------------------------------------------
    def check_now(self, settle: bool = False) -> bool:
        """Look at the files once; if they changed, reload. Returns True when a new KB was swapped in.
        ``settle`` (what the polling loops use): act on a change only when two consecutive checks see the
        same changed files, since an editor may still be writing on the first one."""
        self.last_check = dt.datetime.now(dt.timezone.utc)
        now = snapshot(self.kb_dir, self.extra_files)
        if now == self._seen:
            self._pending = None
            return False
        if settle and now != self._pending:
            self._pending = now  # changed since the last look: wait one poll for the writes to settle
            return False
        self._pending = None
        return self._reload_from(now)

    def reload(self) -> bool:
        """Load and validate the KB now, regardless of file times. True if it was swapped in."""
        return self._reload_from(snapshot(self.kb_dir, self.extra_files))

    def _reload_from(self, snap: Snapshot) -> bool:
        with self._lock:
            self._seen = snap  # a rejected version is not retried until the files change again
            try:
                kb = self._load(self.kb_dir)
                if self.on_change is not None:
                    self.on_change(kb)
            except ConfigError as exc:
                return self._reject(list(getattr(exc, "errors", None) or [str(exc)]))
            except Exception as exc:  # the callback failed (e.g. the retriever could not be built)
                log.exception("knowledge base reload failed in the callback")
                return self._reject([f"reload failed: {type(exc).__name__}: {exc}"])
            self._kb = kb
            self.last_error, self.errors = None, []
            self.last_reload = dt.datetime.now(dt.timezone.utc)
            self.reloads += 1
            log.info("knowledge base loaded from %s: %d products, %d FAQ entries", self.kb_dir, len(kb.products), len(kb.faqs))
            return True

    def _reject(self, errors: list[str]) -> bool:
        self.errors = errors
        self.last_error = errors[0] if len(errors) == 1 else f"{errors[0]} (+{len(errors) - 1} more)"
        self.rejected += 1
        keeping = "keeping the last good one" if self._kb is not None else "no knowledge base loaded"
        log.error("knowledge base in %s rejected (%s): %s", self.kb_dir, keeping, "; ".join(errors))
        if self.on_error is not None:
            try:
                self.on_error(self.last_error)
            except Exception:
                log.exception("on_error callback failed")
        return False

    def health(self) -> dict:
        kb = self.kb
        return {
            "ok": self.last_error is None and kb is not None,
            "dir": str(self.kb_dir),
            "products": len(kb.products) if kb else 0,
            "faqs": len(kb.faqs) if kb else 0,
            "fingerprint": kb.fingerprint[:12] if kb else None,
            "last_error": self.last_error,
            "errors": list(self.errors),
            "last_reload": self.last_reload.isoformat() if self.last_reload else None,
            "reloads": self.reloads,
            "rejected": self.rejected,
        }

    # ---- loops -------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Poll forever (cancel the task to stop). File reads and the reload run in a worker thread so the
        event loop keeps serving customers while a KB is validated and embedded."""
        while not self._stop.is_set():
            await asyncio.sleep(self.poll_s)
            try:
                await asyncio.to_thread(self.check_now, True)
            except Exception:  # never let the watcher die: the next poll tries again
                log.exception("knowledge base watcher check failed")

    def start_thread(self) -> threading.Thread:
        """Poll in a daemon thread (for callers without an event loop). ``stop()`` ends it."""
        if self._thread is not None and self._thread.is_alive():
            return self._thread
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.poll_s):
                try:
                    self.check_now(settle=True)
                except Exception:
                    log.exception("knowledge base watcher check failed")

        self._thread = threading.Thread(target=loop, name="kb-watcher", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=max(1.0, 2 * self.poll_s))
