"""Sessions: one starts on a touch (later a face or speech) and ends on an idle timeout, a goodbye or "done".

Per-session state (the product being talked about, a pending slot or confirmation, the failure count) lives
only here, in memory, and is wiped when the session ends; what is kept is the redacted transcript in the
conversation store.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import InputError

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


def check_session_id(sid: object) -> str:
    if not isinstance(sid, str) or not SESSION_ID_RE.match(sid):
        raise InputError("session must be 1-64 characters of letters, digits, '_', '-', '.', ':'", code="bad_session")
    return sid


def new_session_id() -> str:
    return "s-" + secrets.token_hex(8)


@dataclass
class SessionState:
    id: str
    channel: str = "touch"
    started: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)
    turns: int = 0
    # dialogue context
    last_product: str | None = None  # KB product id
    # The camera's view, when the kiosk's camera is attached to this session (the touchscreen's): the newest
    # product sighting (a scan or a recognition, or "unknown"), for "this one" / "how much is it".
    camera: bool = False
    in_view: Any = None  # runtime.events.Sighting
    face_cue: tuple[tuple[float, ...], float] | None = None  # (FER2013 probabilities, monotonic ts) of the nearest face
    last_intent: str | None = None
    last_reply: str | None = None
    pending: dict[str, Any] | None = None  # {"kind": "slot"|"confirm"|"clarify", ...}
    failures: int = 0
    frustrated_turns: int = 0  # turns in a row the fusion model heard as frustrated
    handed_off: bool = False
    closed: bool = False

    def next_turn(self) -> int:
        self.turns += 1
        self.last_active = time.monotonic()
        return self.turns

    def view(self, now: float, ttl_s: float) -> Any:
        """The product sighting the customer may be pointing at: the newest one, if younger than ``ttl_s``."""
        s = self.in_view
        return s if s is not None and now - s.ts <= ttl_s else None

    def wipe(self) -> None:
        self.last_product = self.last_intent = self.last_reply = None
        self.in_view = self.face_cue = None
        self.pending = None
        self.failures = self.frustrated_turns = 0
        self.closed = True


class SessionManager:
    """Bounded: past ``max_sessions`` the least recently active session is ended (reason "evicted"), so a
    flood of new session ids costs memory once, not forever."""

    def __init__(self, idle_timeout_s: float = 90.0, max_sessions: int = 64, clock=time.monotonic) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._live: OrderedDict[str, SessionState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._live)

    def get(self, sid: str) -> SessionState | None:
        return self._live.get(sid)

    def touch(self, sid: str, channel: str = "touch") -> tuple[SessionState, bool, list[SessionState]]:
        """The live session ``sid`` (created if new). Returns (state, created, evicted)."""
        evicted: list[SessionState] = []
        st = self._live.get(sid)
        created = st is None
        if st is None:
            while len(self._live) >= self.max_sessions:
                _, old = self._live.popitem(last=False)
                evicted.append(old)
            st = SessionState(sid, channel, started=self.clock(), last_active=self.clock())
            self._live[sid] = st
        else:
            st.last_active = self.clock()
        self._live.move_to_end(sid)
        return st, created, evicted

    def end(self, sid: str) -> SessionState | None:
        st = self._live.pop(sid, None)
        if st is not None:
            st.wipe()
        return st

    def expired(self) -> list[str]:
        cutoff = self.clock() - self.idle_timeout_s
        return [sid for sid, st in self._live.items() if st.last_active < cutoff]

    def ids(self) -> list[str]:
        return list(self._live)
