"""Orders: order-number normalization, the SQLite source, the demo CSV, cancellation rules, the order card."""

from __future__ import annotations

import csv
import threading
from datetime import date
from pathlib import Path

import pytest

from runtime.errors import ConfigError
from runtime.orders import (
    CSV_COLUMNS,
    STATUSES,
    Order,
    OrderError,
    OrderSource,
    SqliteOrderSource,
    normalize_id,
    read_orders_csv,
)

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "kb" / "orders.csv"
TODAY = date(2026, 11, 20)


@pytest.fixture
def orders(tmp_path):
    src = SqliteOrderSource(tmp_path / "orders.sqlite3", today=lambda: TODAY)
    src.seed_from_csv(DEMO)
    yield src
    src.close()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("113542617735902", "113542617735902"),
        ("00004587345", "00004587345"),
        ("#732201349959", "732201349959"),
        ("# 732201349959", "732201349959"),
        ("Order #370795561790", "370795561790"),
        ("order no. 1135 4261 7735 902", "113542617735902"),
        ("0000-4587-345", "00004587345"),
        ("00123842.", "00123842"),
        ("where is my order 00123842?", "00123842"),
        ("can you cancel 3707955617 please", "3707955617"),
        ("#12588", None),  # a bill number in Bitext's style, not an order
        ("bill #00108", None),
        ("INV-2023887", None),
        ("ABC1234567", None),
        ("12345", None),
        ("1234567890123456", None),  # 16 digits: a card number, not an order
        ("order 113542617735902 or 732201349959", None),
        ("call +14155550132", None),
        ("on 2026-11-20 at 415-555-0132", None),
        ("it cost 1234567.50", None),
        ("", None),
        (None, None),
        (113542617735902, None),
        ("9" * 5000, None),
    ],
)
def test_normalize_id(text, expected):
    assert normalize_id(text) == expected


def test_demo_csv_is_valid_and_varied():
    rows = list(csv.DictReader(open(DEMO, newline="", encoding="utf-8")))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    orders = read_orders_csv(DEMO, TODAY)
    assert 10 <= len(orders) <= 20
    assert {o.status for o in orders} == set(STATUSES)
    lengths = {len(o.order_id) for o in orders}
    assert {15, 11} <= lengths  # Bitext's styles: 113542617735902, 00004587345
    assert any(o.order_id.startswith("0") for o in orders)
    for o in orders:
        assert normalize_id(o.order_id) == o.order_id and o.items
        assert o.placed <= o.updated <= TODAY
        if o.status in ("processing", "shipped"):
            assert o.eta is not None and o.eta >= TODAY


def test_source_satisfies_the_protocol(orders):
    assert isinstance(orders, OrderSource)


def test_get_and_card(orders):
    o = orders.get("113542617735902")
    assert isinstance(o, Order) and o.status == "shipped" and o.items[0] == "2 x Oatly Oat Milk"
    assert o.as_card() == {
        "type": "order",
        "order_id": "113542617735902",
        "status": "shipped",
        "items": list(o.items),
        "updated": "2026-11-19",
        "eta": "2026-11-22",
        "source": "orders:113542617735902",
    }
    delivered = orders.get("00123842").as_card()
    assert delivered["eta"] is None and delivered["status"] == "delivered"
    assert orders.get("#113542617735902") == o
    assert orders.get("999999999") is None
    assert orders.get("#12588") is None
    assert orders.get("") is None


def test_leading_zeros_may_be_dropped_when_unambiguous(orders):
    assert orders.get("4587345").order_id == "00004587345"
    orders.put(Order("0004587345", "processing", ("x",), TODAY, TODAY))
    assert orders.get("4587345") is None  # two orders match: ask again rather than guess


@pytest.mark.parametrize("oid", ["00004587345", "732201349959"])  # processing, ready_for_pickup
def test_cancel(orders, oid):
    before = orders.get(oid)
    assert before.cancellable
    done = orders.cancel(oid)
    assert done.status == "cancelled" and done.updated == TODAY and done.eta is None and not done.cancellable
    assert orders.get(oid) == done
    assert done.as_card()["status"] == "cancelled"


@pytest.mark.parametrize(
    "oid, why",
    [("113542617735902", "already shipped"), ("00123842", "already been delivered"), ("370795561790", "already cancelled")],
)
def test_cancel_refused(orders, oid, why):
    before = orders.get(oid)
    with pytest.raises(OrderError, match=why) as err:
        orders.cancel(oid)
    assert err.value.code == "order_not_cancellable"
    assert orders.get(oid) == before


def test_cancel_unknown(orders):
    for oid in ("999999999", "#12588", "nonsense"):
        with pytest.raises(OrderError) as err:
            orders.cancel(oid)
        assert err.value.code == "order_not_found"


def test_cancellation_survives_a_restart_and_a_reseed(tmp_path):
    path = tmp_path / "orders.sqlite3"
    with SqliteOrderSource(path, today=lambda: TODAY) as src:
        assert src.seed_from_csv(DEMO) == len(read_orders_csv(DEMO, TODAY))
        src.cancel("00004587345")
    with SqliteOrderSource(path, today=lambda: TODAY) as src:
        assert src.seed_from_csv(DEMO) == 0
        assert src.get("00004587345").status == "cancelled"
        src.seed_from_csv(DEMO, replace_existing=True)
        assert src.get("00004587345").status == "processing"


def test_relative_and_absolute_dates(tmp_path):
    f = tmp_path / "o.csv"
    f.write_text(",".join(CSV_COLUMNS) + "\n123456789,shipped,1 x Kiwi,2026-01-02,-1,+3,1.5,EUR\n", encoding="utf-8")
    (o,) = read_orders_csv(f, TODAY)
    assert (o.placed, o.updated, o.eta, o.total) == (date(2026, 1, 2), date(2026, 11, 19), date(2026, 11, 23), 1.5)


@pytest.mark.parametrize(
    "line, problem",
    [
        ("#12588,shipped,1 x Kiwi,-1,-1,,1,EUR", "order_id"),
        ("123456789,lost,1 x Kiwi,-1,-1,,1,EUR", "status"),
        ("123456789,shipped,,-1,-1,,1,EUR", "items"),
        ("123456789,shipped,1 x Kiwi,yesterday,-1,,1,EUR", "placed"),
        ("123456789,shipped,1 x Kiwi,-1,-1,,cheap,EUR", "cheap"),
    ],
)
def test_bad_csv_names_file_and_line(tmp_path, line, problem):
    f = tmp_path / "o.csv"
    f.write_text(",".join(CSV_COLUMNS) + "\n123456780,shipped,1 x Kiwi,-1,-1,,1,EUR\n" + line + "\n", encoding="utf-8")
    src = SqliteOrderSource(":memory:")
    with pytest.raises(ConfigError, match=f"o.csv:3: .*{problem}"):
        src.seed_from_csv(f)
    assert src.all() == []  # all or nothing


def test_missing_column(tmp_path):
    f = tmp_path / "o.csv"
    f.write_text("order_id,status\n123456789,shipped\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="missing column"):
        read_orders_csv(f, TODAY)


def test_not_a_database(tmp_path):
    f = tmp_path / "orders.sqlite3"
    f.write_bytes(b"garbage " * 200)
    with pytest.raises(ConfigError, match=str(f)):
        SqliteOrderSource(f)
    assert f.read_bytes() == b"garbage " * 200


def test_concurrent_cancel_only_one_wins(orders):
    results = []

    def go():
        try:
            results.append(orders.cancel("3707955617").status)
        except OrderError as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["cancelled"] + ["order_not_cancellable"] * 5
