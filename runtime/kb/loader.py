"""Loading and validating the knowledge base directory (``data/kb/`` by default).

    kb = KnowledgeBase.load(kb_dir)      # raises KBError listing every problem, each with file and line

The directory holds ``store.yml`` (the store: hours, services, aisles, vocabularies), ``faq.yml`` (answers),
``catalog.csv`` (products) and ``images/`` (product pictures). Other files (e.g. the demo ``orders.csv``,
which ``runtime/orders.py`` owns) are ignored here. The format is described in ``data/kb/README.md``.

Validation is strict because the kiosk reads these files unattended: a typo must stop a reload (the last
good KB keeps serving) and name the line, never turn into a wrong answer. Line numbers come from YAML node
marks (``yaml.compose``) and ``csv.reader.line_num``. Problems that cannot mislead a customer (an image no
product uses, an FAQ entry with no example questions) are warnings, not errors.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
import os
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from runtime.kb.model import (
    WEEKDAYS,
    FaqEntry,
    HoursException,
    KBError,
    KBIssue,
    Product,
    Service,
    StoreInfo,
)
from runtime.kb.text import key as name_key

log = logging.getLogger(__name__)

STORE_FILE, FAQ_FILE, CATALOG_FILE, IMAGES_DIR = "store.yml", "faq.yml", "catalog.csv", "images"
KB_FILES = (STORE_FILE, FAQ_FILE, CATALOG_FILE)

SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
UNITS = ("each", "kg", "litre", "pack")
DEFAULT_TAGS = ("vegan", "vegetarian", "lactose-free", "dairy-free", "gluten-free", "organic", "low-fat", "reduced-sugar")
DEFAULT_ALLERGENS = ("milk", "soy", "oats", "gluten", "eggs", "nuts", "peanuts", "sesame", "celery", "mustard", "fish",
                     "crustaceans", "molluscs", "sulphites", "lupin")
CATALOG_REQUIRED = ("fine_id", "coarse_id", "name", "display_name", "coarse_name", "aliases", "id", "price", "unit",
                    "aisle", "ean13", "image")
CATALOG_OPTIONAL = ("size", "tags", "allergens", "goes_with", "origin", "description")
STORE_KEYS = {"name": True, "address": True, "phone": True, "email": False, "website": False, "currency": True,
              "timezone": True, "hours": True, "exceptions": False, "aisles": True, "services": False,
              "staff_call": True, "dietary_tags": False, "allergens": False}
FAQ_KEYS = {"id": True, "title": True, "answer": True, "questions": False, "tags": False}
SERVICE_KEYS = {"id": True, "name": True, "description": False, "where": False, "hours": False}
IMAGE_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"))
MAX_IMAGE_BYTES = 2 * 1024 * 1024
MAX_ANSWER_CHARS = 600


# --------------------------------------------------------------------------------------- YAML with lines


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's base-60 numbers: ``9:30`` stays the text "9:30", not 570."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


class YMap(dict):
    """A YAML mapping with the (1-based) line of itself and of each key."""

    line: int = 0
    lines: dict


class YList(list):
    line: int = 0
    lines: list


class _Reader:
    """Collects problems for one KB directory; paths are shown relative to the working directory when they
    are under it (``data/kb/faq.yml``), else in full."""

    def __init__(self, kb_dir: Path) -> None:
        self.dir = kb_dir
        self.issues: list[KBIssue] = []
        self.warnings: list[KBIssue] = []

    def show(self, path: Path) -> str:
        try:
            return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd().resolve()) else str(path)
        except (ValueError, OSError):
            return str(path)

    def err(self, path: Path, line: int | None, msg: str) -> None:
        self.issues.append(KBIssue(self.show(path), line, msg))

    def warn(self, path: Path, line: int | None, msg: str) -> None:
        self.warnings.append(KBIssue(self.show(path), line, msg))

    def read_text(self, path: Path) -> str | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            self.err(path, None, "file is missing")
            return None
        except OSError as exc:
            self.err(path, None, f"cannot read the file: {exc.strerror or exc}")
            return None
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            self.err(path, line, f"not valid UTF-8 (byte {raw[exc.start]:#04x}); save the file as UTF-8")
            return None

    def read_yaml(self, path: Path) -> Any:
        text = self.read_text(path)
        if text is None:
            return None
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = " ".join(x for x in (exc.context, exc.problem) if x)
            self.err(path, mark.line + 1 if mark else None, f"YAML syntax error: {problem}")
            return None
        except yaml.YAMLError as exc:
            self.err(path, None, f"YAML syntax error: {exc}")
            return None
        finally:
            loader.dispose()
        if node is None:
            self.err(path, 1, "the file is empty")
            return None
        return self._value(path, loader, node)

    def _value(self, path: Path, loader: _Loader, node: yaml.Node) -> Any:
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out = YMap()
            out.line, out.lines = line, {}
            loader.flatten_mapping(node)
            for knode, vnode in node.value:
                k = self._value(path, loader, knode)
                if isinstance(k, (dict, list)):
                    self.err(path, knode.start_mark.line + 1, "a key must be plain text")
                    continue
                if k in out:
                    self.err(path, knode.start_mark.line + 1, f"duplicate key '{k}' (first at line {out.lines[k]})")
                    continue
                out[k] = self._value(path, loader, vnode)
                out.lines[k] = knode.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            seq = YList(self._value(path, loader, n) for n in node.value)
            seq.line, seq.lines = line, [n.start_mark.line + 1 for n in node.value]
            return seq
        try:
            return loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            self.err(path, line, f"cannot read the value {node.value!r}: {exc}")
            return None


def _line(m: Any, k: str | None = None) -> int | None:
    if k is not None and isinstance(m, YMap) and k in m.lines:
        return m.lines[k]
    return getattr(m, "line", None) or None


def _kind(v: Any) -> str:
    return {str: "text", int: "a number", float: "a number", bool: "yes/no", type(None): "empty"}.get(
        type(v), "a list" if isinstance(v, list) else "a mapping" if isinstance(v, dict) else type(v).__name__)


def _check_keys(r: _Reader, path: Path, m: YMap, known: Mapping[str, bool], what: str) -> None:
    for k in m:
        if k not in known:
            r.err(path, _line(m, k), f"{what}: unknown key '{k}' (known: {', '.join(known)})")
    for k, required in known.items():
        if required and k not in m:
            r.err(path, m.line, f"{what} has no '{k}'")


def _text(r: _Reader, path: Path, m: YMap, k: str, what: str, *, required: bool = True) -> str:
    if k not in m:
        return ""  # reported by _check_keys when required
    v = m[k]
    if isinstance(v, bool) or not isinstance(v, (str, int, float)) or (required and isinstance(v, str) and not v.strip()):
        r.err(path, _line(m, k), f"{what}: '{k}' must be non-empty text, not {_kind(v)}"
              + (" (quote it: yes/no/on/off are read as true/false)" if isinstance(v, bool) else ""))
        return ""
    return " ".join(str(v).split())


def _text_list(r: _Reader, path: Path, m: YMap, k: str, what: str) -> tuple[str, ...]:
    if k not in m or m[k] is None:
        return ()
    v = m[k]
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        r.err(path, _line(m, k), f"{what}: '{k}' must be a list of text, not {_kind(v)}")
        return ()
    out = []
    for i, item in enumerate(v):
        if not isinstance(item, (str, int, float)) or isinstance(item, bool) or not str(item).strip():
            ln = v.lines[i] if isinstance(v, YList) else _line(m, k)
            r.err(path, ln, f"{what}: item {i + 1} of '{k}' must be non-empty text, not {_kind(item)}")
            continue
        out.append(" ".join(str(item).split()))
    return tuple(out)


# ----------------------------------------------------------------------------------------------- hours

_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")


def parse_ranges(value: Any) -> tuple[tuple[int, int], ...]:
    """``"07:00-22:00"``, ``"08:00-12:00, 13:00-18:00"`` or ``"closed"`` -> ranges in minutes. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("write \"closed\" or a time range in quotes (yes/no/on/off are read as true/false)")
    if not isinstance(value, str):
        raise ValueError(f"expected text like \"07:00-22:00\" or \"closed\", got {_kind(value)}")
    s = value.strip().lower()
    if s == "closed":
        return ()
    out: list[tuple[int, int]] = []
    for part in s.split(","):
        bits = re.split(r"\s*(?:-|–|—|to)\s*", part.strip())
        if len(bits) != 2:
            raise ValueError(f"'{part.strip()}' is not a range like 07:00-22:00")
        mins = []
        for b in bits:
            t = _TIME.match(b)
            if not t or int(t.group(2)) > 59 or int(t.group(1)) > 24 or (int(t.group(1)) == 24 and int(t.group(2))):
                raise ValueError(f"'{b}' is not a time like 07:00 (24-hour clock)")
            mins.append(int(t.group(1)) * 60 + int(t.group(2)))
        a, b = mins
        if b <= a:
            raise ValueError(f"'{part.strip()}' closes before it opens (a range past midnight ends at 24:00)")
        if out and a < out[-1][1]:
            raise ValueError(f"'{part.strip()}' overlaps or precedes the range before it")
        out.append((a, b))
    return tuple(out)


