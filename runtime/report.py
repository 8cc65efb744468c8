"""``storeclerk report``: one self-contained HTML file summarizing the kiosk's conversations.

No CDN, no script, no external reference of any kind: the CSS is inline and the charts are SVG drawn here, so
the file opens on an offline kiosk or as an e-mail attachment. Each chart has a title and description for
screen readers (``role="img"`` + ``aria-labelledby``), prints its numbers on the bars, and is followed by the
same numbers as a table, so nothing depends on colour or on seeing the chart.

What is counted (conventions in ``runtime/store/schema.py``):
- customer turns: the questions asked; the timeline and the hour-of-day profile count them;
- intents and out-of-scope: on customer turns;
- hand-offs: sessions in which any turn or event handed off to staff;
- latency: ``latency_ms`` and ``stage_ms`` of every turn that carries them.
No conversation text ever goes into the report.
"""

from __future__ import annotations

import html
import importlib.metadata
import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from pathlib import Path

from device.fsutil import atomic_write_text
from runtime.store import ConversationStore

TOP_INTENTS = 12
HOURLY_MAX_S = 72 * 3600  # up to three days: one bar per hour; longer: per day (per week beyond 120 days)
WEEKLY_MIN_DAYS = 120
PERCENTILES = (50, 90, 99)
NO_DATA = "No conversations in this period."

Number = float | int
When = datetime | float | int | None


# ------------------------------------------------------------------------------------------------ numbers


