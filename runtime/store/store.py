"""``ConversationStore``: every session and turn the kiosk had, redacted, in one SQLite file.

Durability: the file is in WAL mode with ``synchronous=FULL``, so a turn is on disk (the WAL is fsynced)
before ``add_turn`` returns; the kiosk calls it before it shows the reply. ``synchronous=NORMAL`` would only
guarantee that the file stays consistent, and could lose the last turns on a power cut.

Privacy: every text (turns, event details) passes through ``redact`` before it is written; if ``redact``
fails, a fixed placeholder is written instead of the text. ``secure_delete`` is on, purges and wipes
checkpoint the WAL, and ``wipe`` VACUUMs, so deleted conversations do not linger in free pages.

Threads: every method takes one internal lock, so concurrent calls are serialized; the runtime calls the store
from a single worker thread next to its asyncio loop (never on the loop itself: ``add_turn`` waits for an
fsync). The connection is opened with ``check_same_thread=False`` so that thread need not be the one that
opened it.

Errors: a file that is not a database, is corrupt, or comes from a newer storeclerk raises ``ConfigError``
naming the path, and the file is left untouched. A write that fails later (disk full, I/O error) raises
``StoreError``; the runtime logs it and keeps serving the customer.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from runtime.errors import ConfigError, InputError, StoreclerkError
from runtime.store import schema

log = logging.getLogger(__name__)

ROLES = ("customer", "kiosk")
MEDIA_KINDS = ("audio", "image")
MAX_TEXT = 10_000  # characters stored per text; longer input is cut and ends with TRUNCATED_MARK
TRUNCATED_MARK = "\u2026"
# Input beyond this is dropped before redaction: it bounds the redactor's work on pasted or hostile input.
_RAW_CAP = 4 * MAX_TEXT
REDACTION_FAILED = "[text not stored: redaction failed]"
BUSY_TIMEOUT_MS = 5_000
MAX_ID = 128
_SQLITE_HEADER = b"SQLite format 3\x00"
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_TURN_KEYS = frozenset(
    {"role", "text", "intent", "confidence", "out_of_scope", "handoff", "latency_ms", "stage_ms", "ts"})
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
DAY_S = 86_400.0


class StoreError(StoreclerkError):
    """The conversation store could not write or read (disk full, I/O error, closed store)."""

    code = "store"


Redactor = Callable[[str], str]


def db_files(path: str | Path) -> list[Path]:
    """The database file and its WAL/shared-memory companions."""
    p = Path(path)
    return [p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm")]


# ------------------------------------------------------------------------------------------- input cleaning


def clean_text(text: Any) -> tuple[str, bool]:
    """Any input as a storable ``str``: bytes decoded (invalid UTF-8 replaced), NUL and other C0 control
    characters (except tab and newlines) removed, lone surrogates replaced by U+FFFD, cut to ``_RAW_CAP``
    characters on a word boundary. Returns (text, was_cut). Never raises."""
    try:
        if text is None:
            s = ""
        elif isinstance(text, str):
            s = text
        elif isinstance(text, (bytes, bytearray, memoryview)):
            s = bytes(text).decode("utf-8", "replace")
        else:
            s = str(text)
    except Exception:  # a hostile __str__; the turn is still recorded
        log.warning("turn text of type %s could not be converted to str", type(text).__name__)
        s = ""
    cut = False
    if len(s) > _RAW_CAP:
        s = s[:_RAW_CAP]
        # Do not leave half an e-mail address or card number at the cut, where no rule would recognize it.
        space = max(s.rfind(" ", _RAW_CAP - 256), s.rfind("\n", _RAW_CAP - 256))
        s = s[:space] if space > 0 else s[: _RAW_CAP - 256]
        cut = True
    s = _CONTROL_RE.sub("", s)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates ("\ud800"): SQLite would reject the string
        s = s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return s, cut


def _opt_float(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def _opt_label(x: Any, limit: int = 100) -> str | None:
    if x is None:
        return None
    s, _ = clean_text(x)
    return s[:limit] or None


def _stage_json(stage_ms: Any) -> str | None:
    """A mapping or pairs of stage -> milliseconds as a JSON object; unusable values are dropped."""
    if stage_ms is None:
        return None
    try:
        pairs = stage_ms.items() if isinstance(stage_ms, Mapping) else stage_ms
        out: dict[str, float] = {}
        for k, v in pairs:
            f = _opt_float(v)
            if f is not None:
                out[str(k)[:64]] = round(f, 3)
    except (TypeError, ValueError):
        log.warning("stage_ms of type %s is not a mapping of stage -> ms; not stored", type(stage_ms).__name__)
        return None
    return json.dumps(out) if out else None


def _session_id(session_id: Any) -> str:
    if not isinstance(session_id, str) or not session_id or len(session_id) > MAX_ID:
        raise InputError(f"session id must be a non-empty str of at most {MAX_ID} characters, got {session_id!r:.80}")
    return session_id


# -------------------------------------------------------------------------------------------------- store


class ConversationStore:
    """Sessions, turns and events of the kiosk's conversations (docs/runtime.md, docs/operations.md).

    ``path``: the SQLite file (created with its parent folder if missing).
    ``retention_days``: sessions older than this are deleted on open and by ``purge_expired()``;
    ``None`` keeps everything.
    ``redact``: str -> str applied to every text before it is written; default: the kiosk's entity
    extractor (``EntityExtractor.default().redact``), which masks e-mails, phones, card numbers and names.
    ``store_media``: when off (the default) ``add_media`` records nothing.
    ``clock``: seconds since the epoch (tests inject one).
    ``readonly``: open an existing store for reading only (the report): no migration, no purge, no writes.
    """

    def __init__(
        self,
        path: str | Path,
        retention_days: float | None = 30,
        redact: Redactor | None = None,
        store_media: bool = False,
        *,
        clock: Callable[[], float] = time.time,
        readonly: bool = False,
    ) -> None:
        if retention_days is not None and (
            isinstance(retention_days, bool) or not isinstance(retention_days, (int, float)) or not retention_days > 0
        ):
            raise ConfigError(f"store retention_days must be a positive number of days or None, got {retention_days!r}")
        self.path = Path(path).expanduser()
        self.retention_days = retention_days
        self.store_media = bool(store_media)
        self.readonly = readonly
        self._clock = clock
        self._lock = threading.RLock()
        if redact is None and not readonly:
            from runtime.entities import EntityExtractor

            redact = EntityExtractor.default().redact
        self._redact = redact
        self._db: sqlite3.Connection | None = self._open()
        if not readonly and retention_days is not None:
            try:
                self.purge_expired()
            except StoreError as exc:  # a full disk must not keep the kiosk from starting; the daily purge retries
                log.warning("%s", exc)

    # ---- opening --------------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        path = self.path
        if self.readonly and not path.is_file():
            raise ConfigError(f"no conversation store at {path}")
        self._check_header(path)
        if not self.readonly:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the folder for the conversation store {path}: {exc}") from exc
        db: sqlite3.Connection | None = None
        try:
            if self.readonly:
                db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, isolation_level=None,
                                     check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
            else:
                db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Read the version before anything writes to the file: a newer or foreign file stays untouched. One
            # read transaction, so a kiosk creating the file at this moment cannot make it look foreign.
            db.execute("BEGIN")
            version = schema.user_version(db)
            foreign = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")]
            db.execute("COMMIT")
            known = schema.current_version()
            if version > known:
                raise ConfigError(
                    f"the conversation store {path} has schema version {version}, written by a newer storeclerk; "
                    f"this one knows up to version {known}. Upgrade storeclerk, or point the store at another file. "
                    "The file was not changed.",
                    code="store_newer",
                )
            if version == 0 and foreign:
                raise ConfigError(
                    f"{path} is an SQLite database but not a storeclerk conversation store (it has "
                    f"{', '.join(foreign[:5])}); the file was not changed. Point the store at another file.",
                    code="store_foreign",
                )
            if self.readonly:
                if 0 < version < known:
                    raise ConfigError(f"the conversation store {path} has schema version {version}; open it once "
                                      f"read-write (start the kiosk) to migrate it to version {known}")
            else:
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    log.warning("conversation store %s: WAL mode unavailable (journal_mode=%s)", path, mode)
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA secure_delete = ON")
            problems = [r[0] for r in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems[:5]))
            if not self.readonly:
                applied = schema.migrate(db)
                if applied:
                    log.info("conversation store %s migrated to schema version %d", path, applied[-1])
            return db
        except ConfigError:
            if db is not None:
                db.close()
            raise
        except sqlite3.DatabaseError as exc:
            if db is not None:
                db.close()
            raise self._open_error(exc) from exc

    @staticmethod
    def _check_header(path: Path) -> None:
        try:
            with open(path, "rb") as fh:
                head = fh.read(len(_SQLITE_HEADER))
        except FileNotFoundError:
            return
        except IsADirectoryError as exc:
            raise ConfigError(f"the conversation store path {path} is a folder, not a file") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read the conversation store {path}: {exc}") from exc
        if head and head != _SQLITE_HEADER:
            raise ConfigError(
                f"{path} is not an SQLite database, so it cannot be the conversation store; the file was not changed. "
                "Point the store at another file, or move this one aside.",
                code="store_foreign",
            )

    def _open_error(self, exc: sqlite3.DatabaseError) -> ConfigError:
        code = getattr(exc, "sqlite_errorcode", None)
        text = str(exc)
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in text or "not a database" in text or (
            not isinstance(exc, sqlite3.OperationalError)
        ):
            return ConfigError(
                f"the conversation store {self.path} is damaged ({text}); the file was not changed. Move it "
                "aside (with its -wal and -shm files) and the kiosk starts a new one, or erase it with "
                "`storeclerk wipe --force`.",
                code="store_damaged",
            )
        return ConfigError(f"cannot open the conversation store {self.path}: {text}")

    # ---- plumbing ---------------------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"the conversation store {self.path} is closed")
        return self._db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; committed (and fsynced) when the block ends."""
        if self.readonly:
            raise StoreError(f"the conversation store {self.path} was opened read-only")
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                yield db
                db.execute("COMMIT")
            except BaseException as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"conversation store {self.path}: {exc}") from exc
                raise

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            db = self._conn()
            try:
                cur = db.execute(sql, params)
                cur.row_factory = sqlite3.Row
                return cur.fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"conversation store {self.path}: {exc}") from exc

    def _now(self, ts: float | None) -> float:
        f = _opt_float(ts)
        return self._clock() if f is None else f

    def _safe_text(self, text: Any) -> str:
        """Cleaned, redacted and length-capped: the only form of a text that ever reaches the file."""
        s, cut = clean_text(text)
        if s:
            try:
                red = self._redact(s) if self._redact is not None else s
                if not isinstance(red, str):
                    raise TypeError(f"redact returned {type(red).__name__}, not str")
                s, _ = clean_text(red)
            except Exception:  # never write the unredacted text; log without it
                log.exception("redaction failed on a %d-character text; a placeholder is stored instead", len(s))
                return REDACTION_FAILED
        if cut or len(s) > MAX_TEXT:
            s = s[: MAX_TEXT - len(TRUNCATED_MARK)] + TRUNCATED_MARK
        return s

    def _safe_detail(self, detail: Any) -> str | None:
        if detail is None:
            return None

        def walk(x: Any, depth: int = 0) -> Any:
            if depth > 8:
                return None
            if isinstance(x, Mapping):
                return {str(k)[:64]: walk(v, depth + 1) for k, v in list(x.items())[:100]}
            if isinstance(x, (list, tuple)):
                return [walk(v, depth + 1) for v in list(x)[:100]]
            if x is None or isinstance(x, bool):
                return x
            if isinstance(x, (int, float)):
                return _opt_float(x) if isinstance(x, float) else x
            return self._safe_text(x)

        return json.dumps(walk(detail), ensure_ascii=False)[: 4 * MAX_TEXT]

    # ---- writing ------------------------------------------------------------------------------------------

    def start_session(self, session_id: str, channel: str = "touch", *, ts: float | None = None) -> None:
        """Record a new session. Starting an existing session again changes nothing."""
        sid = _session_id(session_id)
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO sessions (id, started_at, channel) VALUES (?, ?, ?)",
                       (sid, self._now(ts), _opt_label(channel, 32) or "touch"))

    def add_turn(
        self,
        session_id: str,
        role: str,
        text: Any,
        *,
        intent: str | None = None,
        confidence: float | None = None,
        out_of_scope: bool = False,
        handoff: bool = False,
        latency_ms: float | None = None,
        stage_ms: Mapping[str, float] | Any = None,
        ts: float | None = None,
    ) -> int:
        """Append one turn and return its id; it is committed and fsynced before this returns.

        ``role`` is ``"customer"`` or ``"kiosk"``. ``text`` may be anything: it is converted to ``str``,
        cleaned (NUL, lone surrogates), redacted, and cut to ``MAX_TEXT`` characters. A turn for a session
        that was never started starts it (channel ``touch``). ``stage_ms`` is a mapping (or pairs) of stage
        name -> milliseconds; non-finite numbers are dropped.
        """
        return self.add_turns(session_id, [dict(role=role, text=text, intent=intent, confidence=confidence,
                                                out_of_scope=out_of_scope, handoff=handoff, latency_ms=latency_ms,
                                                stage_ms=stage_ms, ts=ts)])[0]

    def _turn_rows(self, session_id: str, turns: Sequence[Mapping[str, Any]]) -> tuple[str, list[tuple]]:
        sid = _session_id(session_id)
        rows = []
        for t in turns:
            role = t.get("role")
            if role not in ROLES:
                raise InputError(f"turn role must be one of {', '.join(ROLES)}, got {role!r:.40}")
            unknown = set(t) - _TURN_KEYS
            if unknown:
                raise InputError(f"unknown turn field(s): {', '.join(sorted(map(str, unknown)))}")
            rows.append((sid, self._now(t.get("ts")), role, self._safe_text(t.get("text")), _opt_label(t.get("intent")),
                         _opt_float(t.get("confidence")), int(bool(t.get("out_of_scope"))), int(bool(t.get("handoff"))),
                         _opt_float(t.get("latency_ms")), _stage_json(t.get("stage_ms"))))
        return sid, rows

    @staticmethod
    def _insert(db: sqlite3.Connection, sid: str, rows: list[tuple]) -> list[int]:
        db.execute("INSERT OR IGNORE INTO sessions (id, started_at) VALUES (?, ?)", (sid, rows[0][1]))
        ids = []
        for row in rows:
            cur = db.execute(
                "INSERT INTO turns (session_id, ts, role, text, intent, confidence, out_of_scope, handoff,"
                " latency_ms, stage_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            ids.append(int(cur.lastrowid))
        return ids

    def add_turns(self, session_id: str, turns: Sequence[Mapping[str, Any]]) -> list[int]:
        """Append several turns of one session in one transaction (one fsync): a customer turn and the reply
        to it cost one disk flush instead of two. Each mapping takes ``add_turn``'s arguments (``role`` and
        ``text`` required). All or none are written; returns their ids in order."""
        sid, rows = self._turn_rows(session_id, turns)
        if not rows:
            return []
        with self._write() as db:
            return self._insert(db, sid, rows)

    def add_exchanges(self, batch: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]) -> list[list[int]]:
        """Group commit: the turns of several sessions (``[(session_id, turns), ...]``) in ONE transaction and one
        fsync. Under many concurrent customers the disk flush, not the SQL, bounds throughput; the kiosk's
        respond stage commits whatever exchanges are waiting together. All or none are written."""
        prepared = [self._turn_rows(sid, turns) for sid, turns in batch]
        with self._write() as db:
            return [self._insert(db, sid, rows) if rows else [] for sid, rows in prepared]

    def end_session(self, session_id: str, reason: str, *, ts: float | None = None) -> None:
        """Mark a session ended (``reason``: ``idle`` | ``goodbye`` | ``done`` | ...). Ending twice keeps the
        first end."""
        sid = _session_id(session_id)
        now = self._now(ts)
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO sessions (id, started_at) VALUES (?, ?)", (sid, now))
            db.execute("UPDATE sessions SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL",
                       (now, _opt_label(reason, 32), sid))

    def add_event(self, session_id: str | None, kind: str, detail: Any = None, *, ts: float | None = None) -> int:
        """Record an event (``handoff``, ``staff_button``, ``error``...), optionally tied to a session.
        ``detail`` is any JSON-like value; its strings are redacted like turn text."""
        sid = None if session_id is None else _session_id(session_id)
        label = _opt_label(kind, 64)
        if label is None:
            raise InputError("event kind must be a non-empty str")
        now = self._now(ts)
        detail_json = self._safe_detail(detail)
        with self._write() as db:
            if sid is not None:
                db.execute("INSERT OR IGNORE INTO sessions (id, started_at) VALUES (?, ?)", (sid, now))
            cur = db.execute("INSERT INTO events (session_id, ts, kind, detail) VALUES (?, ?, ?, ?)",
                             (sid, now, label, detail_json))
            return int(cur.lastrowid)

    @property
    def media_dir(self) -> Path:
        """Where recorded audio and images belong (``<db folder>/media``); only files under it are deleted
        by purge and wipe."""
        return self.path.parent / "media"

    def add_media(self, session_id: str, kind: str, path: str | Path, *, turn_id: int | None = None,
                  ts: float | None = None) -> int | None:
        """Record an audio/image file kept for a session; returns its id, or ``None`` (nothing recorded)
        when ``store_media`` is off. Files should live under ``media_dir`` so purge and wipe delete them."""
        if not self.store_media:
            return None
        sid = _session_id(session_id)
        if kind not in MEDIA_KINDS:
            raise InputError(f"media kind must be one of {', '.join(MEDIA_KINDS)}, got {kind!r:.40}")
        now = self._now(ts)
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO sessions (id, started_at) VALUES (?, ?)", (sid, now))
            cur = db.execute("INSERT INTO media (session_id, turn_id, ts, kind, path) VALUES (?, ?, ?, ?, ?)",
                             (sid, turn_id, now, kind, str(path)))
            return int(cur.lastrowid)

    # ---- retention and erasure -------------------------------------------------------------------------

    def purge_expired(self, now: float | None = None) -> int:
        """Delete sessions that started more than ``retention_days`` before ``now`` (with their turns, events
        and media), and any older turn or event left in a longer session. Returns the number of sessions
        deleted (0 when retention is off)."""
        if self.retention_days is None:
            return 0
        cutoff = self._now(now) - float(self.retention_days) * DAY_S
        with self._write() as db:
            media = [r[0] for r in db.execute(
                "SELECT path FROM media WHERE ts < ? OR session_id IN (SELECT id FROM sessions WHERE started_at < ?)",
                (cutoff, cutoff))]
            sessions = db.execute("DELETE FROM sessions WHERE started_at < ?", (cutoff,)).rowcount
            turns = db.execute("DELETE FROM turns WHERE ts < ?", (cutoff,)).rowcount
            events = db.execute("DELETE FROM events WHERE ts < ?", (cutoff,)).rowcount
            db.execute("DELETE FROM media WHERE ts < ?", (cutoff,))
        if sessions or turns or events:
            self._checkpoint()
            log.info("conversation store: purged %d sessions, %d more turns, %d more events older than %s days",
                     sessions, turns, events, self.retention_days)
        self._unlink_media(media)
        return sessions

    def wipe(self) -> None:
        """Delete every session, turn, event and media file, then VACUUM and truncate the WAL so nothing of
        them stays in the file's free pages."""
        with self._write() as db:
            media = [r[0] for r in db.execute("SELECT path FROM media")]
            for table in reversed(schema.TABLES):
                db.execute(f"DELETE FROM {table}")
        with self._lock:
            db = self._conn()
            try:
                db.execute("VACUUM")
            except sqlite3.Error as exc:
                raise StoreError(f"conversation store {self.path}: VACUUM after wipe failed: {exc}") from exc
        self._checkpoint()
        self._unlink_media(media)
        log.info("conversation store %s wiped", self.path)

    def _checkpoint(self) -> None:
        with self._lock:
            try:
                self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:  # a reader in another process holds the WAL; the next one will do it
                log.warning("conversation store %s: WAL checkpoint postponed: %s", self.path, exc)

    def _unlink_media(self, paths: list[str]) -> None:
        root = self.media_dir.resolve()
        for p in paths:
            target = Path(p).resolve()
            if root not in target.parents:
                log.warning("media file %s lies outside %s; not deleted", p, root)
                continue
            try:
                target.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not delete media file %s: %s", target, exc)

    # ---- reading ------------------------------------------------------------------------------------------

    def turns(self, session_id: str) -> list[dict[str, Any]]:
        """The session's turns, oldest first: id, session_id, ts, role, text (redacted), intent, confidence,
        out_of_scope, handoff, latency_ms, stage_ms (dict or None)."""
        rows = self._read("SELECT * FROM turns WHERE session_id = ? ORDER BY id", (_session_id(session_id),))
        return [_turn_dict(r) for r in rows]

    def sessions(self, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
        """Sessions that started in [since, until), oldest first, with their number of turns and whether any
        turn or event handed off to staff."""
        where, params = _range("started_at", since, until)
        rows = self._read(
            "SELECT s.*, (SELECT COUNT(*) FROM turns t WHERE t.session_id = s.id) AS turns, "
            "(EXISTS (SELECT 1 FROM turns t WHERE t.session_id = s.id AND t.handoff = 1) OR "
            " EXISTS (SELECT 1 FROM events e WHERE e.session_id = s.id AND e.kind = 'handoff')) AS handoff "
            f"FROM sessions s {where} ORDER BY s.started_at, s.id",
            params,
        )
        return [{**dict(r), "handoff": bool(r["handoff"])} for r in rows]

    def turn_metrics(self, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
        """Turns in [since, until) without their text (what the report counts), oldest first."""
        where, params = _range("ts", since, until)
        rows = self._read(
            "SELECT id, session_id, ts, role, intent, confidence, out_of_scope, handoff, latency_ms, stage_ms "
            f"FROM turns {where} ORDER BY ts, id",
            params,
        )
        return [_turn_dict(r) for r in rows]

    def events(self, since: float | None = None, until: float | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """Events in [since, until), optionally of one kind, oldest first (``detail`` decoded)."""
        where, params = _range("ts", since, until)
        if kind is not None:
            where = f"{where} AND kind = ?" if where else "WHERE kind = ?"
            params = (*params, kind)
        rows = self._read(f"SELECT * FROM events {where} ORDER BY ts, id", params)
        out = []
        for r in rows:
            d = dict(r)
            d["detail"] = json.loads(d["detail"]) if d["detail"] else None
            out.append(d)
        return out

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        return {t: int(self._read(f"SELECT COUNT(*) FROM {t}")[0][0]) for t in schema.TABLES}

    def schema_version(self) -> int:
        with self._lock:
            return schema.user_version(self._conn())

    def integrity_check(self) -> str:
        """``"ok"``, or SQLite's findings (integrity and foreign keys), one per line."""
        problems = [r[0] for r in self._read("PRAGMA integrity_check")]
        fk = self._read("PRAGMA foreign_key_check")
        lines = [] if problems == ["ok"] else problems
        lines += [f"foreign key: {r[0]} row {r[1]} -> {r[2]}" for r in fk]
        return "\n".join(lines) or "ok"

    # ---- lifecycle ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> ConversationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._db is None else ("read-only" if self.readonly else "open")
        return f"ConversationStore({str(self.path)!r}, {state})"


def _range(column: str, since: float | None, until: float | None) -> tuple[str, tuple]:
    conds, params = [], []
    if since is not None:
        conds.append(f"{column} >= ?")
        params.append(float(since))
    if until is not None:
        conds.append(f"{column} < ?")
        params.append(float(until))
    return ("WHERE " + " AND ".join(conds) if conds else ""), tuple(params)


def _turn_dict(r: sqlite3.Row) -> dict[str, Any]:
    d = dict(r)
    d["out_of_scope"] = bool(d["out_of_scope"])
    d["handoff"] = bool(d["handoff"])
    d["stage_ms"] = json.loads(d["stage_ms"]) if d.get("stage_ms") else None
    return d