def _parse_date(v: Any) -> tuple[int, int, int | None]:
    if isinstance(v, dt.datetime):
        v = v.date()
    if isinstance(v, dt.date):
        return v.month, v.day, v.year
    s = str(v).strip()
    m = re.match(r"^(?:(\d{4})-)?(\d{2})-(\d{2})$", s)
    if not m:
        raise ValueError(f"'{s}' is not a date: use \"MM-DD\" (every year) or \"YYYY-MM-DD\"")
    year = int(m.group(1)) if m.group(1) else None
    dt.date(year or 2024, int(m.group(2)), int(m.group(3)))  # 2024: a leap year, so 02-29 is allowed yearly
    return int(m.group(2)), int(m.group(3)), year


# ----------------------------------------------------------------------------------------------- store.yml


def _load_store(r: _Reader) -> StoreInfo | None:
    path = r.dir / STORE_FILE
    n0 = len(r.issues)
    m = r.read_yaml(path)
    if m is None:
        return None
    if not isinstance(m, YMap):
        r.err(path, getattr(m, "line", 1), f"must be a mapping of store settings (name:, hours:, …), not {_kind(m)}")
        return None
    _check_keys(r, path, m, STORE_KEYS, "store")
    t = {k: _text(r, path, m, k, "store", required=STORE_KEYS[k]) for k in
         ("name", "address", "phone", "email", "website", "currency", "timezone", "staff_call")}
    if t["currency"] and not re.match(r"^[A-Z]{3}$", t["currency"]):
        r.err(path, _line(m, "currency"), f"currency '{t['currency']}' must be a three-letter ISO code like EUR")
    if t["timezone"]:
        try:
            from zoneinfo import ZoneInfo, available_timezones

            ZoneInfo(t["timezone"])
        except Exception:
            if available_timezones():
                r.err(path, _line(m, "timezone"), f"unknown timezone '{t['timezone']}' (e.g. Europe/Berlin)")
            else:
                r.warn(path, _line(m, "timezone"), "no time-zone database on this machine: using the system's local time")
    hours: dict[int, tuple] = {}
    hm = m.get("hours")
    if "hours" in m and not isinstance(hm, YMap):
        r.err(path, _line(m, "hours"), f"hours must map each weekday to \"HH:MM-HH:MM\" or \"closed\", not {_kind(hm)}")
    elif isinstance(hm, YMap):
        for k in hm:
            if str(k).lower() not in WEEKDAYS:
                r.err(path, _line(hm, k), f"hours: '{k}' is not a weekday (monday … sunday)")
        for i, day in enumerate(WEEKDAYS):
            if day not in hm:
                r.err(path, hm.line, f"hours: '{day}' is missing (write \"closed\" for a closed day)")
                continue
            try:
                hours[i] = parse_ranges(hm[day])
            except ValueError as exc:
                r.err(path, _line(hm, day), f"hours: {day}: {exc}")
    exceptions: list[HoursException] = []
    ex = m.get("exceptions")
    if ex is not None and not isinstance(ex, YList):
        r.err(path, _line(m, "exceptions"), f"exceptions must be a list of {{date, hours, note}}, not {_kind(ex)}")
    elif isinstance(ex, YList):
        seen: dict[tuple, int] = {}
        for i, e in enumerate(ex):
            ln = ex.lines[i]
            if not isinstance(e, YMap):
                r.err(path, ln, f"exception {i + 1} must be a mapping with date, hours and note")
                continue
            _check_keys(r, path, e, {"date": True, "hours": True, "note": False}, f"exception {i + 1}")
            note = _text(r, path, e, "note", f"exception {i + 1}", required=False)
            try:
                month, day, year = _parse_date(e.get("date")) if "date" in e else (0, 0, None)
                ranges = parse_ranges(e.get("hours")) if "hours" in e else ()
            except ValueError as exc:
                r.err(path, ln, f"exception {i + 1}: {exc}")
                continue
            if not month:
                continue
            k = (month, day, year)
            if k in seen:
                r.err(path, ln, f"exception {i + 1}: the same date as the exception at line {seen[k]}")
            seen[k] = ln
            exceptions.append(HoursException(month, day, year, ranges, note))
    aisles: dict[str, str] = {}
    am = m.get("aisles")
    if "aisles" in m and not isinstance(am, YMap):
        r.err(path, _line(m, "aisles"), f"aisles must map an aisle number to its name (\"4\": Dairy), not {_kind(am)}")
    elif isinstance(am, YMap):
        for k, v in am.items():
            if not isinstance(v, str) or not v.strip():
                r.err(path, _line(am, k), f"aisles: aisle '{k}' needs a name")
            else:
                aisles[str(k).strip()] = v.strip()
    services = _load_services(r, path, m)
    vocab = {}
    for k, default in (("dietary_tags", DEFAULT_TAGS), ("allergens", DEFAULT_ALLERGENS)):
        items = _text_list(r, path, m, k, "store") if k in m else default
        for it in items:
            if not SLUG.match(it):
                r.err(path, _line(m, k), f"{k}: '{it}' must be lower-case words joined by hyphens")
        vocab[k] = tuple(items)
    if len(r.issues) > n0:
        return None
    return StoreInfo(name=t["name"], address=t["address"], phone=t["phone"], currency=t["currency"], timezone=t["timezone"],
                     hours=MappingProxyType(hours), exceptions=tuple(exceptions), aisles=MappingProxyType(aisles),
                     services=services, staff_call=t["staff_call"], email=t["email"], website=t["website"],
                     dietary_tags=vocab["dietary_tags"], allergens=vocab["allergens"])