def _version() -> str:
    try:
        return importlib.metadata.version("storeclerk")
    except importlib.metadata.PackageNotFoundError:
        return "(source checkout)"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation between closest ranks (numpy's default); None if empty."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class Latency:
    name: str
    n: int
    p50: float | None
    p90: float | None
    p99: float | None

    @classmethod
    def of(cls, name: str, values: Sequence[float]) -> Latency:
        return cls(name, len(values), *(percentile(values, q) for q in PERCENTILES))


@dataclass
class DayRow:
    day: str
    sessions: int = 0
    customer_turns: int = 0
    handoff_sessions: int = 0
    out_of_scope: int = 0
    understood: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass
class ReportData:
    since: float | None
    until: float
    tz: tzinfo | None
    sessions: int = 0
    turns: int = 0
    customer_turns: int = 0
    mean_turns_per_session: float | None = None
    mean_session_s: float | None = None
    handoff_sessions: int = 0
    understood: int = 0
    out_of_scope: int = 0
    intents: list[tuple[str, int]] = field(default_factory=list)
    other_intents: int = 0
    timeline_unit: str = "hour"
    timeline: list[tuple[str, int]] = field(default_factory=list)
    hour_of_day: list[int] = field(default_factory=lambda: [0] * 24)
    latency: Latency | None = None
    stages: list[Latency] = field(default_factory=list)
    days: list[DayRow] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.sessions == 0 and self.turns == 0

    @property
    def handoff_rate(self) -> float | None:
        return self.handoff_sessions / self.sessions if self.sessions else None

    @property
    def out_of_scope_rate(self) -> float | None:
        return self.out_of_scope / self.understood if self.understood else None


def _epoch(x: When) -> float | None:
    if x is None:
        return None
    if isinstance(x, datetime):
        return x.timestamp()
    return float(x)


def _local(ts: float, tz: tzinfo | None) -> datetime:
    return datetime.fromtimestamp(ts, tz) if tz is not None else datetime.fromtimestamp(ts)


def collect(store: ConversationStore, since: When = None, until: When = None, *, tz: tzinfo | None = None,
            top_n: int = TOP_INTENTS, now: float | None = None) -> ReportData:
    """The report's numbers for sessions and turns in [since, until) (``until`` None: up to ``now``).
    Times are bucketed in ``tz`` (default: the machine's local time zone)."""
    s0, s1 = _epoch(since), _epoch(until)
    end = s1 if s1 is not None else (time.time() if now is None else now)
    data = ReportData(since=s0, until=end, tz=tz)
    sessions = store.sessions(s0, s1)
    turns = store.turn_metrics(s0, s1)
    data.sessions, data.turns = len(sessions), len(turns)
    if data.empty:
        return data

    customer = [t for t in turns if t["role"] == "customer"]
    data.customer_turns = len(customer)
    if sessions:
        per_session = Counter(t["session_id"] for t in customer)
        data.mean_turns_per_session = sum(per_session[s["id"]] for s in sessions) / len(sessions)
        durations = [s["ended_at"] - s["started_at"] for s in sessions if s["ended_at"] is not None]
        data.mean_session_s = sum(durations) / len(durations) if durations else None
    data.handoff_sessions = sum(1 for s in sessions if s["handoff"])
    understood = [t for t in customer if t["intent"]]
    data.understood = len(understood)
    data.out_of_scope = sum(1 for t in understood if t["out_of_scope"])
    counts = Counter(t["intent"] for t in understood if not t["out_of_scope"])
    data.intents = counts.most_common(top_n)
    data.other_intents = sum(counts.values()) - sum(c for _, c in data.intents)

    # when: timeline and hour-of-day profile of customer turns
    start = s0 if s0 is not None else min(t["ts"] for t in turns)
    data.timeline_unit, buckets = _buckets(start, end, tz)
    keyed = {k: 0 for k, _ in buckets}
    for t in customer:
        dt = _local(t["ts"], tz)
        data.hour_of_day[dt.hour] += 1
        k = _bucket_key(dt, data.timeline_unit)
        if k in keyed:
            keyed[k] += 1
    data.timeline = [(label, keyed[k]) for k, label in buckets]

    # how fast
    lat = [t["latency_ms"] for t in turns if t["latency_ms"] is not None]
    data.latency = Latency.of("whole turn", lat) if lat else None
    per_stage: dict[str, list[float]] = defaultdict(list)
    for t in turns:
        for name, ms in (t["stage_ms"] or {}).items():
            per_stage[name].append(float(ms))
    data.stages = [Latency.of(name, v) for name, v in per_stage.items()]

    # per day
    days: dict[str, DayRow] = {}

    def day(ts: float) -> DayRow:
        key = _local(ts, tz).date().isoformat()
        return days.setdefault(key, DayRow(key))

    for s in sessions:
        row = day(s["started_at"])
        row.sessions += 1
        row.handoff_sessions += bool(s["handoff"])
    for t in customer:
        row = day(t["ts"])
        row.customer_turns += 1
        if t["intent"]:
            row.understood += 1
            row.out_of_scope += bool(t["out_of_scope"])
    for t in turns:
        if t["latency_ms"] is not None:
            day(t["ts"]).latencies.append(t["latency_ms"])
    data.days = [days[k] for k in sorted(days)]
    return data


def _buckets(start: float, end: float, tz: tzinfo | None) -> tuple[str, list[tuple[str, str]]]:
    """(unit, [(key, label)]) covering [start, end]."""
    a, b = _local(start, tz), _local(max(end, start), tz)
    span = end - start
    if span <= HOURLY_MAX_S:
        unit, cur, step = "hour", a.replace(minute=0, second=0, microsecond=0), timedelta(hours=1)
    elif span <= WEEKLY_MIN_DAYS * 86400:
        unit, cur, step = "day", a.replace(hour=0, minute=0, second=0, microsecond=0), timedelta(days=1)
    else:
        d0 = a.replace(hour=0, minute=0, second=0, microsecond=0)
        unit, cur, step = "week", d0 - timedelta(days=d0.weekday()), timedelta(days=7)
    out: list[tuple[str, str]] = []
    while cur <= b and len(out) < 2000:
        key = _bucket_key(cur, unit)
        if not out or out[-1][0] != key:  # a DST change can repeat an hour
            out.append((key, _bucket_label(cur, unit)))
        cur = cur + step
    return unit, out


def _bucket_key(dt: datetime, unit: str) -> str:
    if unit == "hour":
        return dt.strftime("%Y-%m-%d %H")
    if unit == "day":
        return dt.strftime("%Y-%m-%d")
    monday = dt.date() - timedelta(days=dt.weekday())
    return monday.isoformat()


def _bucket_label(dt: datetime, unit: str) -> str:
    if unit == "hour":
        return dt.strftime("%a %H:00")
    if unit == "day":
        return dt.strftime("%a %d %b")
    return "week of " + _bucket_key(dt, unit)


# ------------------------------------------------------------------------------------------------ drawing

E = html.escape


def _fmt(x: Number | None, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, int) or float(x).is_integer() and digits == 0:
        return f"{int(x):,}"
    return f"{x:,.{digits}f}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


class _Ids:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, stem: str) -> str:
        self.n += 1
        return f"{stem}-{self.n}"


