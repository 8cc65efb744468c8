"""The conversation store: schema migrations, durability, redaction, retention, wipe, hostile input."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from runtime.errors import ConfigError, InputError
from runtime.store import (
    MAX_TEXT,
    REDACTION_FAILED,
    ConversationStore,
    StoreError,
    current_version,
    db_files,
    run_wipe,
    schema,
)

REPO = Path(__file__).resolve().parents[2]
DAY = 86_400.0
T0 = 1_800_000_000.0  # a fixed "now" for the injected clock

PII = {
    "anna.schmidt@example.org": "[EMAIL]",
    "415-555-0132": "[PHONE]",
    "4111 1111 1111 1111": "[CARD]",
    "Anna Schmidt": "[NAME]",
}
PII_TEXT = ("My name is Anna Schmidt, mail me at anna.schmidt@example.org or call 415-555-0132; "
            "my card is 4111 1111 1111 1111")


def identity(s: str) -> str:
    return s


def raw_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db_files(path) if p.exists())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "state" / "conversations.db"


@pytest.fixture
def store(db_path):
    s = ConversationStore(db_path, redact=identity, clock=lambda: T0)
    yield s
    s.close()


# ------------------------------------------------------------------------------------------------ opening


def test_fresh_file_is_migrated_and_durable(db_path):
    with ConversationStore(db_path, redact=identity) as s:
        db = s._db
        assert s.schema_version() == current_version() >= 1
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert set(schema.TABLES) <= tables
        assert s.integrity_check() == "ok"


def test_empty_file_counts_as_version_0(db_path):
    db_path.parent.mkdir(parents=True)
    db_path.touch()
    with ConversationStore(db_path, redact=identity) as s:
        assert s.schema_version() == current_version()


def test_reopen_is_idempotent_and_keeps_data(db_path, monkeypatch):
    with ConversationStore(db_path, redact=identity) as s:
        s.start_session("s1")
        tid = s.add_turn("s1", "customer", "hello")
    calls = []
    real = schema.migrate
    monkeypatch.setattr(schema, "migrate", lambda db, m=None: calls.append(real(db, m)) or calls[-1])
    for _ in range(2):
        with ConversationStore(db_path, redact=identity) as s:
            assert s.schema_version() == current_version()
            assert [t["id"] for t in s.turns("s1")] == [tid]
    assert calls == [[], []]


def test_upgrade_from_an_older_version_keeps_data(db_path, monkeypatch):
    with ConversationStore(db_path, redact=identity) as s:
        s.add_turn("s1", "customer", "hello")
    assert current_version() == len(schema.MIGRATIONS)

    def v_next(db):
        db.execute("ALTER TABLE turns ADD COLUMN language TEXT")
        db.execute("UPDATE turns SET language = 'en'")

    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, v_next))
    with ConversationStore(db_path, redact=identity) as s:
        assert s.schema_version() == len(schema.MIGRATIONS)
        assert s._db.execute("SELECT text, language FROM turns").fetchall() == [("hello", "en")]


def test_a_failing_migration_rolls_back_completely(db_path, monkeypatch):
    with ConversationStore(db_path, redact=identity) as s:
        s.add_turn("s1", "customer", "hello")
    before = len(schema.MIGRATIONS)

    def v_broken(db):
        db.execute("CREATE TABLE half_done (x)")
        db.execute("ALTER TABLE no_such_table ADD COLUMN y")

    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, v_broken))
    with pytest.raises(ConfigError, match=str(db_path)):
        ConversationStore(db_path, redact=identity)
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:before])
    with ConversationStore(db_path, redact=identity) as s:
        assert s.schema_version() == before
        assert s._db.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchall() == []
        assert s.counts()["turns"] == 1


def test_migrations_run_from_version_0_one_transaction_each(tmp_path):
    db = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    steps = [lambda c: c.execute("CREATE TABLE a (x)"), lambda c: c.execute("CREATE TABLE b (x)")]
    assert schema.migrate(db, steps) == [1, 2]
    assert schema.user_version(db) == 2
    assert schema.migrate(db, steps) == []


def test_a_store_from_a_newer_version_is_refused_and_untouched(db_path):
    with ConversationStore(db_path, redact=identity) as s:
        s.add_turn("s1", "customer", "hello")
    db = sqlite3.connect(db_path)
    db.execute(f"PRAGMA user_version = {current_version() + 5}")
    db.execute("PRAGMA journal_mode = DELETE")  # one self-contained file whose bytes we can compare
    db.close()
    before = sha(db_path)
    with pytest.raises(ConfigError, match="newer storeclerk") as err:
        ConversationStore(db_path, redact=identity)
    assert str(db_path) in str(err.value) and err.value.code == "store_newer"
    assert sha(db_path) == before
    assert run_wipe(db_path) == 1  # a plain wipe does not touch it either
    assert sha(db_path) == before


def test_not_a_database_names_the_path_and_is_not_overwritten(db_path):
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is a shopping list, not a database\n" * 100)
    before = sha(db_path)
    with pytest.raises(ConfigError, match=str(db_path)):
        ConversationStore(db_path, redact=identity)
    assert sha(db_path) == before
    assert run_wipe(db_path, force=True) == 1  # --force never deletes what is not a store
    assert sha(db_path) == before


def test_a_foreign_sqlite_database_is_refused(db_path):
    db_path.parent.mkdir(parents=True)
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE invoices (id)")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="not a storeclerk conversation store"):
        ConversationStore(db_path, redact=identity)


def test_a_damaged_store_is_refused_and_can_be_force_wiped(db_path, capsys):
    with ConversationStore(db_path, redact=identity) as s:
        for i in range(300):
            s.add_turn(f"s{i % 7}", "customer", f"turn {i} " + "x" * 200)
    data = bytearray(db_path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) > 4 * page
    data[2 * page : 4 * page] = b"\xa5" * (2 * page)  # clobber two b-tree pages
    db_path.write_bytes(bytes(data))
    before = sha(db_path)
    with pytest.raises(ConfigError, match=str(db_path)) as err:
        ConversationStore(db_path, redact=identity)
    assert err.value.code == "store_damaged"
    assert sha(db_path) == before
    assert run_wipe(db_path) == 1
    assert run_wipe(db_path, force=True) == 0
    assert not any(p.exists() for p in db_files(db_path))
    assert "deleted" in capsys.readouterr().out


def test_path_that_is_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="folder"):
        ConversationStore(tmp_path, redact=identity)


def test_bad_retention_is_a_config_error(db_path):
    for bad in (0, -1, "30", True):
        with pytest.raises(ConfigError, match="retention_days"):
            ConversationStore(db_path, retention_days=bad, redact=identity)


# ------------------------------------------------------------------------------------------------ writing


def test_turns_round_trip(store):
    store.start_session("s1", channel="voice")
    a = store.add_turn("s1", "customer", "where is the oat milk?", intent="find_product", confidence=0.93)
    b = store.add_turn("s1", "kiosk", "Aisle 4.", latency_ms=11.5, stage_ms={"understand": 3.25, "decide": 0.5},
                       handoff=False)
    assert b > a
    turns = store.turns("s1")
    assert [t["role"] for t in turns] == ["customer", "kiosk"]
    assert turns[0]["intent"] == "find_product" and turns[0]["confidence"] == pytest.approx(0.93)
    assert turns[0]["out_of_scope"] is False and turns[0]["ts"] == T0
    assert turns[1]["stage_ms"] == {"understand": 3.25, "decide": 0.5} and turns[1]["latency_ms"] == 11.5
    store.end_session("s1", "goodbye")
    store.end_session("s1", "idle")  # the first end stays
    (sess,) = store.sessions()
    assert sess["channel"] == "voice" and sess["end_reason"] == "goodbye" and sess["turns"] == 2
    assert sess["handoff"] is False
    store.start_session("s1", channel="touch")  # starting again changes nothing
    assert store.sessions()[0]["channel"] == "voice"


def test_add_turns_is_one_transaction(store):
    ids = store.add_turns("s1", [
        {"role": "customer", "text": "where is the oat milk?", "intent": "find_product", "latency_ms": 9.0},
        {"role": "kiosk", "text": "Aisle 4."},
    ])
    assert len(ids) == 2 and ids[1] > ids[0]
    assert [t["text"] for t in store.turns("s1")] == ["where is the oat milk?", "Aisle 4."]
    for bad in ({"role": "robot", "text": "x"}, {"role": "kiosk", "text": "x", "colour": "red"}):
        with pytest.raises(InputError):
            store.add_turns("s1", [{"role": "customer", "text": "first"}, bad])
    assert store.counts()["turns"] == 2  # all or nothing
    assert store.add_turns("s1", []) == []


def test_turn_without_a_started_session_starts_it(store):
    store.add_turn("late", "customer", "hi")
    store.add_event("late2", "handoff", {"reason": "asked for staff"})
    ids = {s["id"]: s for s in store.sessions()}
    assert set(ids) == {"late", "late2"}
    assert ids["late2"]["handoff"] is True


def test_stage_pairs_like_understanding_stage_ms(store):
    store.add_turn("s", "kiosk", "ok", stage_ms=(("understand", 2.0), ("respond", float("nan"))))
    assert store.turns("s")[0]["stage_ms"] == {"understand": 2.0}


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, ""),
        (12345, "12345"),
        (b"caf\xc3\xa9 \xff", "café \ufffd"),
        ("nul\x00in\x00side", "nulinside"),
        ("lone \ud800 surrogate", "lone \ufffd surrogate"),
        ("emoji \U0001F600 ok", "emoji \U0001F600 ok"),
        ("bell\x07 and tab\tand\nnewline", "bell and tab\tand\nnewline"),
    ],
)
def test_hostile_text_is_stored_cleaned(store, text, expected):
    store.add_turn("s", "customer", text)
    assert store.turns("s")[-1]["text"] == expected


def test_object_whose_str_raises(store):
    class Nasty:
        def __str__(self):
            raise RuntimeError("boom")

    store.add_turn("s", "customer", Nasty())
    assert store.turns("s")[-1]["text"] == ""


def test_huge_text_is_truncated(store):
    store.add_turn("s", "customer", "word " * 50_000)
    text = store.turns("s")[-1]["text"]
    assert len(text) == MAX_TEXT and text.endswith("\u2026")


def test_bad_numbers_are_dropped_not_fatal(store):
    store.add_turn("s", "kiosk", "x", confidence=float("nan"), latency_ms="fast", stage_ms=42, intent=3)
    t = store.turns("s")[-1]
    assert t["confidence"] is None and t["latency_ms"] is None and t["stage_ms"] is None and t["intent"] == "3"


def test_bad_role_and_session_are_input_errors(store):
    with pytest.raises(InputError, match="role"):
        store.add_turn("s", "robot", "x")
    for bad in ("", None, 7, "x" * 500):
        with pytest.raises(InputError, match="session id"):
            store.add_turn(bad, "customer", "x")
    assert store.counts()["turns"] == 0


def test_closed_store_raises_store_error(db_path):
    s = ConversationStore(db_path, redact=identity)
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.add_turn("s", "customer", "x")


def test_calls_from_several_threads_are_serialized(store):
    ids: list[int] = []

    def work(n):
        for i in range(40):
            ids.append(store.add_turn(f"t{n}", "customer", f"{n}-{i}"))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 160 and store.counts()["turns"] == 160
    assert [t["text"] for t in store.turns("t2")] == [f"2-{i}" for i in range(40)]


# ---------------------------------------------------------------------------------------------- redaction


def test_default_redaction_masks_pii_before_it_reaches_the_file(db_path):
    with ConversationStore(db_path) as s:  # the default redactor: the kiosk's entity extractor
        s.add_turn("s1", "customer", PII_TEXT)
        s.add_turn("s1", "kiosk", "Thanks Anna Schmidt, I sent it to anna.schmidt@example.org.")
        s.add_event("s1", "handoff", {"note": "customer gave card 4111 1111 1111 1111", "n": 2})
        live = raw_bytes(db_path)  # while open: the WAL holds the new pages
        texts = [t["text"] for t in s.turns("s1")]
        (event,) = s.events()
    for secret in PII:
        assert secret.encode() not in live
    for secret in PII:
        assert secret.encode() not in raw_bytes(db_path)
    for placeholder in PII.values():
        assert placeholder in texts[0]
    assert "[EMAIL]" in texts[1]
    assert event["detail"] == {"note": "customer gave card [CARD]", "n": 2}
    db = sqlite3.connect(db_path)
    dump = "\n".join(db.iterdump())
    assert not any(secret in dump for secret in PII)


def test_failing_redactor_stores_a_placeholder_never_the_text(db_path, caplog):
    def broken(_):
        raise RuntimeError("rule bug")

    with ConversationStore(db_path, redact=broken) as s:
        s.add_turn("s", "customer", PII_TEXT)
        assert s.turns("s")[0]["text"] == REDACTION_FAILED
    with ConversationStore(db_path, redact=lambda _: None) as s:
        s.add_turn("s", "customer", PII_TEXT)
        assert s.turns("s")[-1]["text"] == REDACTION_FAILED
    assert b"anna.schmidt" not in raw_bytes(db_path)
    assert "anna.schmidt" not in caplog.text  # the log says what failed, not the text


# ---------------------------------------------------------------------------------------- retention, wipe


def test_retention_purges_on_open_and_on_demand(db_path):
    with ConversationStore(db_path, retention_days=None, redact=identity) as s:
        s.start_session("old", ts=T0 - 40 * DAY)
        s.add_turn("old", "customer", "old turn", ts=T0 - 40 * DAY)
        s.add_event("old", "handoff", ts=T0 - 40 * DAY)
        s.start_session("mid", ts=T0 - 10 * DAY)
        s.add_turn("mid", "customer", "mid turn", ts=T0 - 10 * DAY)
        s.start_session("new", ts=T0)
        s.add_turn("new", "customer", "new turn", ts=T0)
        s.add_event(None, "restart", ts=T0 - 31 * DAY)
    with ConversationStore(db_path, retention_days=30, redact=identity, clock=lambda: T0) as s:
        assert [x["id"] for x in s.sessions()] == ["mid", "new"]  # purged on open
        assert s.counts() == {"sessions": 2, "turns": 2, "events": 0, "media": 0}
        assert s.purge_expired() == 0
        assert s.purge_expired(now=T0 + 25 * DAY) == 1
        assert [x["id"] for x in s.sessions()] == ["new"]
        assert s.integrity_check() == "ok"
    assert b"old turn" not in raw_bytes(db_path) and b"mid turn" not in raw_bytes(db_path)


def test_retention_off_keeps_everything(db_path):
    with ConversationStore(db_path, retention_days=None, redact=identity) as s:
        s.add_turn("old", "customer", "x", ts=T0 - 4000 * DAY)
        assert s.purge_expired(now=T0) == 0 and s.counts()["turns"] == 1


def test_wipe_leaves_no_trace(db_path, tmp_path):
    marker = "zebra-crossing-marker-7731"
    with ConversationStore(db_path, redact=identity, store_media=True) as s:
        s.media_dir.mkdir(parents=True)
        inside = s.media_dir / "s1-1.wav"
        inside.write_bytes(b"RIFF")
        outside = tmp_path / "keep.wav"
        outside.write_bytes(b"RIFF")
        for i in range(50):
            s.add_turn("s1", "customer", f"{marker} {i}")
        s.add_media("s1", "audio", inside)
        s.add_media("s1", "audio", outside)
        assert marker.encode() in raw_bytes(db_path)
        s.wipe()
        assert s.counts() == {"sessions": 0, "turns": 0, "events": 0, "media": 0}
        assert s.integrity_check() == "ok"
        assert marker.encode() not in raw_bytes(db_path)
        assert not inside.exists() and outside.exists()
        s.add_turn("s2", "customer", "after the wipe")  # still usable
    assert marker.encode() not in raw_bytes(db_path)


def test_run_wipe(db_path, capsys):
    assert run_wipe(db_path) == 0 and "nothing to wipe" in capsys.readouterr().out
    with ConversationStore(db_path, redact=identity) as s:
        s.add_turn("s", "customer", "x")
    assert run_wipe(db_path) == 0
    assert "1 sessions, 1 turns" in capsys.readouterr().out
    with ConversationStore(db_path, redact=identity) as s:
        assert s.counts()["turns"] == 0


def test_media_is_not_recorded_unless_enabled(store):
    assert store.add_media("s", "audio", store.media_dir / "x.wav") is None
    assert store.counts()["media"] == 0


def test_readonly_open(db_path):
    with pytest.raises(ConfigError, match="no conversation store"):
        ConversationStore(db_path, readonly=True)
    with ConversationStore(db_path, redact=identity) as w:
        w.add_turn("s", "customer", "x")
        with ConversationStore(db_path, readonly=True) as r:  # alongside a writer, as the report runs
            assert r.counts()["turns"] == 1
            with pytest.raises(StoreError, match="read-only"):
                r.add_turn("s", "customer", "y")


# -------------------------------------------------------------------------------------------- durability

_WRITER = r"""
import sys
from runtime.store import ConversationStore
s = ConversationStore(sys.argv[1], redact=lambda t: t)
i = 0
while True:
    tid = s.add_turn(f"s{i % 3}", "customer" if i % 2 else "kiosk", f"turn {i}", latency_ms=i)
    print(tid, i, flush=True)
    i += 1
"""


@pytest.mark.parametrize("kill_after", [5, 80, 400])
def test_every_returned_turn_survives_sigkill(db_path, kill_after):
    db_path.parent.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db_path)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    returned: dict[int, int] = {}
    try:
        for line in proc.stdout:
            tid, i = map(int, line.split())
            returned[tid] = i
            if len(returned) >= kill_after:
                os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the writer is inside its next add_turn
                break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(returned) >= kill_after
    with ConversationStore(db_path, redact=identity) as s:
        assert s.integrity_check() == "ok"
        rows = dict(s._db.execute("SELECT id, text FROM turns").fetchall())
    for tid, i in returned.items():
        assert rows.get(tid) == f"turn {i}"