def _load_services(r: _Reader, path: Path, m: YMap) -> tuple[Service, ...]:
    sv = m.get("services")
    if sv is None:
        return ()
    if not isinstance(sv, YList):
        r.err(path, _line(m, "services"), f"services must be a list of {{id, name, description}}, not {_kind(sv)}")
        return ()
    out, seen = [], {}
    for i, s in enumerate(sv):
        ln = sv.lines[i]
        if not isinstance(s, YMap):
            r.err(path, ln, f"service {i + 1} must be a mapping with id and name")
            continue
        what = f"service '{s.get('id')}'" if isinstance(s.get("id"), str) else f"service {i + 1}"
        _check_keys(r, path, s, SERVICE_KEYS, what)
        sid = _text(r, path, s, "id", what)
        if sid and not SLUG.match(sid):
            r.err(path, _line(s, "id"), f"{what}: id must be lower-case words joined by hyphens")
        if sid in seen:
            r.err(path, _line(s, "id"), f"duplicate service id '{sid}' (first at line {seen[sid]})")
        seen[sid] = _line(s, "id")
        hours: tuple = ()
        if "hours" in s:
            try:
                hours = parse_ranges(s["hours"])
            except ValueError as exc:
                r.err(path, _line(s, "hours"), f"{what}: hours: {exc}")
        out.append(Service(sid, _text(r, path, s, "name", what), _text(r, path, s, "description", what, required=False),
                           _text(r, path, s, "where", what, required=False), hours))
    return tuple(out)