def svg_columns(ids: _Ids, title: str, desc: str, labels: Sequence[str], values: Sequence[Number], *,
                unit: str = "", label_every: int = 1) -> str:
    """A vertical bar chart: bars with their values printed above, every ``label_every``-th label below."""
    n = max(1, len(values))
    w, h, left, top, bottom = 760, 270, 64, 28, 66
    plot_w, plot_h = w - left - 10, h - top - bottom
    bw = plot_w / n
    vmax = _nice_max(max(values, default=0))
    tid, did = ids("t"), ids("d")
    parts = [f'<svg class="chart" viewBox="0 0 {w} {h}" width="100%" role="img" aria-labelledby="{tid} {did}">',
             f'<title id="{tid}">{E(title)}</title><desc id="{did}">{E(desc)}</desc>']
    for frac in (0, 0.5, 1):
        y, tick = top + plot_h * (1 - frac), float(vmax * frac)
        tick_text = _fmt(tick, 0 if tick.is_integer() else 1)
        parts.append(f'<line class="grid" x1="{left}" x2="{w - 10}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick_text}</text>')
    show_values = bw >= 14
    for i, (lab, v) in enumerate(zip(labels, values, strict=True)):
        bh = plot_h * (v / vmax)
        x, y = left + i * bw, top + plot_h - bh
        parts.append(f'<g><title>{E(lab)}: {_fmt(v, 0)}{E(unit)}</title>'
                     f'<rect class="bar" x="{x + bw * 0.12:.1f}" y="{y:.1f}" width="{bw * 0.76:.1f}" height="{bh:.1f}"/>')
        if show_values and v:
            parts.append(f'<text class="val" x="{x + bw / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle">{_fmt(v, 0)}</text>')
        parts.append("</g>")
        if i % label_every == 0:
            lx, ly = x + bw / 2, top + plot_h + 14
            parts.append(f'<text class="axis" x="{lx:.1f}" y="{ly:.1f}" text-anchor="end" '
                         f'transform="rotate(-40 {lx:.1f} {ly:.1f})">{E(lab)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_bars(ids: _Ids, title: str, desc: str, labels: Sequence[str], values: Sequence[Number], *,
             unit: str = "", digits: int = 0) -> str:
    """A horizontal bar chart (long labels: intents, stages) with each value printed after its bar."""
    row, left, right, top = 26, 210, 90, 8
    w = 760
    h = top * 2 + row * max(1, len(values))
    vmax = max(values, default=0) or 1
    tid, did = ids("t"), ids("d")
    parts = [f'<svg class="chart" viewBox="0 0 {w} {h}" width="100%" role="img" aria-labelledby="{tid} {did}">',
             f'<title id="{tid}">{E(title)}</title><desc id="{did}">{E(desc)}</desc>']
    for i, (lab, v) in enumerate(zip(labels, values, strict=True)):
        y = top + i * row
        bw = (w - left - right) * (v / vmax)
        text = f"{_fmt(v, digits)}{unit}"
        parts.append(f'<g><title>{E(lab)}: {E(text)}</title>'
                     f'<text class="axis" x="{left - 8}" y="{y + row * 0.62:.1f}" text-anchor="end">{E(lab)}</text>'
                     f'<rect class="bar" x="{left}" y="{y + 4}" width="{bw:.1f}" height="{row - 8}"/>'
                     f'<text class="val" x="{left + bw + 6:.1f}" y="{y + row * 0.62:.1f}">{E(text)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _table(caption: str, head: Sequence[str], rows: Sequence[Sequence[str]], *, numeric_from: int = 1) -> str:
    th = "".join(f'<th scope="col">{E(h)}</th>' for h in head)
    body = []
    for r in rows:
        cells = [f'<th scope="row">{E(str(r[0]))}</th>']
        cells += [f'<td class="{"num" if i >= numeric_from else ""}">{E(str(c))}</td>' for i, c in enumerate(r[1:], 1)]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><caption>{E(caption)}</caption><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(chart: str, caption: str, table: str) -> str:
    return (f"<figure>{chart}<figcaption>{E(caption)}</figcaption>"
            f"<details><summary>The numbers as a table</summary>{table}</details></figure>")


_CSS = """
:root { --ink: #1b1f24; --muted: #57606a; --bar: #2f6f9f; --grid: #d0d7de; --bg: #ffffff; --panel: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: var(--bg);
       margin: 0 auto; max-width: 60rem; padding: 1.5rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; } h2 { font-size: 1.25rem; margin: 2rem 0 .5rem; border-bottom: 1px solid var(--grid); }
.sub { color: var(--muted); margin: 0 0 1rem; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(11rem, 1fr)); gap: .75rem; padding: 0; list-style: none; }
.tiles li { background: var(--panel); border: 1px solid var(--grid); border-radius: .5rem; padding: .75rem; }
.tiles .k, .tiles .n { display: block; color: var(--muted); font-size: .85rem; }
.tiles .v { display: block; font-size: 1.5rem; font-weight: 600; }
figure { margin: 1rem 0; } figcaption { color: var(--muted); font-size: .9rem; }
.chart .bar { fill: var(--bar); } .chart .grid { stroke: var(--grid); stroke-width: 1; }
.chart text { font: 12px system-ui, sans-serif; fill: var(--ink); } .chart .axis { fill: var(--muted); }
.chart .val { font-weight: 600; }
table { border-collapse: collapse; margin: .5rem 0; min-width: 50%; }
caption { text-align: left; font-weight: 600; padding: .25rem 0; }
th, td { border: 1px solid var(--grid); padding: .3rem .6rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
thead th { background: var(--panel); }
.empty { background: var(--panel); border: 1px dashed var(--grid); padding: 1.5rem; border-radius: .5rem; font-size: 1.1rem; }
footer { margin-top: 2rem; color: var(--muted); font-size: .85rem; }
@media print { details { display: block; } details > summary { display: none; } }
"""


def render_html(data: ReportData, *, title: str = "storeclerk conversation report", source: str = "") -> str:
    """The report as one HTML document (no external references)."""
    ids = _Ids()
    fmt_t = "%Y-%m-%d %H:%M"
    tzname = _local(data.until, data.tz).strftime("%Z") or "local time"
    frm = _local(data.since, data.tz).strftime(fmt_t) if data.since is not None else "the first record"
    to = _local(data.until, data.tz).strftime(fmt_t)
    period = f"{frm} to {to} ({tzname})"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{E(title)}: {E(period)}</title><style>{_CSS}</style></head><body><main>",
           f"<h1>{E(title)}</h1>", f'<p class="sub">Period: {E(period)}</p>']
    if data.empty:
        out.append(f'<p class="empty" role="status">{E(NO_DATA)}</p>')
    else:
        out.append(_summary(data))
        out.append(_when(data, ids))
        out.append(_what(data, ids))
        out.append(_speed(data, ids))
        out.append(_per_day(data))
    made = _local(time.time(), data.tz).strftime(fmt_t)
    src = f" from {E(source)}" if source else ""
    out.append(f"<footer>Generated {E(made)} by storeclerk {E(_version())}{src}. Counts only: no conversation text is "
               "included.</footer></main></body></html>")
    return "\n".join(out)


