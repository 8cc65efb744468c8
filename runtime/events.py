"""Typed, immutable events that flow between the kiosk's stages (DESIGN §2, docs/runtime.md).

Events are frozen dataclasses so a stage can never change what another stage already saw; a stage that
refines an event makes a new one (``dataclasses.replace``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


def now() -> float:
    return time.time()


@dataclass(frozen=True)
class Sighting:
    """What the camera made of a frame (DESIGN §2): ``kind`` is ``product`` (a catalog product by its EAN-13
    barcode, ``source="barcode"``, or recognized by the product model, ``source="recognizer"``), ``unknown``
    (the product model saw something it does not know), ``order`` (an order number from a QR code or an OCR'd
    receipt), or ``code`` (a barcode/QR the store has no meaning for). ``value`` is the product id or the order
    number; ``label`` is what the screen may show. Never the picture itself: frames are not stored."""

    kind: str
    value: str | None
    score: float
    source: str
    label: str = ""
    box: tuple[int, int, int, int] | None = None
    ts: float = field(default_factory=time.monotonic)
    # the product model's best guesses, (class index, probability), for the fusion model's image input
    top_k: tuple[tuple[int, float], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "score": round(float(self.score), 4), "source": self.source,
                "label": self.label, "box": list(self.box) if self.box else None}


@dataclass(frozen=True)
class TouchText:
    """A customer turn: typed on the touchscreen, a quick-reply button, the HTTP API, a voice transcript, or
    the "call staff" button (channel "button", no text)."""

    session: str
    text: str
    turn: int
    channel: str = "touch"
    ts: float = field(default_factory=now)
    # The audio modality of a spoken turn: (feature, value) pairs from runtime.voice.prosody (energy, pitch,
    # speaking rate), for the fusion model's emotion and frustration cues. Empty for typed turns.
    audio: tuple[tuple[str, float], ...] = ()
    # A camera turn (channel "camera"): the scan or recognition that made it.
    sighting: Sighting | None = None


@dataclass(frozen=True)
class Understanding:
    session: str
    turn: int
    text: str
    intent: str
    confidence: float
    out_of_scope: bool
    entities: tuple[dict, ...] = ()
    alternatives: tuple[tuple[str, float], ...] = ()
    product: str | None = None
    emotion: str | None = None
    channel: str = "touch"
    ts: float = field(default_factory=now)
    stage_ms: tuple[tuple[str, float], ...] = ()
    audio: tuple[tuple[str, float], ...] = ()
    sighting: Sighting | None = None
    # The fusion model's cues when it ran: P(the question points at what the camera shows), P(frustrated).
    refers_to_view: float | None = None
    frustration: float | None = None


@dataclass(frozen=True)
class Action:
    """What dialogue decided: the reply to show and what else to do (hand off, end the session)."""

    session: str
    turn: int
    kind: str  # answer | ask_slot | confirm | clarify | handoff | out_of_scope | end | error
    reply: str
    understanding: Understanding | None = None
    cards: tuple[dict, ...] = ()
    quick_replies: tuple[dict, ...] = ()
    handoff: bool = False
    handoff_reason: str | None = None
    end_session: bool = False
    ts: float = field(default_factory=now)


@dataclass(frozen=True)
class Reply:
    """What the screen shows (and, with voice, what the speaker says)."""

    session: str
    turn: int
    text: str
    intent: str
    confidence: float
    entities: tuple[dict, ...] = ()
    cards: tuple[dict, ...] = ()
    quick_replies: tuple[dict, ...] = ()
    handoff: bool = False
    end_session: bool = False
    stage_ms: tuple[tuple[str, float], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "reply": self.text,
            "intent": self.intent,
            "confidence": round(float(self.confidence), 4),
            "entities": list(self.entities),
            "cards": list(self.cards),
            "quick_replies": list(self.quick_replies),
            "handoff": bool(self.handoff),
            "session": self.session,
            "turn": self.turn,
        }