# ------------------------------------------------------------------------------------------------- faq.yml


def _load_faq(r: _Reader) -> tuple[FaqEntry, ...]:
    path = r.dir / FAQ_FILE
    data = r.read_yaml(path)
    if data is None:
        return ()
    if not isinstance(data, YList):
        r.err(path, getattr(data, "line", 1), f"must be a list of entries (- id: …), not {_kind(data)}")
        return ()
    out: list[FaqEntry] = []
    seen: dict[str, int] = {}
    for i, e in enumerate(data):
        ln = data.lines[i]
        if not isinstance(e, YMap):
            r.err(path, ln, f"entry {i + 1} must be a mapping with id, title and answer, not {_kind(e)}")
            continue
        fid = e.get("id")
        what = f"entry '{fid}'" if isinstance(fid, str) and fid else f"entry {i + 1}"
        n0 = len(r.issues)
        _check_keys(r, path, e, FAQ_KEYS, what)
        fid = _text(r, path, e, "id", what)
        if fid and not SLUG.match(fid):
            r.err(path, _line(e, "id"), f"{what}: id must be lower-case words joined by hyphens (like 'opening-hours')")
        if fid and fid in seen:
            r.err(path, _line(e, "id"), f"duplicate id '{fid}' (first at line {seen[fid]})")
        title = _text(r, path, e, "title", what)
        answer = _text(r, path, e, "answer", what)
        if len(answer) > MAX_ANSWER_CHARS:
            r.err(path, _line(e, "answer"), f"{what}: the answer is {len(answer)} characters; keep it under "
                  f"{MAX_ANSWER_CHARS} (1-3 sentences are read aloud)")
        questions = _text_list(r, path, e, "questions", what)
        tags = _text_list(r, path, e, "tags", what)
        if len(r.issues) > n0:
            if fid:
                seen.setdefault(fid, ln)
            continue
        if not questions:
            r.warn(path, ln, f"{what} has no 'questions': example phrasings help the kiosk find it")
        seen[fid] = ln
        out.append(FaqEntry(fid, title, answer, questions, tags, source=f"{FAQ_FILE}:{ln}"))
    if not data:
        r.err(path, data.line or 1, "has no entries")
    return tuple(out)