def _summary(d: ReportData) -> str:
    tiles = [
        ("Sessions", _fmt(d.sessions), ""),
        ("Customer turns", _fmt(d.customer_turns), f"{_fmt(d.turns)} turns with the kiosk's replies"),
        ("Customer turns per session", _fmt(d.mean_turns_per_session), "mean"),
        ("Session length", "–" if d.mean_session_s is None else f"{d.mean_session_s:,.0f} s", "mean, ended sessions"),
        ("Hand-offs to staff", _pct(d.handoff_rate), f"{d.handoff_sessions:,} of {d.sessions:,} sessions"),
        ("Out of scope", _pct(d.out_of_scope_rate), f"{d.out_of_scope:,} of {d.understood:,} understood turns"),
        ("Reply latency", "–" if d.latency is None else f"{_fmt(d.latency.p50)} ms",
         "" if d.latency is None else f"median; p90 {_fmt(d.latency.p90)} ms, p99 {_fmt(d.latency.p99)} ms"),
    ]
    items = "".join(f'<li><span class="k">{E(k)}</span> <span class="v">{E(v)}</span>'
                    + (f' <span class="n">{E(n)}</span>' if n else "") + "</li>" for k, v, n in tiles)
    return f'<section aria-labelledby="h-summary"><h2 id="h-summary">Summary</h2><ul class="tiles">{items}</ul></section>'


