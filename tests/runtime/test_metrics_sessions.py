import pytest

from runtime.errors import InputError
from runtime.metrics import Metrics
from runtime.sessions import SessionManager, check_session_id


def test_prometheus_text_format():
    m = Metrics()
    m.describe("x_seconds", "a latency")
    m.observe("x_seconds", 0.003, stage="understand")
    m.observe("x_seconds", 0.2, stage="understand")
    m.inc("turns_total", intent='say "hi"')
    m.set("active", 2)
    text = m.render()
    assert "# TYPE x_seconds histogram" in text
    assert 'x_seconds_bucket{stage="understand",le="0.005"} 1' in text
    assert 'x_seconds_bucket{stage="understand",le="+Inf"} 2' in text
    assert 'x_seconds_count{stage="understand"} 2' in text
    assert 'turns_total{intent="say \\"hi\\""} 1' in text
    assert "# TYPE active gauge" in text
    p = m.percentiles("x_seconds")["stage=understand"]
    assert p["p50"] in (3.0, 200.0) and p["n"] == 2


def test_sessions_expire_and_evict():
    t = [0.0]
    sm = SessionManager(idle_timeout_s=10, max_sessions=2, clock=lambda: t[0])
    a, created, _ = sm.touch("a")
    assert created
    sm.touch("b")
    t[0] = 5
    sm.touch("a")
    _, _, evicted = sm.touch("c")  # b is least recently active
    assert [s.id for s in evicted] == ["b"]
    t[0] = 14  # a and c were last active at t=5: not idle for 10 s yet
    assert sm.expired() == []
    t[0] = 16
    assert set(sm.expired()) == {"a", "c"}


def test_session_end_wipes_state():
    sm = SessionManager()
    st, _, _ = sm.touch("a")
    st.last_product = "oat-milk"
    st.pending = {"kind": "slot"}
    ended = sm.end("a")
    assert ended.last_product is None and ended.pending is None and ended.closed
    assert sm.get("a") is None


@pytest.mark.parametrize("sid", ["", "x" * 65, "a b", "../etc", None, 5, "é"])
def test_bad_session_ids(sid):
    with pytest.raises(InputError):
        check_session_id(sid)