# --------------------------------------------------------------------------------------------- catalog.csv


def ean13_check_digit(body: str) -> int:
    """The GS1 check digit for the first 12 digits of an EAN-13."""
    s = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body[:12]))
    return (10 - s % 10) % 10


def valid_ean13(code: str) -> bool:
    return bool(re.fullmatch(r"\d{13}", code)) and ean13_check_digit(code) == int(code[12])


def _split(v: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in (v or "").split("|") if x.strip())


def _load_catalog(r: _Reader, store: StoreInfo | None) -> tuple[Product, ...]:
    path = r.dir / CATALOG_FILE
    text = r.read_text(path)
    if text is None:
        return ()
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        r.err(path, 1, "the file is empty (the first line must be the column names)")
        return ()
    except csv.Error as exc:
        r.err(path, 1, f"CSV error: {exc}")
        return ()
    header = [h.strip() for h in header]
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        r.err(path, 1, "columns must be separated by commas (this file uses ';' or tabs)")
        return ()
    known = CATALOG_REQUIRED + CATALOG_OPTIONAL
    bad_header = False
    for i, h in enumerate(header):
        if h not in known:
            r.err(path, 1, f"unknown column '{h}' (known: {', '.join(known)})")
            bad_header = True
        elif h in header[:i]:
            r.err(path, 1, f"column '{h}' appears twice")
            bad_header = True
    for h in CATALOG_REQUIRED:
        if h not in header:
            r.err(path, 1, f"required column '{h}' is missing")
            bad_header = True
    if bad_header:
        return ()
    tags_ok = set(store.dietary_tags) if store else None
    allergens_ok = set(store.allergens) if store else None
    aisles = store.aisles if store else None
    currency = store.currency if store else "EUR"
    images = r.dir / IMAGES_DIR
    rows: list[tuple[int, dict[str, str]]] = []
    prev = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            r.err(path, reader.line_num, f"CSV error: {exc}")
            return ()
        ln, prev = prev + 1, reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            r.err(path, ln, f"the row has {len(row)} values but the header has {len(header)} columns "
                  "(a value containing a comma must be in double quotes)")
            continue
        rows.append((ln, {h: v.strip() for h, v in zip(header, row, strict=False)}))
    if not rows:
        r.err(path, 1, "has no products")
        return ()

    products: list[Product] = []
    seen: dict[str, dict[str, int]] = {"id": {}, "name": {}, "fine_id": {}, "ean13": {}}
    pending_goes: list[tuple[int, str, tuple[str, ...]]] = []
    for ln, v in rows:
        pid = v["id"]
        what = f"product '{pid}'" if pid else "product"
        n0 = len(r.issues)
        for h in ("id", "name", "display_name", "coarse_name", "image"):
            if not v[h]:
                r.err(path, ln, f"{what}: '{h}' is empty")
        if pid and not SLUG.match(pid):
            r.err(path, ln, f"{what}: id must be lower-case words joined by hyphens (like 'oatly-oat-milk')")
        ints = {}
        for h in ("fine_id", "coarse_id"):
            try:
                ints[h] = int(v[h])
                if ints[h] < 0:
                    raise ValueError
            except ValueError:
                r.err(path, ln, f"{what}: {h} '{v[h]}' must be a whole number ≥ 0")
        try:
            price_d = Decimal(v["price"])
            if not price_d.is_finite():
                raise InvalidOperation
            if price_d < 0:
                r.err(path, ln, f"{what}: price {v['price']} is negative")
            elif price_d.as_tuple().exponent < -2:
                r.err(path, ln, f"{what}: price {v['price']} has more than two decimals")
        except InvalidOperation:
            hint = " (use a dot: 1.99)" if "," in v["price"] else ""
            r.err(path, ln, f"{what}: price '{v['price']}' is not a number{hint}")
            price_d = Decimal(0)
        if v["unit"] not in UNITS:
            r.err(path, ln, f"{what}: unit '{v['unit']}' must be one of {', '.join(UNITS)}")
        if aisles is not None and v["aisle"] not in aisles:
            r.err(path, ln, f"{what}: aisle '{v['aisle']}' is not in store.yml's aisles ({', '.join(aisles) or 'none'})")
        if not re.fullmatch(r"\d{13}", v["ean13"]):
            r.err(path, ln, f"{what}: ean13 '{v['ean13']}' must be 13 digits")
        elif not valid_ean13(v["ean13"]):
            r.err(path, ln, f"{what}: ean13 {v['ean13']} has a wrong check digit (expected "
                  f"{ean13_check_digit(v['ean13'])} at the end)")
        tags, allergens = _split(v.get("tags", "")), _split(v.get("allergens", ""))
        for col, vals, ok in (("tags", tags, tags_ok), ("allergens", allergens, allergens_ok)):
            for t in vals:
                if ok is not None and t not in ok:
                    r.err(path, ln, f"{what}: {col} '{t}' is not in store.yml's "
                          f"{'dietary_tags' if col == 'tags' else 'allergens'} ({', '.join(sorted(ok))})")
        img = v["image"]
        if img:
            if "/" in img or "\\" in img or img.startswith("."):
                r.err(path, ln, f"{what}: image '{img}' must be a file name in {IMAGES_DIR}/, without folders")
            else:
                _check_image(r, path, ln, what, images / img)
        for col in ("id", "name", "fine_id", "ean13"):
            val = v[col]
            if not val:
                continue
            if val in seen[col]:
                r.err(path, ln, f"{what}: duplicate {col} '{val}' (first at line {seen[col][val]})")
            else:
                seen[col][val] = ln
        goes = _split(v.get("goes_with", ""))
        if len(r.issues) > n0:
            continue
        pending_goes.append((ln, pid, goes))
        products.append(Product(
            id=pid, name=v["name"], display_name=v["display_name"], coarse_name=v["coarse_name"],
            fine_id=ints["fine_id"], coarse_id=ints["coarse_id"], aliases=_split(v["aliases"]),
            price=float(price_d), currency=currency, unit=v["unit"], size=v.get("size", ""), aisle=v["aisle"],
            aisle_name=(aisles or {}).get(v["aisle"], ""), ean13=v["ean13"], tags=tags, allergens=allergens,
            goes_with=goes, origin=v.get("origin", ""), image=img, description=" ".join(v.get("description", "").split()),
            source=f"{CATALOG_FILE}:{ln}"))
    all_ids = set(seen["id"])
    for ln, pid, goes in pending_goes:
        for g in goes:
            if g == pid:
                r.err(path, ln, f"product '{pid}': goes_with names the product itself")
            elif g not in all_ids:
                r.err(path, ln, f"product '{pid}': goes_with '{g}' is not a product id in this catalog")
        if not goes:
            r.warn(path, ln, f"product '{pid}' has no goes_with pairings")
    if images.is_dir():
        used = {p.image for p in products}
        for f in sorted(images.iterdir()):
            if f.is_file() and f.name not in used and not f.name.startswith("."):
                r.warn(f, None, "no product uses this image")
    return tuple(products)


