"""The knowledge base's immutable records: products, FAQ entries, the store (hours, services, aisles), and
the error a broken KB file raises.

Every record remembers the file and line it came from (``source``), so an answer can be traced back to
the line an operator has to edit.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from runtime.errors import ConfigError

log = logging.getLogger(__name__)

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


# ------------------------------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class KBIssue:
    """One problem in one KB file: ``str()`` gives ``data/kb/faq.yml line 42: entry 'bags' has no 'answer'``."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file} line {self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class KBError(ConfigError):
    """The knowledge base on disk is broken. Carries *every* problem found (``issues``; ``errors`` as text),
    not only the first, so an operator fixes them in one go. ``file``/``line`` are the first problem's."""

    code = "kb"

    def __init__(self, issues: Sequence[KBIssue] | str) -> None:
        if isinstance(issues, str):
            issues = [KBIssue("knowledge base", None, issues)]
        self.issues: tuple[KBIssue, ...] = tuple(issues)
        self.errors: list[str] = [str(i) for i in self.issues]
        first = self.issues[0] if self.issues else KBIssue("knowledge base", None, "invalid")
        self.file, self.line = first.file, first.line
        n = len(self.issues)
        head = self.errors[0] if self.errors else "invalid knowledge base"
        msg = head if n <= 1 else f"{head} (and {n - 1} more problem{'s' if n > 2 else ''}: " + "; ".join(self.errors[1:4]) + (
            "; …)" if n > 4 else ")")
        super().__init__(msg)


# ----------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Product:
    id: str  # stable slug, e.g. "oatly-oat-milk"; cards and "catalog:<id>" refer to it
    name: str  # the dataset's fine class name ("Oatly-Oat-Milk"); entity values use it
    display_name: str
    coarse_name: str
    fine_id: int
    coarse_id: int
    aliases: tuple[str, ...]
    price: float
    currency: str
    unit: str  # each | kg | litre | pack
    size: str  # "1 l", "250 g", "" for loose produce
    aisle: str
    aisle_name: str
    ean13: str
    tags: tuple[str, ...]
    allergens: tuple[str, ...]
    goes_with: tuple[str, ...]
    origin: str
    image: str  # file name in the KB's images/ folder
    description: str
    source: str = ""  # "catalog.csv:47"

    @property
    def entry_id(self) -> str:
        return f"catalog:{self.id}"

    def price_text(self) -> str:
        sym = {"EUR": "€", "USD": "$", "GBP": "£"}.get(self.currency, self.currency + " ")
        per = {"kg": " per kg", "litre": " per litre", "pack": " a pack"}.get(self.unit, "")
        return f"{sym}{self.price:.2f}{per}"


@dataclass(frozen=True)
class FaqEntry:
    id: str
    title: str
    answer: str
    questions: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    source: str = ""  # "faq.yml:42"

    @property
    def entry_id(self) -> str:
        return f"faq:{self.id}"


@dataclass(frozen=True)
class Service:
    id: str
    name: str
    description: str = ""
    where: str = ""
    hours: tuple[tuple[int, int], ...] = ()  # empty: the store's hours


@dataclass(frozen=True)
class HoursException:
    """A day whose hours differ from the weekly table: one date (``year`` set) or every year."""

    month: int
    day: int
    year: int | None
    ranges: tuple[tuple[int, int], ...]  # minutes since midnight; () = closed
    note: str = ""

    def applies(self, d: dt.date) -> bool:
        return d.month == self.month and d.day == self.day and (self.year is None or d.year == self.year)


def fmt_minutes(m: int) -> str:
    return f"{m // 60:02d}:{m % 60:02d}"


def fmt_ranges(ranges: Sequence[tuple[int, int]], sep: str = " to ") -> str:
    return ", ".join(f"{fmt_minutes(a)}{sep}{fmt_minutes(b)}" for a, b in ranges) if ranges else "closed"


