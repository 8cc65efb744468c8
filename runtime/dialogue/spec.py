"""The dialogue file (``data/dialogue/dialogue.yml``): loading and validation.

Errors name the file and the line, because the person fixing them is a store operator with a text editor.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runtime.errors import ConfigError

ACTIONS = {
    "find_product", "product_price", "product_info", "store_hours", "order_status", "cancel_order", "handoff",
    "repeat", "out_of_scope", "search",
}
SLOTS = {"order_id"}
INTENT_KEYS = {"say", "answer", "action", "slot", "confirm", "end", "offer_staff", "fallback"}
REQUIRED_SAY = {
    "empty", "clarify", "out_of_scope", "handoff", "handoff_failures", "handoff_frustration", "ask_order_id",
    "reprompt_order_id", "order_not_found", "order_status", "confirm_cancel", "cancelled", "cancel_refused", "kept",
    "ask_product", "product_location", "product_locations", "product_price", "product_unknown", "product_fact_yes",
    "product_fact_no", "product_contains", "product_free_of", "product_info", "recommend_similar",
    "recommend_goes_with", "recommend_cheaper", "recommend_none", "store_hours", "search_answer",
    "nothing_to_repeat", "error",
}
# Replies an operator's file may leave out (files written before the camera existed): the kiosk's wording.
DEFAULT_SAY = {
    "product_seen": ("That's {name}: {price}, in aisle {aisle}.",),
    "product_not_recognized": ("I don't recognize this product. Could you scan its barcode, or tell me its name?",),
    "nothing_in_view": ("I can't see a product. Hold it up to the camera or scan its barcode, or tell me its name.",),
    "confirm_product": ("Is this {name}?",),
    "code_unknown": ("I can't use that code here. You can scan a product barcode or the QR code of an order.",),
}


class DialogueError(ConfigError):
    code = "dialogue"


@dataclass(frozen=True)
class IntentRule:
    intent: str
    say: str | None = None
    answer: str | None = None
    action: str | None = None
    slot: str | None = None
    confirm: bool = False
    end: bool = False
    offer_staff: bool = False
    fallback: str | None = None


@dataclass(frozen=True)
class DialogueSpec:
    path: str
    intents: Mapping[str, IntentRule]
    say: Mapping[str, tuple[str, ...]]
    labels: Mapping[str, str]
    frustration: tuple[re.Pattern, ...]
    recommend: Mapping[str, re.Pattern]
    clarify_below: float = 0.45
    max_failures: int = 2
    slot_retries: int = 2
    rng: random.Random = field(default_factory=lambda: random.Random(0), compare=False, repr=False)

    def text(self, key: str, **fields: Any) -> str:
        options = self.say[key]
        template = options[0] if len(options) == 1 else self.rng.choice(options)
        try:
            return template.format(**fields)
        except (KeyError, IndexError, ValueError):
            return template  # a template with a field we don't fill still reads as a sentence

    def answer_ids(self) -> Iterable[str]:
        for r in self.intents.values():
            for ref in (r.answer, r.fallback):
                if ref:
                    yield ref


def _line_of(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 0


def _node_map(node: yaml.Node) -> dict[str, yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}
    return {}


def load_dialogue(path: str | Path, labels: Iterable[str] | None = None) -> DialogueSpec:
    """Reads and checks the dialogue file. ``labels`` (the intent model's labels) makes a missing intent an
    error: a customer must never reach an intent the operator forgot to answer."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DialogueError(f"cannot read the dialogue file {p}: {exc}") from None
    try:
        root_node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise DialogueError(f"{p}{at}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    errors: list[str] = []
    if not isinstance(data, Mapping):
        raise DialogueError(f"{p}: expected a mapping with 'intents' and 'say'")
    nodes = _node_map(root_node)

    def err(where: yaml.Node | None, msg: str) -> None:
        errors.append(f"{p} line {_line_of(where)}: {msg}")

    say_raw = data.get("say")
    say: dict[str, tuple[str, ...]] = {}
    if not isinstance(say_raw, Mapping):
        err(nodes.get("say"), "'say' must be a mapping of reply keys to a text or a list of texts")
    else:
        say_nodes = _node_map(nodes["say"])
        for key, val in say_raw.items():
            opts = (val,) if isinstance(val, str) else tuple(val) if isinstance(val, list) else ()
            if not opts or not all(isinstance(o, str) and o.strip() for o in opts):
                err(say_nodes.get(key), f"say.{key}: expected a non-empty text or list of texts")
                continue
            say[key] = opts
        for key in sorted(REQUIRED_SAY - set(say)):
            err(nodes.get("say"), f"say.{key} is missing (the kiosk needs it)")
        for key, opts in DEFAULT_SAY.items():
            say.setdefault(key, opts)

    intents: dict[str, IntentRule] = {}
    raw = data.get("intents")
    if not isinstance(raw, Mapping):
        err(nodes.get("intents"), "'intents' must be a mapping of intent names to rules")
        raw = {}
    int_nodes = _node_map(nodes.get("intents")) if "intents" in nodes else {}
    for name, rule in raw.items():
        n = int_nodes.get(name)
        if not isinstance(rule, Mapping):
            err(n, f"intent '{name}': expected a mapping like {{say: greet}} or {{answer: faq:returns}}")
            continue
        unknown = set(rule) - INTENT_KEYS
        if unknown:
            err(n, f"intent '{name}': unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(INTENT_KEYS))})")
        kinds = [k for k in ("say", "answer", "action") if rule.get(k)]
        if len(kinds) != 1:
            err(n, f"intent '{name}': needs exactly one of say, answer, action (has {kinds or 'none'})")
            continue
        if rule.get("say") and rule["say"] not in say:
            err(n, f"intent '{name}': say '{rule['say']}' is not defined under 'say'")
        if rule.get("action") and rule["action"] not in ACTIONS:
            err(n, f"intent '{name}': unknown action '{rule['action']}' (known: {', '.join(sorted(ACTIONS))})")
        for ref_key in ("answer", "fallback"):
            ref = rule.get(ref_key)
            if ref is not None and (not isinstance(ref, str) or not ref.startswith("faq:")):
                err(n, f"intent '{name}': {ref_key} must be a knowledge-base id like faq:returns, got {ref!r}")
        if rule.get("slot") is not None and rule["slot"] not in SLOTS:
            err(n, f"intent '{name}': unknown slot '{rule['slot']}' (known: {', '.join(sorted(SLOTS))})")
        for flag in ("confirm", "end", "offer_staff"):
            if flag in rule and not isinstance(rule[flag], bool):
                err(n, f"intent '{name}': {flag} must be true or false")
        intents[name] = IntentRule(
            name, rule.get("say"), rule.get("answer"), rule.get("action"), rule.get("slot"), bool(rule.get("confirm")),
            bool(rule.get("end")), bool(rule.get("offer_staff")), rule.get("fallback"),
        )
    for name in sorted(set(labels or ()) - set(intents)):
        err(nodes.get("intents"), f"intent '{name}' (known to the model) has no rule")

    def patterns(key: str, values: Any) -> list[re.Pattern]:
        out = []
        for v in values if isinstance(values, list) else [values]:
            try:
                out.append(re.compile(v, re.IGNORECASE))
            except (re.error, TypeError) as exc:
                err(nodes.get(key), f"{key}: {v!r} is not a valid regular expression ({exc})")
        return out

    frustration = patterns("frustration", data.get("frustration") or [])
    rec_raw = data.get("recommend") or {}
    recommend: dict[str, re.Pattern] = {}
    if not isinstance(rec_raw, Mapping) or set(rec_raw) - {"similar", "goes_with", "cheaper"}:
        err(nodes.get("recommend"), "recommend: expected keys similar, goes_with, cheaper")
    else:
        for k, v in rec_raw.items():
            pats = patterns("recommend", v)
            if pats:
                recommend[k] = pats[0]
    labels_map = data.get("labels") or {}
    if not isinstance(labels_map, Mapping) or not all(isinstance(v, str) for v in labels_map.values()):
        err(nodes.get("labels"), "labels: expected intent: button text")
        labels_map = {}

    def number(key: str, default: float, lo: float, hi: float) -> float:
        v = data.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            err(nodes.get(key), f"{key}: expected a number between {lo} and {hi}, got {v!r}")
            return default
        return v

    clarify = number("clarify_below", 0.45, 0.0, 1.0)
    max_failures = int(number("max_failures", 2, 1, 20))
    retries = int(number("slot_retries", 2, 0, 10))
    if errors:
        raise DialogueError("; ".join(errors[:20]) + (f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""))
    return DialogueSpec(str(p), intents, say, dict(labels_map), tuple(frustration), recommend, clarify, max_failures, retries)
