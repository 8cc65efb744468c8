"""The conversation store: SQLite (WAL, ``synchronous=FULL``), versioned migrations, redaction before every
write, retention, wipe. See ``runtime/store/store.py`` and docs/operations.md.

    store = ConversationStore(path, retention_days=30)       # opens, migrates, purges expired
    store.start_session("s1"); store.add_turn("s1", "customer", "where is the oat milk?", intent="find_product")
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from runtime.errors import ConfigError
from runtime.store.schema import current_version
from runtime.store.store import (
    MAX_TEXT,
    REDACTION_FAILED,
    ConversationStore,
    StoreError,
    clean_text,
    db_files,
)

__all__ = [
    "MAX_TEXT",
    "REDACTION_FAILED",
    "ConversationStore",
    "StoreError",
    "clean_text",
    "current_version",
    "db_files",
    "run_wipe",
]

log = logging.getLogger(__name__)


def run_wipe(db_path: str | Path, *, force: bool = False) -> int:
    """``storeclerk wipe``: erase every stored conversation; returns the exit status.

    Opens the store at ``db_path`` (``<state_dir>/conversations.sqlite3``), deletes every row and media file,
    and VACUUMs. A damaged store, or one from a newer storeclerk, cannot be opened: then, only with ``force``, its
    files (database, WAL, shared memory, ``media/``) are deleted outright. A file that is not a storeclerk
    store is never deleted. The kiosk may keep running during a wipe.
    """
    path = Path(db_path)
    if not path.exists():
        print(f"no conversation store at {path}: nothing to wipe")
        return 0
    try:
        with ConversationStore(path, retention_days=None, redact=str) as store:
            before = store.counts()
            store.wipe()
    except ConfigError as exc:
        # Only a store (damaged, or from a newer storeclerk) is deleted; a file that is not one never is.
        if not force or exc.code not in ("store_damaged", "store_newer"):
            print(f"error: {exc}")
            return 1
        removed = [p for p in db_files(path) if p.exists()]
        for p in removed:
            p.unlink()
        media = path.parent / "media"
        if media.is_dir():
            shutil.rmtree(media)
            removed.append(media)
        print(f"the store could not be opened ({exc}); deleted {', '.join(map(str, removed))}")
        return 0
    print(f"wiped {path}: {before['sessions']} sessions, {before['turns']} turns, {before['events']} events, "
          f"{before['media']} media files")
    return 0
