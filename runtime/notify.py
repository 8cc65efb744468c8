"""Calling a staff member: the ``Notifier`` interface and its three implementations.

A hand-off must reach a person even when one channel is down, so the kiosk fans out to every configured
notifier and a failing one is logged and counted, never raised into the conversation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from runtime.events import now

log = logging.getLogger("storeclerk.handoff")


@dataclass(frozen=True)
class Handoff:
    session: str
    reason: str  # request | failures | frustration | button
    summary: str  # the last customer turn, already redacted
    intent: str | None = None
    ts: float = field(default_factory=now)


class Notifier(Protocol):
    name: str

    async def notify(self, h: Handoff) -> None: ...


class LogNotifier:
    name = "log"

    async def notify(self, h: Handoff) -> None:
        log.warning("staff requested: session=%s reason=%s intent=%s last=%r", h.session, h.reason, h.intent, h.summary)


class WebhookNotifier:
    """POSTs the hand-off as JSON to a local URL (a staff pager bridge, a store system). Runs the blocking
    request in a thread so a slow endpoint never stalls the loop."""

    name = "webhook"

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def _post(self, body: bytes) -> int:
        req = urllib.request.Request(self.url, body, {"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 (operator-configured URL)
            return resp.status

    async def notify(self, h: Handoff) -> None:
        body = json.dumps({"event": "staff_requested", **asdict(h)}).encode()
        status = await asyncio.to_thread(self._post, body)
        if status >= 300:
            raise RuntimeError(f"webhook {self.url} answered HTTP {status}")


class ScreenNotifier:
    """Tells the page "someone is coming" (the server registers a broadcast callback)."""

    name = "screen"

    def __init__(self, broadcast: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> None:
        self.broadcast = broadcast

    async def notify(self, h: Handoff) -> None:
        if self.broadcast is not None:
            await self.broadcast({"type": "staff", "session": h.session, "text": "Someone is coming to help you."})


def build_notifiers(specs: Sequence[Mapping[str, Any]], broadcast=None) -> list[Notifier]:
    out: list[Notifier] = []
    for s in specs:
        if s["type"] == "log":
            out.append(LogNotifier())
        elif s["type"] == "screen":
            out.append(ScreenNotifier(broadcast))
        elif s["type"] == "webhook":
            out.append(WebhookNotifier(s["url"], float(s.get("timeout_s", 2.0))))
    return out


async def notify_all(notifiers: Sequence[Notifier], h: Handoff, on_error=None) -> list[str]:
    """Every notifier, concurrently; returns the names of those that failed."""
    results = await asyncio.gather(*(n.notify(h) for n in notifiers), return_exceptions=True)
    failed = []
    for n, r in zip(notifiers, results, strict=True):
        if isinstance(r, BaseException):
            failed.append(n.name)
            log.error("notifier %s failed: %s", n.name, r)
            if on_error:
                on_error(n.name, r)
    return failed