def _when(d: ReportData, ids: _Ids) -> str:
    labels, values = [lab for lab, _ in d.timeline], [v for _, v in d.timeline]
    every = max(1, math.ceil(len(labels) / 24))
    peak = max(d.timeline, key=lambda kv: kv[1]) if d.timeline else ("–", 0)
    t1 = f"Customer turns per {d.timeline_unit}"
    c1 = svg_columns(ids, t1, f"{len(labels)} bars, one per {d.timeline_unit}; busiest: {peak[0]} with {peak[1]} turns.",
                     labels, values, unit=" turns", label_every=every)
    tab1 = _table(t1, (d.timeline_unit.capitalize(), "Customer turns"), [(lab, f"{v:,}") for lab, v in d.timeline if v])
    hours = [f"{h:02d}:00" for h in range(24)]
    busiest = max(range(24), key=lambda h: d.hour_of_day[h])
    t2 = "Customer turns by hour of day"
    c2 = svg_columns(ids, t2, f"24 bars, summed over the period; busiest hour: {hours[busiest]} "
                     f"with {d.hour_of_day[busiest]} turns.", hours, d.hour_of_day, unit=" turns")
    tab2 = _table(t2, ("Hour", "Customer turns"), [(h, f"{v:,}") for h, v in zip(hours, d.hour_of_day, strict=True)])
    return ('<section aria-labelledby="h-when"><h2 id="h-when">When customers asked</h2>'
            + _figure(c1, t1 + ".", tab1) + _figure(c2, t2 + " (all days of the period together).", tab2) + "</section>")


def _what(d: ReportData, ids: _Ids) -> str:
    head = '<section aria-labelledby="h-what"><h2 id="h-what">What customers asked</h2>'
    if not d.intents:
        return head + "<p>No understood customer turns in this period.</p></section>"
    labels = [i for i, _ in d.intents]
    values = [c for _, c in d.intents]
    total = sum(values) + d.other_intents
    title = f"Top {len(labels)} intents"
    chart = svg_bars(ids, title, f"Customer turns per intent, most frequent first; {total} understood in-scope turns.",
                     labels, values, unit=" turns")
    rows = [(i, f"{c:,}", _pct(c / total)) for i, c in d.intents]
    if d.other_intents:
        rows.append(("(other intents)", f"{d.other_intents:,}", _pct(d.other_intents / total)))
    tab = _table(title, ("Intent", "Turns", "Share"), rows)
    oos = (f"<p>Out of scope (questions the kiosk does not handle): <strong>{d.out_of_scope:,}</strong> of "
           f"{d.understood:,} understood turns, <strong>{_pct(d.out_of_scope_rate)}</strong>. Sessions handed off to "
           f"staff: <strong>{d.handoff_sessions:,}</strong> of {d.sessions:,}, <strong>{_pct(d.handoff_rate)}</strong>.</p>")
    return head + _figure(chart, title + " (out-of-scope turns excluded).", tab) + oos + "</section>"


