"""The HTML report: numbers from a synthetic store, one self-contained and accessible file, empty periods."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from html.parser import HTMLParser

import numpy as np
import pytest

from runtime.errors import ConfigError
from runtime.report import NO_DATA, build_report, collect, percentile, run_report
from runtime.store import ConversationStore

UTC = timezone.utc
T = datetime(2026, 11, 16, tzinfo=UTC).timestamp()  # a Monday, 00:00 UTC
H = 3600.0
SECRET = "customer-secret-text"
VOID = {"meta", "br", "img", "input", "link", "hr", "rect", "line", "path", "circle"}

# session -> (hour offset, [(intent, out_of_scope, latency_ms)], handoff)
PLAN = {
    "s0": (9.0, [("find_product", False, 10.0), ("product_price", False, 12.0)], False),
    "s1": (9.5, [("find_product", False, 8.0)], False),
    "s2": (10.2, [("store_hours", False, 6.0), ("oos", True, 30.0)], True),
    "s3": (14.0, [("find_product", False, 9.0), ("track_order", False, 40.0), ("find_product", False, 11.0)], False),
    "s4": (33.0, [("oos", True, 25.0), ("contact_human_agent", False, 7.0)], True),  # the next day, 09:00
    "s5": (34.0, [("store_hours", False, 5.0)], False),
}


def fill(path, redact=lambda s: s):
    with ConversationStore(path, retention_days=None, redact=redact) as s:
        for sid, (hour, turns, handoff) in PLAN.items():
            t = T + hour * H
            s.start_session(sid, ts=t)
            for i, (intent, oos, lat) in enumerate(turns):
                last = i == len(turns) - 1
                ts = t + 20 * i
                s.add_turn(sid, "customer", f"{SECRET} {i}", intent=intent, confidence=0.9, out_of_scope=oos,
                           handoff=handoff and last, latency_ms=lat, stage_ms={"understand": lat / 2, "decide": 1.0},
                           ts=ts)
                s.add_turn(sid, "kiosk", f"reply {i}", intent=intent, handoff=handoff and last, ts=ts + 1)
            s.end_session(sid, "done", ts=t + 20 * len(turns) + 10)


class Checker(HTMLParser):
    """Parses the document and checks that non-void tags are balanced."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.tags, self.ids, self.attrs = [], [], [], set(), []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.attrs.append((tag, a))
        if "id" in a:
            self.ids.add(a["id"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.attrs.append((tag, dict(attrs)))
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


def parse(doc: str) -> Checker:
    c = Checker()
    c.feed(doc)
    c.close()
    assert not c.errors, c.errors[:5]
    assert c.stack == [], c.stack
    return c


def check_self_contained(doc: str) -> None:
    low = doc.lower()
    assert "http://" not in low and "https://" not in low
    assert "<script" not in low and "<link" not in low and "<img" not in low and "@import" not in low
    assert not re.search(r"\s(src|href)\s*=", low)
    assert "url(" not in low


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 101):
        xs = list(rng.exponential(10, n))
        for q in (50, 90, 99):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert percentile([], 50) is None


def test_collect_numbers(tmp_path):
    db = tmp_path / "c.db"
    fill(db)
    with ConversationStore(db, readonly=True) as s:
        d = collect(s, tz=UTC, now=T + 48 * H)
    assert d.sessions == 6 and d.turns == 2 * 11 and d.customer_turns == 11
    assert d.handoff_sessions == 2 and d.handoff_rate == pytest.approx(2 / 6)
    assert d.understood == 11 and d.out_of_scope == 2 and d.out_of_scope_rate == pytest.approx(2 / 11)
    assert d.intents[0] == ("find_product", 4) and dict(d.intents)["store_hours"] == 2 and "oos" not in dict(d.intents)
    assert d.mean_turns_per_session == pytest.approx(11 / 6)
    lats = [lat for _, turns, _ in PLAN.values() for _, _, lat in turns]
    assert d.latency.n == 11
    assert d.latency.p50 == pytest.approx(float(np.percentile(lats, 50)))
    assert d.latency.p99 == pytest.approx(float(np.percentile(lats, 99)))
    stages = {s.name: s for s in d.stages}
    assert stages["understand"].p90 == pytest.approx(float(np.percentile([x / 2 for x in lats], 90)))
    assert d.timeline_unit == "hour"
    assert d.hour_of_day[9] == 2 + 1 + 2 and d.hour_of_day[14] == 3 and d.hour_of_day[10] == 2 + 1
    assert sum(v for _, v in d.timeline) == 11
    assert [r.day for r in d.days] == ["2026-11-16", "2026-11-17"]
    assert [r.sessions for r in d.days] == [4, 2]


def test_period_filter(tmp_path):
    db = tmp_path / "c.db"
    fill(db)
    with ConversationStore(db, readonly=True) as s:
        d = collect(s, since=T + 24 * H, until=datetime(2026, 11, 18, tzinfo=UTC), tz=UTC)
    assert d.sessions == 2 and d.customer_turns == 3 and d.handoff_sessions == 1


def test_timeline_granularity(tmp_path):
    db = tmp_path / "c.db"
    fill(db)
    with ConversationStore(db, readonly=True) as s:
        assert collect(s, since=T, until=T + 10 * 86400, tz=UTC).timeline_unit == "day"
        weekly = collect(s, since=T - 200 * 86400, until=T + 3 * 86400, tz=UTC)
    assert weekly.timeline_unit == "week" and sum(v for _, v in weekly.timeline) == 11


def test_report_file(tmp_path):
    db = tmp_path / "state" / "c.db"
    fill(db)
    out = build_report(db, tmp_path / "out" / "report.html", since=T, until=T + 48 * H, tz=UTC)
    assert out.is_file() and out.is_absolute()
    doc = out.read_text(encoding="utf-8")
    c = parse(doc)
    check_self_contained(doc)
    assert SECRET not in doc and "reply 0" not in doc  # counts only, never conversation text
    for needle in ("find_product", "store_hours", "contact_human_agent", "33.3%", "18.2%", "2 of 6 sessions", "Customer turns per hour",
                   "by hour of day", "p50", "p90", "p99", "understand", "decide", "2026-11-16", "2026-11-17"):
        assert needle in doc, needle
    lats = [lat for _, turns, _ in PLAN.values() for _, _, lat in turns]
    assert f"{np.percentile(lats, 50):.1f}" in doc and f"{np.percentile(lats, 99):.1f}" in doc
    svgs = [a for tag, a in c.attrs if tag == "svg"]
    assert len(svgs) >= 4
    for a in svgs:
        assert a.get("role") == "img"
        assert all(i in c.ids for i in a["aria-labelledby"].split())
    assert c.tags.count("title") >= 1 + len(svgs)
    assert "<table" in doc and "<caption>" in doc and 'scope="col"' in doc
    assert NO_DATA not in doc


def test_report_is_html_escaped(tmp_path):
    db = tmp_path / "c.db"
    with ConversationStore(db, retention_days=None, redact=str) as s:
        s.add_turn("x", "customer", "hi", intent="<script>alert(1)</script>", latency_ms=5, ts=T)
    doc = build_report(db, tmp_path / "r.html", tz=UTC).read_text(encoding="utf-8")
    parse(doc)
    assert "<script>" not in doc and "&lt;script&gt;" in doc


def test_empty_store(tmp_path):
    db = tmp_path / "c.db"
    ConversationStore(db, redact=str).close()
    doc = build_report(db, tmp_path / "r.html", since=T, until=T + H).read_text(encoding="utf-8")
    parse(doc)
    check_self_contained(doc)
    assert NO_DATA in doc


def test_missing_store_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no conversation store"):
        build_report(tmp_path / "nope.db", tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_run_report(tmp_path, capsys):
    db = tmp_path / "c.db"
    with ConversationStore(db, redact=str) as s:  # recent turns: inside the last 7 days
        s.add_turn("a", "customer", "hello", intent="greet", latency_ms=4.0)
    out = tmp_path / "r.html"
    assert run_report(db, out, 7) == 0
    assert str(out) in capsys.readouterr().out
    doc = out.read_text(encoding="utf-8")
    assert "greet" in doc and NO_DATA not in doc
    with pytest.raises(ConfigError, match="days"):
        run_report(db, out, 0)