def _check_image(r: _Reader, path: Path, ln: int, what: str, img: Path) -> None:
    try:
        size = img.stat().st_size
        with open(img, "rb") as fh:
            head = fh.read(16)
    except FileNotFoundError:
        r.err(path, ln, f"{what}: image file {r.show(img)} is missing")
        return
    except OSError as exc:
        r.err(path, ln, f"{what}: cannot read image {r.show(img)}: {exc.strerror or exc}")
        return
    if not any(head.startswith(m) for m, _ in IMAGE_MAGIC):
        r.err(path, ln, f"{what}: {r.show(img)} is not a JPEG or PNG image")
    elif size > MAX_IMAGE_BYTES:
        r.err(path, ln, f"{what}: {r.show(img)} is {size // 1024} KiB; keep product images under "
              f"{MAX_IMAGE_BYTES // 1024 // 1024} MiB (320 px is plenty for the screen)")


# ----------------------------------------------------------------------------------------------- the KB


def fingerprint(kb_dir: Path) -> str:
    """sha256 over the KB files and the image folder's names and sizes: equal fingerprints, equal KB."""
    h = hashlib.sha256()
    for name in KB_FILES:
        p = Path(kb_dir) / name
        h.update(name.encode())
        try:
            h.update(p.read_bytes())
        except OSError:
            h.update(b"<missing>")
    imgs = Path(kb_dir) / IMAGES_DIR
    if imgs.is_dir():
        for f in sorted(imgs.iterdir()):
            try:
                h.update(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
            except OSError:
                pass
    return h.hexdigest()


class KnowledgeBase:
    """The store's knowledge: immutable once loaded (a reload builds a new one and swaps it in whole)."""

    def __init__(self, store: StoreInfo, faqs: Iterable[FaqEntry], products: Iterable[Product], *,
                 kb_dir: Path | None = None, warnings: Iterable[KBIssue] = (), fingerprint: str = "") -> None:
        self.store = store
        self.faqs: tuple[FaqEntry, ...] = tuple(faqs)
        self.products: tuple[Product, ...] = tuple(products)
        self.dir = kb_dir
        self.warnings: tuple[KBIssue, ...] = tuple(warnings)
        self.fingerprint = fingerprint
        self.loaded_at = dt.datetime.now(dt.timezone.utc)
        self._faq = MappingProxyType({f.id: f for f in self.faqs})
        self._product = MappingProxyType({p.id: p for p in self.products})
        self._ean = MappingProxyType({p.ean13: p for p in self.products})
        self._fine = MappingProxyType({p.fine_id: p for p in self.products})
        self._pos = MappingProxyType({p.id: i for i, p in enumerate(self.products)})
        exact: dict[str, list[Product]] = {}
        group: dict[str, list[Product]] = {}
        for p in self.products:
            names = {p.id, p.name, p.display_name, re.sub(r"\s*\(.*?\)", "", p.display_name), *p.aliases}
            brand = re.search(r"\(([^)]*)\)", p.display_name)
            if brand:  # "Oat milk (Oatly)" is also "Oatly oat milk"
                names.add(f"{brand.group(1)} {re.sub(r'[(].*?[)]', '', p.display_name)}")
            for n in names:
                k = name_key(n)
                if k and p not in exact.setdefault(k, []):
                    exact[k].append(p)
            group.setdefault(name_key(p.coarse_name), []).append(p)
        self._exact = MappingProxyType({k: tuple(v) for k, v in exact.items()})
        self._group = MappingProxyType({k: tuple(v) for k, v in group.items()})
        self._frozen = True

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError("a KnowledgeBase is immutable; load a new one")
        super().__setattr__(name, value)

    # ---- loading ---------------------------------------------------------------------------------------
    @classmethod
    def load(cls, kb_dir: str | Path) -> KnowledgeBase:
        """Load and validate ``kb_dir``. Raises ``KBError`` (a ``ConfigError``) listing every problem found."""
        kb_dir = Path(kb_dir)
        r = _Reader(kb_dir)
        if not kb_dir.is_dir():
            raise KBError([KBIssue(r.show(kb_dir), None, "knowledge-base directory not found (set kb_dir in the config)")])
        store = _load_store(r)
        faqs = _load_faq(r)
        products = _load_catalog(r, store)
        if r.issues:
            order = {f: i for i, f in enumerate(dict.fromkeys(i.file for i in r.issues))}
            raise KBError(sorted(r.issues, key=lambda i: (order[i.file], i.line or 0)))
        kb = cls(store, faqs, products, kb_dir=kb_dir, warnings=r.warnings, fingerprint=fingerprint(kb_dir))
        for w in r.warnings:
            log.debug("knowledge base warning: %s", w)
        return kb

    # ---- look-ups --------------------------------------------------------------------------------------
    def product(self, pid: str) -> Product | None:
        return self._product.get(str(pid).removeprefix("catalog:"))

    def faq(self, fid: str) -> FaqEntry | None:
        return self._faq.get(str(fid).removeprefix("faq:"))

    def entry(self, entry_id: str) -> Product | FaqEntry | None:
        """``"faq:returns"`` or ``"catalog:oatly-oat-milk"`` -> the record, or None."""
        kind, _, key = str(entry_id).partition(":")
        return self.faq(key) if kind == "faq" else self.product(key) if kind == "catalog" else None

    def by_ean(self, code: str) -> Product | None:
        """The product with this EAN-13 (spaces and dashes ignored; a 12-digit UPC-A gets its leading 0)."""
        digits = re.sub(r"[\s-]", "", str(code))
        if len(digits) == 12 and digits.isdigit():
            digits = "0" + digits
        return self._ean.get(digits)

    def by_fine_id(self, fine_id: int) -> Product | None:
        """The product the recognition model's class ``fine_id`` stands for."""
        return self._fine.get(int(fine_id))

    def find_products(self, name: str) -> list[Product]:
        """Products a customer's words name: an exact name, display name, alias or id (case, plural, accents,
        hyphens ignored) first; else a product group ("Yoghurt", "apples"); else every product whose names
        contain all the words ("oatly" -> both Oatly products). Catalog order within a tier; [] if none."""
        k = name_key(str(name or ""))[:200]
        if not k:
            return []
        if k in self._exact:
            return list(self._exact[k])
        if k in self._group:
            return list(self._group[k])
        want = set(k.split())
        found: list[Product] = []
        for key_, prods in self._exact.items():
            if want <= set(key_.split()):
                found.extend(p for p in prods if p not in found)
        return sorted(found, key=lambda p: self._pos[p.id])

    def __repr__(self) -> str:
        return f"KnowledgeBase({self.dir}, {len(self.products)} products, {len(self.faqs)} FAQ entries)"