def _speed(d: ReportData, ids: _Ids) -> str:
    head = '<section aria-labelledby="h-speed"><h2 id="h-speed">How fast the kiosk answered</h2>'
    rows_src = ([d.latency] if d.latency else []) + d.stages
    if not rows_src:
        return head + "<p>No latency was recorded in this period.</p></section>"
    rows = [(r.name, _fmt(r.p50), _fmt(r.p90), _fmt(r.p99), f"{r.n:,}") for r in rows_src]
    tab = _table("Latency percentiles in milliseconds", ("Measured", "p50 (ms)", "p90 (ms)", "p99 (ms)", "Samples"), rows)
    parts = [head]
    if d.latency:
        lab = ["p50", "p90", "p99"]
        vals = [d.latency.p50 or 0.0, d.latency.p90 or 0.0, d.latency.p99 or 0.0]
        chart = svg_bars(ids, "Reply latency percentiles", f"Whole-turn latency over {d.latency.n} turns: p50 "
                         f"{_fmt(d.latency.p50)} ms, p90 {_fmt(d.latency.p90)} ms, p99 {_fmt(d.latency.p99)} ms.",
                         lab, vals, unit=" ms", digits=1)
        parts.append(f"<figure>{chart}<figcaption>Reply latency (ms): half of the turns were answered faster than p50, "
                     "99% faster than p99.</figcaption></figure>")
    if d.stages:
        st = sorted(d.stages, key=lambda s: -(s.p50 or 0))
        chart = svg_bars(ids, "Median time per stage", "Median milliseconds spent in each stage of the kiosk's pipeline.",
                         [s.name for s in st], [s.p50 or 0.0 for s in st], unit=" ms", digits=1)
        parts.append(f"<figure>{chart}<figcaption>Median time per stage (ms).</figcaption></figure>")
    parts.append(tab)
    return "".join(parts) + "</section>"


def _per_day(d: ReportData) -> str:
    rows = []
    for r in d.days[-62:]:
        oos = _pct(r.out_of_scope / r.understood) if r.understood else "–"
        rows.append((r.day, f"{r.sessions:,}", f"{r.customer_turns:,}", f"{r.handoff_sessions:,}", oos,
                     _fmt(percentile(r.latencies, 50))))
    note = "" if len(d.days) <= 62 else f"<p>The last 62 of {len(d.days)} days.</p>"
    tab = _table("Per day", ("Day", "Sessions", "Customer turns", "Hand-offs", "Out of scope", "Median latency (ms)"), rows)
    return f'<section aria-labelledby="h-days"><h2 id="h-days">Day by day</h2>{note}{tab}</section>'


# ---------------------------------------------------------------------------------------------- entry points


def build_report(db_path: str | Path, out_path: str | Path, since: When = None, until: When = None, *,
                 tz: tzinfo | None = None, title: str = "storeclerk conversation report") -> Path:
    """Write the report for [since, until) (datetimes or epoch seconds; None: open-ended) of the conversation
    store at ``db_path`` to ``out_path`` and return its absolute path. The store is opened read-only (a running
    kiosk keeps writing); a missing or unreadable store raises ``ConfigError``."""
    with ConversationStore(db_path, readonly=True) as store:
        data = collect(store, since, until, tz=tz)
    doc = render_html(data, title=title, source=str(Path(db_path)))
    return atomic_write_text(Path(out_path).expanduser().resolve(), doc)


def run_report(db_path: str | Path, out: str | Path, days: float = 7) -> int:
    """``storeclerk report``: the last ``days`` days of ``db_path`` into ``out``; prints where the file went
    and returns the exit status (0). Raises ``ConfigError`` for a missing or unreadable store."""
    if not days or days <= 0:
        from runtime.errors import ConfigError

        raise ConfigError(f"--days must be a positive number, got {days}")
    until = time.time()
    path = build_report(db_path, out, since=until - days * 86400, until=until)
    print(f"report written to {path}")
    return 0


__all__ = ["NO_DATA", "ReportData", "build_report", "collect", "percentile", "render_html", "run_report"]
