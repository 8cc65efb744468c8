"""Orders the kiosk can look up and cancel: the ``OrderSource`` interface and its SQLite implementation.

A real deployment puts the store's order system behind ``OrderSource`` (three methods); the kiosk ships
``SqliteOrderSource``, seeded with demo orders from ``data/kb/orders.csv``.

Order numbers are digits only, 6 to 15 of them, leading zeros significant (the styles in Bitext's data:
``113542617735902``, ``00004587345``, ``732201349959``). Invoice and bill references (``#12588``, ``INV-2023``)
are not order numbers: ``normalize_id`` returns ``None`` for them.

Cancelling: an order that is ``processing`` or ``ready_for_pickup`` can be cancelled; ``shipped``,
``delivered`` and ``cancelled`` ones cannot, and ``cancel`` raises ``OrderError`` whose message is a short
clause for the customer ("it has already shipped").

demo CSV columns: ``order_id,status,items,placed,updated,eta,total,currency``; ``items`` separated by ``|``;
dates are ISO (``2026-11-20``) or day offsets from the day the file is loaded (``-3``, ``0``, ``+2``), so a
demo kiosk always shows plausible dates; an empty ``eta`` means none.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from runtime.errors import ConfigError, StoreclerkError

log = logging.getLogger(__name__)

STATUSES = ("processing", "shipped", "delivered", "cancelled", "ready_for_pickup")
CANCELLABLE = frozenset({"processing", "ready_for_pickup"})
MIN_DIGITS, MAX_DIGITS = 6, 15
SCHEMA_VERSION = 1
_NOT_CANCELLABLE_WHY = {
    "shipped": "it has already shipped",
    "delivered": "it has already been delivered",
    "cancelled": "it is already cancelled",
}
CSV_COLUMNS = ("order_id", "status", "items", "placed", "updated", "eta", "total", "currency")


class OrderError(StoreclerkError):
    """An order that cannot be found or cancelled. ``str(exc)`` is a short clause for the customer; ``code``
    is ``order_not_found`` or ``order_not_cancellable``."""

    code = "order"


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    status: str  # one of STATUSES
    items: tuple[str, ...]
    placed: date
    updated: date
    eta: date | None = None
    total: float | None = None
    currency: str = "EUR"

    @property
    def cancellable(self) -> bool:
        return self.status in CANCELLABLE

    def as_card(self) -> dict[str, Any]:
        """The order card of docs/runtime.md."""
        return {
            "type": "order",
            "order_id": self.order_id,
            "status": self.status,
            "items": list(self.items),
            "updated": self.updated.isoformat(),
            "eta": self.eta.isoformat() if self.eta else None,
            "source": f"orders:{self.order_id}",
        }


@runtime_checkable
class OrderSource(Protocol):
    def get(self, order_id: str) -> Order | None:
        """The order with this (normalized) number, or None."""

    def cancel(self, order_id: str) -> Order:
        """Cancel and return the updated order; ``OrderError`` if it does not exist or cannot be cancelled."""

    def normalize_id(self, text: str) -> str | None:
        """The canonical order number in ``text``, or None."""


# ------------------------------------------------------------------------------------------- order numbers

_PREFIX_RE = re.compile(r"^\s*(?:(?:order|ord|number|num|no|nr|id)\b\.?\s*[:#]?\s*|#\s*)+", re.IGNORECASE)
_GROUPED_RE = re.compile(r"\d+(?:[ \-]\d+)*")
_RUN_RE = re.compile(r"(?<![\w+])#?(\d+)(?!\w)")


def normalize_id(text: Any) -> str | None:
    """The order number in ``text`` as a digit string (leading zeros kept), or None.

    ``text`` is either just the number, as a customer types it or an entity holds it (``"#732201349959"``,
    ``"order no. 1135 4261 7735 902"``, ``"00004587345."``), or a sentence holding exactly one run of 6 to 15
    digits (``"where is 00123842?"``). Anything else is None: letters inside (``INV-2023``), fewer than 6
    digits (``#12588``, a bill number), two different numbers, a date, a price, a phone written with ``+``.
    """
    if not isinstance(text, str) or len(text) > 1000:
        return None
    core = _PREFIX_RE.sub("", text).strip().rstrip(".?!,;")
    if _GROUPED_RE.fullmatch(core):
        digits = re.sub(r"\D", "", core)
        return digits if MIN_DIGITS <= len(digits) <= MAX_DIGITS else None
    found = set()
    for m in _RUN_RE.finditer(text):
        s, e = m.span(1)
        before, after = text[s - 2 : s], text[e : e + 2]
        # part of a grouped number, a decimal, a date or a reference: "415-555-0132", "12.50", "INV-2023887"
        if (len(before) == 2 and before[1] in "-./," and before[0].isalnum()) or (
            len(after) == 2 and after[0] in "-./," and after[1].isalnum()
        ):
            continue
        if MIN_DIGITS <= e - s <= MAX_DIGITS:
            found.add(m.group(1))
    return found.pop() if len(found) == 1 else None


# --------------------------------------------------------------------------------------------------- SQLite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id  TEXT PRIMARY KEY,
    status    TEXT NOT NULL CHECK (status IN ('processing', 'shipped', 'delivered', 'cancelled', 'ready_for_pickup')),
    items     TEXT NOT NULL,
    placed    TEXT NOT NULL,
    updated   TEXT NOT NULL,
    eta       TEXT,
    total     REAL,
    currency  TEXT NOT NULL DEFAULT 'EUR'
)
"""


class SqliteOrderSource:
    """Orders in an SQLite file (``":memory:"`` for a throwaway one). Safe to call from several threads: one
    lock serializes every call. ``today`` gives the date stamped on a cancellation (tests inject one)."""

    def __init__(self, path: str | Path, *, today: Callable[[], date] = date.today) -> None:
        self.path = path if str(path) == ":memory:" else Path(path).expanduser()
        self._today = today
        self._lock = threading.RLock()
        try:
            if isinstance(self.path, Path):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                self._db.close()
                raise ConfigError(f"the order database {self.path} has schema version {version}, written by a newer "
                                  f"storeclerk (this one knows {SCHEMA_VERSION}); the file was not changed")
            if str(self.path) != ":memory:":
                self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")  # a cancellation the customer was told about stays done
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"cannot open the order database {self.path}: {exc}. The file was not changed; move it "
                              "aside and the demo orders are seeded again.") from exc
        except OSError as exc:
            raise ConfigError(f"cannot create the order database {self.path}: {exc}") from exc

    # ---- OrderSource --------------------------------------------------------------------------------------

    def normalize_id(self, text: str) -> str | None:
        return normalize_id(text)

    def get(self, order_id: str) -> Order | None:
        """The order with this number. A number typed without its leading zeros (``4587345`` for
        ``00004587345``) finds the order when exactly one matches."""
        oid = normalize_id(order_id)
        if oid is None:
            return None
        with self._lock:
            row = self._db.execute("SELECT * FROM orders WHERE order_id = ?", (oid,)).fetchone()
            if row is None:
                rows = self._db.execute("SELECT * FROM orders WHERE ltrim(order_id, '0') = ?", (oid.lstrip("0"),)).fetchall()
                row = rows[0] if len(rows) == 1 else None
        return _order(row) if row else None

    def cancel(self, order_id: str) -> Order:
        oid = normalize_id(order_id)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                order = self.get(oid) if oid else None
                if order is None:
                    raise OrderError("there is no order with that number", code="order_not_found")
                if not order.cancellable:
                    why = _NOT_CANCELLABLE_WHY.get(order.status, f"its status is {order.status}")
                    raise OrderError(why, code="order_not_cancellable")
                done = replace(order, status="cancelled", updated=self._today(), eta=None)
                self._db.execute("UPDATE orders SET status = ?, updated = ?, eta = NULL WHERE order_id = ?",
                                 (done.status, done.updated.isoformat(), done.order_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        log.info("order %s cancelled", done.order_id)
        return done

    # ---- demo data -----------------------------------------------------------------------------------------

    def all(self) -> list[Order]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM orders ORDER BY placed DESC, order_id").fetchall()
        return [_order(r) for r in rows]

    def put(self, order: Order) -> None:
        """Insert or replace one order."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (order.order_id, order.status, json.dumps(list(order.items)), order.placed.isoformat(),
                 order.updated.isoformat(), order.eta.isoformat() if order.eta else None, order.total, order.currency),
            )

    def seed_from_csv(self, csv_path: str | Path | None = None, *, replace_existing: bool = False) -> int:
        """Load demo orders (default ``data_dir()/kb/orders.csv``); returns how many were added. Orders already
        in the database are kept as they are (a cancellation survives a restart) unless ``replace_existing``.
        A malformed row raises ``ConfigError`` naming the file and line; nothing is loaded then."""
        if csv_path is None:
            from runtime.paths import data_dir

            csv_path = data_dir() / "kb" / "orders.csv"
        orders = read_orders_csv(csv_path, self._today())
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                known = {r[0] for r in self._db.execute("SELECT order_id FROM orders")}
                added = 0
                for o in orders:
                    if o.order_id in known and not replace_existing:
                        continue
                    self.put(o)
                    added += o.order_id not in known
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return added

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteOrderSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_orders_csv(csv_path: str | Path, today: date) -> list[Order]:
    """Parse a demo-orders CSV (columns in ``CSV_COLUMNS``); ``ConfigError(file:line: problem)`` on a bad row."""
    path = Path(csv_path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError(f"{path}:1: missing column(s) {', '.join(missing)}")
            out: list[Order] = []
            seen: set[str] = set()
            for row in reader:
                where = f"{path}:{reader.line_num}"
                try:
                    order = _order_from_csv(row, today)
                except (ValueError, TypeError) as exc:
                    raise ConfigError(f"{where}: {exc}") from None
                if order.order_id in seen:
                    raise ConfigError(f"{where}: order {order.order_id} appears twice")
                seen.add(order.order_id)
                out.append(order)
    except OSError as exc:
        raise ConfigError(f"cannot read demo orders {path}: {exc}") from exc
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable CSV file: {exc}") from exc
    return out


def _order_from_csv(row: dict[str, str | None], today: date) -> Order:
    def cell(name: str) -> str:
        return (row.get(name) or "").strip()

    raw_id = cell("order_id")
    if not (raw_id.isdigit() and MIN_DIGITS <= len(raw_id) <= MAX_DIGITS):
        raise ValueError(f"order_id {raw_id!r} must be {MIN_DIGITS} to {MAX_DIGITS} digits")
    status = cell("status")
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    items = tuple(i.strip() for i in cell("items").split("|") if i.strip())
    if not items:
        raise ValueError("items is empty")
    total = cell("total")
    return Order(
        order_id=raw_id,
        status=status,
        items=items,
        placed=_csv_date(cell("placed"), today, "placed"),
        updated=_csv_date(cell("updated"), today, "updated"),
        eta=_csv_date(cell("eta"), today, "eta") if cell("eta") else None,
        total=float(total) if total else None,
        currency=cell("currency") or "EUR",
    )


def _csv_date(value: str, today: date, name: str) -> date:
    if re.fullmatch(r"[+-]?\d{1,4}", value):
        return today + timedelta(days=int(value))
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name} {value!r} is neither an ISO date nor a day offset like -3 or +2") from None


def _order(row: tuple) -> Order:
    oid, status, items, placed, updated, eta, total, currency = row
    return Order(oid, status, tuple(json.loads(items)), date.fromisoformat(placed), date.fromisoformat(updated),
                 date.fromisoformat(eta) if eta else None, total, currency)