@dataclass(frozen=True)
class StoreInfo:
    name: str
    address: str
    phone: str
    currency: str
    timezone: str
    hours: Mapping[int, tuple[tuple[int, int], ...]]  # weekday (0 = Monday) -> ranges in minutes
    exceptions: tuple[HoursException, ...] = ()
    aisles: Mapping[str, str] = field(default_factory=dict)
    services: tuple[Service, ...] = ()
    staff_call: str = ""
    email: str = ""
    website: str = ""
    dietary_tags: tuple[str, ...] = ()
    allergens: tuple[str, ...] = ()

    # ---- time --------------------------------------------------------------------------------------------
    def _tz(self):
        try:
            from zoneinfo import ZoneInfo

            return ZoneInfo(self.timezone)
        except Exception:  # no tz database on this box: the kiosk's local time is the store's
            return None

    def local(self, at: dt.datetime | None = None) -> dt.datetime:
        """``at`` in store time (naive: already store time; None: now)."""
        tz = self._tz()
        if at is None:
            return dt.datetime.now(tz) if tz else dt.datetime.now()
        if at.tzinfo is not None and tz is not None:
            return at.astimezone(tz)
        return at

    def hours_on(self, day: dt.date) -> tuple[tuple[tuple[int, int], ...], str]:
        """(ranges, note) for a date: an exception for that date wins over the weekly table."""
        for ex in sorted(self.exceptions, key=lambda e: e.year is None):  # a dated exception beats a yearly one
            if ex.applies(day):
                return ex.ranges, ex.note
        return tuple(self.hours.get(day.weekday(), ())), ""

    def is_open(self, at: dt.datetime | None = None) -> bool:
        now = self.local(at)
        m = now.hour * 60 + now.minute
        return any(a <= m < b for a, b in self.hours_on(now.date())[0])

    def next_opening(self, at: dt.datetime | None = None) -> dt.datetime | None:
        """The next time the doors open after ``at`` (within two weeks), or None."""
        now = self.local(at)
        m = now.hour * 60 + now.minute
        for i in range(15):
            d = now.date() + dt.timedelta(days=i)
            for a, _b in self.hours_on(d)[0]:
                if i > 0 or a > m:
                    return dt.datetime.combine(d, dt.time(a // 60, a % 60), tzinfo=now.tzinfo)
        return None

    def today_hours(self, at: dt.datetime | None = None) -> str:
        """Today's hours, short: ``"07:00 to 22:00"`` or ``"closed"``."""
        return fmt_ranges(self.hours_on(self.local(at).date())[0])

    def hours_text(self, at: dt.datetime | None = None) -> str:
        """A sentence for the customer: open or closed now, and today's hours."""
        now = self.local(at)
        ranges, note = self.hours_on(now.date())
        m = now.hour * 60 + now.minute
        day = WEEKDAYS[now.weekday()].capitalize()
        why = f" ({note})" if note else ""
        if not ranges:
            return f"We're closed today{why}." + self._reopen(now)
        today = f"Today ({day}{', ' + note if note else ''}) we're open {fmt_ranges(ranges)}."
        for a, b in ranges:
            if a <= m < b:
                return f"We're open now until {fmt_minutes(b)}. {today}"
        if m < ranges[0][0]:
            return f"We open today at {fmt_minutes(ranges[0][0])}. {today}"
        later = [a for a, _ in ranges if a > m]
        if later:
            return f"We're closed for a break and open again at {fmt_minutes(later[0])}. {today}"
        return f"We're closed now (today's hours: {fmt_ranges(ranges)})." + self._reopen(now)

    def _reopen(self, now: dt.datetime) -> str:
        nxt = self.next_opening(now)
        if nxt is None:
            return ""
        days = (nxt.date() - now.date()).days
        when = "today" if days == 0 else "tomorrow" if days == 1 else f"on {WEEKDAYS[nxt.weekday()].capitalize()}"
        return f" We open again {when} at {nxt.strftime('%H:%M')}."

    def week_text(self) -> str:
        """The weekly table, grouped: ``"Monday to Friday 07:00 to 22:00; Saturday 08:00 to 22:00; …"``."""
        groups: list[tuple[int, int, tuple]] = []
        for i in range(7):
            r = tuple(self.hours.get(i, ()))
            if groups and groups[-1][2] == r:
                groups[-1] = (groups[-1][0], i, r)
            else:
                groups.append((i, i, r))
        parts = []
        for a, b, r in groups:
            days = WEEKDAYS[a].capitalize() if a == b else f"{WEEKDAYS[a].capitalize()} to {WEEKDAYS[b].capitalize()}"
            parts.append(f"{days} {fmt_ranges(r)}")
        return "; ".join(parts)

    def service(self, sid: str) -> Service | None:
        return next((s for s in self.services if s.id == sid), None)
