"""Counters, gauges and latency histograms, rendered in the Prometheus text format (version 0.0.4).

Small and dependency-free on purpose: the kiosk exposes a handful of series and must not pull a client
library onto a Jetson. Everything is updated from the asyncio loop's thread or under a lock.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque
from collections.abc import Iterable

# Seconds. Text turns live in the 1–50 ms range; voice and vision stages go up to seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.04, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    esc = (v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for _, v in pairs)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(pairs, esc, strict=True)) + "}"


class _Hist:
    __slots__ = ("counts", "sum", "n", "recent")

    def __init__(self, n_buckets: int) -> None:
        self.counts = [0] * n_buckets
        self.sum = 0.0
        self.n = 0
        self.recent: deque[float] = deque(maxlen=2048)  # for /healthz percentiles


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, float]] = {}
        self._gauges: dict[str, dict[tuple, float]] = {}
        self._hists: dict[str, dict[tuple, _Hist]] = {}
        self._help: dict[str, str] = {}

    def describe(self, name: str, text: str) -> None:
        self._help[name] = text

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._gauges.setdefault(name, {})[tuple(sorted(labels.items()))] = float(value)

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        if not math.isfinite(seconds):
            return
        key = tuple(sorted(labels.items()))
        with self._lock:
            h = self._hists.setdefault(name, {}).get(key)
            if h is None:
                h = self._hists[name][key] = _Hist(len(LATENCY_BUCKETS))
            i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
            if i < len(h.counts):
                h.counts[i] += 1
            h.sum += seconds
            h.n += 1
            h.recent.append(seconds)

    def counter(self, name: str, **labels: str) -> float:
        return self._counters.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def percentiles(self, name: str, qs: Iterable[float] = (0.5, 0.99)) -> dict[str, dict[str, float]]:
        """Recent-window percentiles in milliseconds per label set, e.g. {"stage=understand": {"p50": 3.1}}."""
        out: dict[str, dict[str, float]] = {}
        with self._lock:
            items = [(k, sorted(h.recent)) for k, h in self._hists.get(name, {}).items()]
        for key, vals in items:
            if not vals:
                continue
            label = ",".join(f"{k}={v}" for k, v in key) or "all"
            out[label] = {f"p{round(q * 100)}": round(vals[min(len(vals) - 1, int(q * len(vals)))] * 1000, 3) for q in qs}
            out[label]["n"] = len(vals)
        return out

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, series in sorted(self._counters.items()):
                lines += [f"# HELP {name} {self._help.get(name, name)}", f"# TYPE {name} counter"]
                lines += [f"{name}{_labels(k)} {v:g}" for k, v in sorted(series.items())]
            for name, series in sorted(self._gauges.items()):
                lines += [f"# HELP {name} {self._help.get(name, name)}", f"# TYPE {name} gauge"]
                lines += [f"{name}{_labels(k)} {v:g}" for k, v in sorted(series.items())]
            for name, series in sorted(self._hists.items()):
                lines += [f"# HELP {name} {self._help.get(name, name)}", f"# TYPE {name} histogram"]
                for key, h in sorted(series.items()):
                    cum = 0
                    for le, c in zip(LATENCY_BUCKETS, h.counts, strict=True):
                        cum += c
                        lines.append(f"{name}_bucket{_labels(key + (('le', f'{le:g}'),))} {cum}")
                    lines.append(f"{name}_bucket{_labels(key + (('le', '+Inf'),))} {h.n}")
                    lines.append(f"{name}_sum{_labels(key)} {h.sum:.6f}")
                    lines.append(f"{name}_count{_labels(key)} {h.n}")
        return "\n".join(lines) + "\n"
