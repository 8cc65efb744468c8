"""Multi-turn dialogue scenarios written as YAML (tests/scenarios/*.yml), run through the real kiosk: the
default bundle, the demo store's KB and orders, a real conversation store in a temp dir."""

import asyncio
import re
from pathlib import Path

import pytest
import yaml

SCENARIOS = sorted((Path(__file__).resolve().parents[1] / "scenarios").glob("*.yml"))
KNOWN = {"intent", "card", "reply_contains", "reply_matches", "handoff", "quick_reply", "source_prefix", "session_ends"}


@pytest.fixture(scope="module")
def kiosk_parts(tmp_path_factory):
    from runtime.app import build
    from runtime.config import load_config

    parts = build(load_config(None, {"state_dir": str(tmp_path_factory.mktemp("state")), "kb.watch": False}))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(parts.kiosk.start())
    yield parts, loop
    loop.run_until_complete(parts.kiosk.stop())
    loop.close()


def check(expect: dict, reply, kiosk, sid: str, where: str) -> None:
    assert set(expect) <= KNOWN, f"{where}: unknown expectation {set(expect) - KNOWN}"
    d = reply.as_dict()
    ctx = f"{where}: got {d['intent']} / {d['reply']!r} / cards {[c['type'] for c in d['cards']]}"
    if "intent" in expect:
        assert d["intent"] == expect["intent"], ctx
    if "card" in expect:
        assert any(c["type"] == expect["card"] for c in d["cards"]), ctx
    if "reply_contains" in expect:
        assert expect["reply_contains"].lower() in d["reply"].lower(), ctx
    if "reply_matches" in expect:
        assert re.search(expect["reply_matches"], d["reply"]), ctx
    if "handoff" in expect:
        assert d["handoff"] is expect["handoff"], ctx
    if "quick_reply" in expect:
        assert any(q["label"] == expect["quick_reply"] for q in d["quick_replies"]), ctx
    if "source_prefix" in expect:
        assert any(str(c.get("source") or "").startswith(expect["source_prefix"]) for c in d["cards"]), ctx
    if "session_ends" in expect:
        assert reply.end_session is expect["session_ends"], ctx


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(kiosk_parts, path):
    parts, loop = kiosk_parts
    spec = yaml.safe_load(path.read_text())
    sid = f"scn-{path.stem}"
    for i, turn in enumerate(spec["turns"], 1):
        reply = loop.run_until_complete(parts.kiosk.turn(sid, turn["say"]))
        check(turn.get("expect", {}), reply, parts.kiosk, sid, f"{path.name} turn {i} ({turn['say']!r})")
    # every turn (customer + kiosk) was committed to the store
    rows = parts.kiosk.store.turns(sid)
    assert len(rows) == 2 * len(spec["turns"])
