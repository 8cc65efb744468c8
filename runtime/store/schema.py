"""The conversation store's schema and its migrations.

The schema version lives in SQLite's ``PRAGMA user_version`` (0 = a fresh file). ``MIGRATIONS[i]`` takes a
database from version ``i`` to ``i + 1``; each runs in its own transaction together with the new
``user_version``, so a crash or a failing step leaves the file at the last complete version. Append new steps
at the end, never edit a released one: a kiosk in the field may sit at any earlier version.

Conventions the report relies on (docs/operations.md):

- ``turns.intent``, ``confidence`` and ``out_of_scope`` describe what the kiosk understood of a customer
  turn; ``latency_ms`` and ``stage_ms`` (a JSON object, stage name -> milliseconds) describe how long the
  kiosk took to produce a reply; ``handoff`` marks a reply that called staff.
- Timestamps are seconds since the epoch (UTC), as ``time.time()`` returns them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

Migration = Callable[[sqlite3.Connection], None]


def _run_script(db: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated DDL inside the caller's transaction (``executescript`` would COMMIT it first)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _v1_initial(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        CREATE TABLE sessions (
            id          TEXT PRIMARY KEY,
            started_at  REAL NOT NULL,
            ended_at    REAL,
            end_reason  TEXT,
            channel     TEXT NOT NULL DEFAULT 'touch'
        );
        CREATE INDEX sessions_started ON sessions(started_at);

        CREATE TABLE turns (
            id           INTEGER PRIMARY KEY,
            session_id   TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            ts           REAL NOT NULL,
            role         TEXT NOT NULL CHECK (role IN ('customer', 'kiosk')),
            text         TEXT NOT NULL,
            intent       TEXT,
            confidence   REAL,
            out_of_scope INTEGER NOT NULL DEFAULT 0 CHECK (out_of_scope IN (0, 1)),
            handoff      INTEGER NOT NULL DEFAULT 0 CHECK (handoff IN (0, 1)),
            latency_ms   REAL,
            stage_ms     TEXT
        );
        CREATE INDEX turns_session ON turns(session_id, id);
        CREATE INDEX turns_ts ON turns(ts);

        CREATE TABLE events (
            id          INTEGER PRIMARY KEY,
            session_id  TEXT REFERENCES sessions(id) ON DELETE CASCADE,
            ts          REAL NOT NULL,
            kind        TEXT NOT NULL,
            detail      TEXT
        );
        CREATE INDEX events_session ON events(session_id);
        CREATE INDEX events_ts ON events(ts);

        CREATE TABLE media (
            id          INTEGER PRIMARY KEY,
            session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            turn_id     INTEGER REFERENCES turns(id) ON DELETE CASCADE,
            ts          REAL NOT NULL,
            kind        TEXT NOT NULL CHECK (kind IN ('audio', 'image')),
            path        TEXT NOT NULL
        );
        CREATE INDEX media_session ON media(session_id);
        """
    )


MIGRATIONS: Sequence[Migration] = (_v1_initial,)
TABLES = ("sessions", "turns", "events", "media")


def current_version() -> int:
    return len(MIGRATIONS)


def user_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, migrations: Sequence[Migration] | None = None) -> list[int]:
    """Apply every migration above the file's version, one transaction each; returns the versions reached.

    ``db`` must be in autocommit mode (``isolation_level=None``) so the transactions here are the only ones.
    The caller has already refused a file newer than ``len(migrations)``.
    """
    steps = MIGRATIONS if migrations is None else migrations
    applied: list[int] = []
    while True:
        # BEGIN IMMEDIATE takes the write lock before reading the version: two processes opening the same
        # fresh file cannot both run step 1.
        db.execute("BEGIN IMMEDIATE")
        try:
            version = user_version(db)
            if version >= len(steps):
                db.execute("COMMIT")
                return applied
            steps[version](db)
            db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        applied.append(version + 1)
