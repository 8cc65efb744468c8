"""The dialogue manager: one ``Understanding`` and the session's state in, one ``Action`` out.

What to say lives in ``data/dialogue/dialogue.yml``; this module only knows *how* to do the built-in actions
(look a product up, fill an order number, confirm a cancellation, hand off). It is synchronous and does no
I/O beyond the KB and order lookups, so the loop can time it as one stage.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.dialogue.spec import DialogueSpec, IntentRule
from runtime.events import Action, Understanding
from runtime.orders import normalize_id  # what counts as an order number in a customer's words
from runtime.sessions import SessionState

log = logging.getLogger("storeclerk.dialogue")

_FACTS = (  # (pattern, tag or allergen, wording, kind) — kind "tag": a dietary claim; "allergen": contains
    (re.compile(r"\bvegan\b", re.I), "vegan", "vegan", "tag"),
    (re.compile(r"\bvegetarian\b", re.I), "vegetarian", "vegetarian", "tag"),
    (re.compile(r"\bgluten[- ]?free\b", re.I), "gluten-free", "gluten-free", "tag"),
    (re.compile(r"\blactose[- ]?free\b|\bdairy[- ]?free\b", re.I), "lactose-free", "lactose-free", "tag"),
    (re.compile(r"\borganic\b|\beco\b|\bbio\b", re.I), "organic", "organic", "tag"),
    (re.compile(r"\bgluten\b|\bwheat\b|\bceliac|\bcoeliac", re.I), "gluten", "gluten", "allergen"),
    (re.compile(r"\bnuts?\b|\bpeanuts?\b|\balmonds?\b", re.I), "nuts", "nuts", "allergen"),
    (re.compile(r"\bsoy|\bsoya\b", re.I), "soy", "soy", "allergen"),
    (re.compile(r"\blactose\b|\bdairy\b|\bmilk\b", re.I), "milk", "milk", "allergen"),
    (re.compile(r"\boats?\b", re.I), "oats", "oats", "allergen"),
)
STATUS_TEXT = {
    "processing": "being prepared",
    "shipped": "on its way",
    "delivered": "delivered",
    "cancelled": "cancelled",
    "ready_for_pickup": "ready for pickup at the service desk",
}


# "does this contain milk?", "is it made with nuts": the word after is an ingredient, not the product asked about.
_INGREDIENT_BEFORE = re.compile(r"\b(contains?|containing|have|has|with|without|free of|made of|traces of|any)\s+(any\s+|some\s+)?$", re.I)


def _ingredient_mention(text: str, ent: dict) -> bool:
    start = ent.get("start")
    if not isinstance(start, int) or not any(kind == "allergen" and pat.search(str(ent.get("text", "")))
                                             for pat, _, _, kind in _FACTS):
        return False
    return bool(_INGREDIENT_BEFORE.search(text[:start]))


FRUSTRATED_TURNS = 2
# A recognized (not scanned) product below this calibrated probability is confirmed before it is answered about.
# Set a priori from the product model's temperature-calibrated probabilities (held-out ECE 0.025), not tuned on val.
CONFIRM_RECOGNIZED_BELOW = 0.7
DEICTIC = re.compile(r"\b(it|its|it's|this|that|they|them|those|these|one)\b", re.I)


def staff_button() -> dict:
    return {"label": "Call staff", "text": "I'd like to talk to a person"}


def _attr(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def fmt_price(price: Any, currency: str = "EUR", unit: str | None = None) -> str:
    try:
        p = float(price)
    except (TypeError, ValueError):
        return "not priced"
    sym = {"EUR": "€", "USD": "$", "GBP": "£"}.get(currency, currency + " ")
    per = f" per {unit}" if unit and unit not in ("each", "piece") else ""
    return f"{sym}{p:.2f}{per}"


def product_card(p: Any) -> dict:
    pid = _attr(p, "id")
    image = _attr(p, "image")
    return {
        "type": "product",
        "id": pid,
        "name": _attr(p, "display_name") or _attr(p, "name"),
        "price": _attr(p, "price"),
        "currency": _attr(p, "currency", "EUR"),
        "unit": _attr(p, "unit"),
        "aisle": _attr(p, "aisle"),
        "image": f"/media/products/{image}" if image else None,
        "tags": list(_attr(p, "tags", ()) or ()),
        "description": _attr(p, "description"),
        "source": f"catalog:{pid}",
    }


@dataclass
class Services:
    """What the manager looks things up in; each may be None in tests or when a part failed to load."""

    kb: Any = None  # runtime.kb.KnowledgeBase
    retriever: Any = None  # runtime.kb.HybridRetriever
    orders: Any = None  # runtime.orders.OrderSource
    recommender: Any = None  # runtime.recommend.Recommender
    clock: Callable[[], Any] | None = None  # datetime for opening hours


class DialogueManager:
    def __init__(self, spec: DialogueSpec, services: Services) -> None:
        self.spec = spec
        self.s = services

    # ------------------------------------------------------------------------------------------ entry point
    def handle(self, u: Understanding, st: SessionState) -> Action:
        try:
            act = self._sighting(u, st) if u.channel == "camera" else self._handle(u, st)
        except Exception:  # a bug in one action must not take the kiosk down: apologise and offer a person
            log.exception("dialogue failed on intent %s", u.intent)
            act = self._act(u, "error", self.spec.text("error"), quick=(staff_button(),))
        st.last_intent = u.intent
        st.last_reply = act.reply
        return act

    def _handle(self, u: Understanding, st: SessionState) -> Action:
        if not u.text.strip():
            return self._act(u, "answer", self.spec.text("empty"))
        if any(p.search(u.text) for p in self.spec.frustration):
            return self.handoff(u, st, "frustration")
        # The fusion model's frustration cue (words, voice, face) is a guess per turn (F1 ≈ 0.5–0.6 on composed
        # data, docs/fusion.md): one frustrated-sounding turn does not call staff, two in a row do.
        st.frustrated_turns = st.frustrated_turns + 1 if u.emotion == "frustrated" else 0
        if st.frustrated_turns >= FRUSTRATED_TURNS:
            return self.handoff(u, st, "frustration")
        if st.pending:
            act = self._pending(u, st)
            if act is not None:
                return act
        rec = self._recommendation(u, st)
        if rec is not None:
            return rec
        if u.out_of_scope:
            return self._not_understood(u, st)
        if u.confidence < self.spec.clarify_below and len(u.alternatives) > 1:
            return self._clarify(u, st)
        return self._intent(u, st, u.intent)

    # ----------------------------------------------------------------------------------------- helpers
    def _act(self, u: Understanding, kind: str, reply: str, *, cards=(), quick=(), handoff=False, reason=None,
             end=False) -> Action:
        return Action(u.session, u.turn, kind, reply, u, tuple(cards), tuple(quick), handoff, reason, end)

    def _rule(self, intent: str) -> IntentRule | None:
        return self.spec.intents.get(intent)

    def _entity(self, u: Understanding, type_: str) -> str | None:
        for e in u.entities:
            if e.get("type") == type_:
                return str(e.get("value"))
        return None

    def _faq_card(self, entry_id: str, card_text: bool = False) -> tuple[str, dict] | None:
        """(answer, info card). The card repeats the answer only when asked (``card_text``): when the reply
        already says it, the card just names and cites the entry."""
        kb = self.s.kb
        if kb is None:
            return None
        key = entry_id.split(":", 1)[1] if ":" in entry_id else entry_id
        try:
            f = kb.faq(key)
        except KeyError:
            f = None
        if f is None:
            return None
        card = {"type": "info", "title": _attr(f, "title"), "text": _attr(f, "answer") if card_text else "", "source": f"faq:{key}"}
        return _attr(f, "answer"), card

    # ----------------------------------------------------------------------------------------- pending
    def _pending(self, u: Understanding, st: SessionState) -> Action | None:
        p = st.pending or {}
        kind = p.get("kind")
        if kind == "clarify":
            st.pending = None
            choice = p.get("options", {}).get(u.text.strip().lower())
            if choice:
                return self._intent(u, st, choice)
            return None
        if kind == "confirm":
            if u.intent == "affirm" or re.fullmatch(r"\s*(yes|yeah|yep|sure|ok(ay)?|please do|do it)\W*", u.text, re.I):
                st.pending = None
                return self._do_cancel(u, st, p["order_id"])
            if u.intent == "deny" or re.fullmatch(r"\s*(no|nope|don'?t|no thanks?|keep it|leave it)\W*", u.text, re.I):
                st.pending = None
                return self._act(u, "answer", self.spec.text("kept", order_id=p["order_id"]))
            st.pending = None  # the customer moved on: never cancel on an unclear answer
            return None
        if kind == "confirm_product":
            st.pending = None
            yes = u.intent == "affirm" or re.fullmatch(r"\s*(yes|yeah|yep|right|correct|that'?s (it|right)|it is)\W*", u.text, re.I)
            no = u.intent == "deny" or re.fullmatch(r"\s*(no|nope|wrong|not (it|that|really))\W*", u.text, re.I)
            if yes:  # the customer vouched for it: it is "this one" now, and the question they asked gets its answer
                if st.in_view is not None and st.in_view.value == p["product"]:
                    st.in_view = dataclasses.replace(st.in_view, score=1.0, source="confirmed")
                if not p["text"]:  # it was shown, not asked about: say what it is
                    return self._seen(u, st, p["product"])
                asked = dataclasses.replace(u, text=p["text"], product=p["product"], refers_to_view=1.0)
                return self._intent(asked, st, p["intent"])
            if no:
                st.in_view = None
                return self._act(u, "ask_slot", self.spec.text("product_not_recognized"), quick=(staff_button(),))
            return None  # a new question instead of an answer: handle it as one
        if kind == "slot":
            value = self._order_id(u, {})
            if value:
                st.pending = None
                return self._intent(u, st, p["intent"], order_id=value)
            if not u.out_of_scope and u.intent not in (p["intent"], "affirm", "deny") and u.confidence >= 0.8:
                st.pending = None  # a clear new request wins over the question we asked
                return None
            if u.intent == "deny":
                st.pending = None
                return self._act(u, "answer", self.spec.text("deny"))
            p["retries"] = p.get("retries", 0) + 1
            if p["retries"] > self.spec.slot_retries:
                st.pending = None
                return self.handoff(u, st, "failures")
            return self._act(u, "ask_slot", self.spec.text("reprompt_order_id"), quick=(staff_button(),))
        st.pending = None
        return None


    # ------------------------------------------------------------------------------------- understanding
    def _not_understood(self, u: Understanding, st: SessionState) -> Action:
        hit = self._confident_search(u.text)
        if hit is not None:
            st.failures = 0
            return hit(u)
        st.failures += 1
        if st.failures >= self.spec.max_failures:
            return self.handoff(u, st, "failures")
        quick = [staff_button(), {"label": self.spec.labels.get("help", "Help"), "text": "what can you do?"}]
        return self._act(u, "out_of_scope", self.spec.text("out_of_scope"), quick=quick)

    def _clarify(self, u: Understanding, st: SessionState) -> Action:
        options: dict[str, str] = {}
        quick = []
        for intent, _p in u.alternatives[:3]:
            label = self.spec.labels.get(intent)
            if label and intent in self.spec.intents and label.lower() not in options:
                options[label.lower()] = intent
                quick.append({"label": label, "text": label})
        if len(quick) < 2:
            return self._intent(u, st, u.intent)
        st.pending = {"kind": "clarify", "options": options, "text": u.text}
        quick.append(staff_button())
        return self._act(u, "clarify", self.spec.text("clarify"), quick=quick)

    def _confident_search(self, text: str):
        """A KB answer for text the intent model did not place, only when BM25 and the encoder agree on the
        same entry (two independent signals; a hand-set score threshold would not transfer across stores)."""
        r = self.s.retriever
        if r is None or not hasattr(r, "agreeing_hit"):
            return None
        hit = r.agreeing_hit(text)
        if hit is None:
            return None

        def act(u: Understanding) -> Action:
            return self._answer_from_hit(u, hit)

        return act

    def _answer_from_hit(self, u: Understanding, hit: Any) -> Action:
        entry = _attr(hit, "entry_id", "")
        if entry.startswith("catalog:") and self.s.kb is not None:
            p = self.s.kb.product(entry.split(":", 1)[1])
            if p is not None:
                return self._act(u, "answer", self.spec.text("product_location", name=_attr(p, "display_name") or _attr(p, "name"),
                                                             aisle=_attr(p, "aisle")), cards=(product_card(p),))
        faq = self._faq_card(entry)
        if faq is None:
            return self._act(u, "answer", self.spec.text("search_answer", answer=_attr(hit, "text", "")))
        return self._act(u, "answer", self.spec.text("search_answer", answer=faq[0]), cards=(faq[1],))

    # ------------------------------------------------------------------------------------------- intents
    def _intent(self, u: Understanding, st: SessionState, intent: str, **slots: str) -> Action:
        rule = self._rule(intent)
        if rule is None:
            return self._not_understood(u, st)
        st.failures = 0
        quick = (staff_button(),) if rule.offer_staff else ()
        if rule.say:
            return self._act(u, "end" if rule.end else "answer", self.spec.text(rule.say), quick=quick, end=rule.end)
        if rule.answer:
            faq = self._faq_card(rule.answer)
            if faq is None:
                log.error("dialogue refers to %s, which the KB does not have", rule.answer)
                return self._act(u, "answer", self.spec.text("error"), quick=(staff_button(),))
            return self._act(u, "answer", faq[0], cards=(faq[1],), quick=quick, end=rule.end)
        action = getattr(self, f"_a_{rule.action}")
        return action(u, st, rule, **slots)

    # ------------------------------------------------------------------------------------------- actions
    def handoff(self, u: Understanding, st: SessionState, reason: str) -> Action:
        st.handed_off = True
        st.failures = st.frustrated_turns = 0
        st.pending = None
        key = {"failures": "handoff_failures", "frustration": "handoff_frustration"}.get(reason, "handoff")
        card = {"type": "staff", "text": "Someone is coming to help you.", "source": None}
        return self._act(u, "handoff", self.spec.text(key), cards=(card,), handoff=True, reason=reason)

    def _a_handoff(self, u, st, rule, **_):
        return self.handoff(u, st, "request")

    def _a_out_of_scope(self, u, st, rule, **_):
        return self._not_understood(u, st)

    def _a_repeat(self, u, st, rule, **_):
        if st.last_reply:
            return self._act(u, "answer", st.last_reply)
        return self._act(u, "answer", self.spec.text("nothing_to_repeat"))

    def _a_search(self, u, st, rule, **_):
        r = self.s.retriever
        hits = r.search(u.text, k=1, kinds=("faq",)) if r is not None else []
        if hits:
            return self._answer_from_hit(u, hits[0])
        if rule.fallback:
            faq = self._faq_card(rule.fallback)
            if faq:
                return self._act(u, "answer", faq[0], cards=(faq[1],))
        return self._not_understood(u, st)

    def _a_store_hours(self, u, st, rule, **_):
        kb = self.s.kb
        store = _attr(kb, "store")
        today = None
        if store is not None and hasattr(store, "hours_text"):
            try:
                today = store.hours_text(self.s.clock() if self.s.clock else None)
            except Exception:  # an odd hours table must not stop the answer; the FAQ entry still has it
                log.exception("hours_text failed")
        faq = self._faq_card("faq:opening-hours", card_text=True)
        text = today or (faq[0] if faq else self.spec.text("error"))
        return self._act(u, "answer", self.spec.text("store_hours", today=text), cards=(faq[1],) if faq else ())

    # products ------------------------------------------------------------------------------------------
    def _products(self, u: Understanding, st: SessionState) -> list[Any]:
        kb = self.s.kb
        if kb is None:
            return []
        found: list[Any] = []
        # A named product first; a category ("potatoes", "yoghurt") gives the products in it.
        ents = sorted((e for e in u.entities if e.get("type") in ("product", "product_category")
                       and not _ingredient_mention(u.text, e)),
                      key=lambda e: e.get("type") != "product")
        for e in ents:
            if found and e.get("type") == "product_category":
                break
            for p in kb.find_products(str(e.get("value"))):
                    if all(_attr(p, "id") != _attr(q, "id") for q in found):
                        found.append(p)
        deictic = bool(DEICTIC.search(u.text))
        # The loop keeps ``u.product`` for a question without "this/it" only when the fusion model says it points
        # at the view ("how much?" with a pack held up); otherwise the word decides.
        points = deictic or (u.product is not None and u.refers_to_view is not None)
        if not found and points and u.product:  # "is this gluten-free?" with a product in view or just scanned
            p = kb.product(u.product)
            if p is not None:
                return [p]
        if not found and self.s.retriever is not None and not deictic:
            hits = self.s.retriever.search(u.text, k=1, kinds=("product",))
            if hits and getattr(self.s.retriever, "agreeing_hit", None) and self.s.retriever.agreeing_hit(u.text, kinds=("product",)):
                p = kb.product(hits[0].entry_id.split(":", 1)[1])
                if p is not None:
                    found.append(p)
        if not found and st.last_product:
            p = kb.product(st.last_product)
            if p is not None:
                found.append(p)
        return found

    def _price(self, p: Any) -> str:
        return fmt_price(_attr(p, "price"), _attr(p, "currency", "EUR"), _attr(p, "unit"))

    def _name(self, p: Any) -> str:
        return _attr(p, "display_name") or _attr(p, "name") or "that"

    def _seen(self, u: Understanding, st: SessionState, pid: str) -> Action:
        p = self.s.kb.product(pid)
        if p is None:
            return self._act(u, "answer", self.spec.text("product_not_recognized"), quick=(staff_button(),))
        st.last_product = _attr(p, "id")
        text = self.spec.text("product_seen", name=self._name(p), price=self._price(p), aisle=_attr(p, "aisle"))
        return self._act(u, "answer", text, cards=(product_card(p),))

    def _unsure_view(self, u: Understanding, st: SessionState, found: list[Any]) -> Action | None:
        """The answer would rest on a product the model recognized without much confidence (no barcode): ask
        "Is this X?" first. A wrong answer about the wrong product costs more than one tap (docs/vision.md)."""
        seen = u.sighting
        if not found or seen is None or seen.kind != "product" or seen.source != "recognizer" \
                or seen.score >= CONFIRM_RECOGNIZED_BELOW or _attr(found[0], "id") != u.product \
                or self._entity(u, "product"):
            return None
        p = found[0]
        st.pending = {"kind": "confirm_product", "product": _attr(p, "id"), "intent": u.intent, "text": u.text}
        quick = ({"label": "Yes", "text": "yes"}, {"label": "No", "text": "no"})
        return self._act(u, "confirm", self.spec.text("confirm_product", name=self._name(p)), cards=(product_card(p),),
                         quick=quick)

    def _a_find_product(self, u, st, rule, **_):
        found = self._products(u, st)
        unsure = self._unsure_view(u, st, found)
        if unsure is not None:
            return unsure
        if not found:
            return self._unknown_product(u, st)
        st.last_product = _attr(found[0], "id")
        cards = [product_card(p) for p in found[:3]]
        if len(found) == 1 or len({_attr(p, "aisle") for p in found[:3]}) == 1:
            text = self.spec.text("product_location", name=self._name(found[0]), aisle=_attr(found[0], "aisle"))
        else:
            names = ", ".join(f"{self._name(p)} (aisle {_attr(p, 'aisle')})" for p in found[:3])
            text = self.spec.text("product_locations", names=names)
        return self._act(u, "answer", text, cards=cards)

    def _unknown_product(self, u: Understanding, st: SessionState) -> Action:
        what = self._entity(u, "product")
        if not what and st.camera and DEICTIC.search(u.text):
            # The customer points at something: say what the camera made of it rather than "which product?".
            seen = u.sighting
            key = "product_not_recognized" if seen is not None and seen.kind == "unknown" else "nothing_in_view"
            return self._act(u, "ask_slot", self.spec.text(key), quick=(staff_button(),))
        if what:
            return self._act(u, "answer", self.spec.text("product_unknown", what=what), quick=(staff_button(),))
        return self._act(u, "ask_slot", self.spec.text("ask_product"))

    def _a_product_price(self, u, st, rule, **_):
        found = self._products(u, st)
        unsure = self._unsure_view(u, st, found)
        if unsure is not None:
            return unsure
        if not found:
            return self._unknown_product(u, st)
        p = found[0]
        st.last_product = _attr(p, "id")
        return self._act(u, "answer", self.spec.text("product_price", name=self._name(p), price=self._price(p)), cards=(product_card(p),))

    def _a_product_info(self, u, st, rule, **_):
        found = self._products(u, st)
        unsure = self._unsure_view(u, st, found)
        if unsure is not None:
            return unsure
        if not found:
            return self._unknown_product(u, st)
        p = found[0]
        st.last_product = _attr(p, "id")
        tags = {t.lower() for t in _attr(p, "tags", ()) or ()}
        allergens = {a.lower() for a in _attr(p, "allergens", ()) or ()}
        for pat, key, wording, kind in _FACTS:
            if not pat.search(u.text):
                continue
            if kind == "tag":
                text = self.spec.text("product_fact_yes" if key in tags else "product_fact_no", name=self._name(p), fact=wording)
            else:
                text = self.spec.text("product_contains" if key in allergens else "product_free_of", name=self._name(p), fact=wording)
            return self._act(u, "answer", text, cards=(product_card(p),))
        desc = _attr(p, "description") or self._name(p)
        return self._act(u, "answer", self.spec.text("product_info", description=desc, name=self._name(p)), cards=(product_card(p),))

    # the camera -----------------------------------------------------------------------------------------
    def _sighting(self, u: Understanding, st: SessionState) -> Action:
        """A camera turn: a deliberate scan (or a product recognized and held steady): show what it is. An order
        code answers the order question pending in the conversation (a cancellation waiting for its number) or its
        status."""
        s = u.sighting
        kind = s.kind if s is not None else None
        if kind == "product" and self.s.kb is not None:
            p = self.s.kb.product(u.product or "")
            if p is not None:
                return self._unsure_view(dataclasses.replace(u, text=""), st, [p]) or self._seen(u, st, _attr(p, "id"))
        if kind == "order" and s is not None and s.value:
            p = st.pending or {}
            intent = p.get("intent") if p.get("kind") == "slot" and p.get("slot") == "order_id" else "track_order"
            st.pending = None
            return self._intent(u, st, intent, order_id=s.value)
        if kind == "unknown":
            return self._act(u, "answer", self.spec.text("product_not_recognized"), quick=(staff_button(),))
        return self._act(u, "answer", self.spec.text("code_unknown"))

    # recommendations -------------------------------------------------------------------------------------
    def _recommendation(self, u: Understanding, st: SessionState) -> Action | None:
        rec = self.s.recommender
        if rec is None or not self.spec.recommend:
            return None
        kind = next((k for k, pat in self.spec.recommend.items() if pat.search(u.text)), None)
        if kind is None:
            return None
        found = self._products(u, st)
        if not found:
            return None
        p = found[0]
        st.last_product = _attr(p, "id")
        picks: Sequence[Any] = getattr(rec, kind)(_attr(p, "id"), k=3)
        if not picks:
            return self._act(u, "answer", self.spec.text("recommend_none", name=self._name(p)), cards=(product_card(p),))
        names = ", ".join(self._name(q) for q in picks)
        if kind == "cheaper":
            names = ", ".join(f"{self._name(q)} ({self._price(q)})" for q in picks)
        text = self.spec.text(f"recommend_{kind}", name=self._name(p), names=names)
        st.last_product = _attr(picks[0], "id")
        return self._act(u, "answer", text, cards=[product_card(q) for q in picks])

    # orders ------------------------------------------------------------------------------------------------
    def _order_id(self, u: Understanding, slots: dict) -> str | None:
        return slots.get("order_id") or self._entity(u, "order_id") or normalize_id(u.text)

    def _ask_order(self, u, st, intent: str) -> Action:
        st.pending = {"kind": "slot", "slot": "order_id", "intent": intent, "retries": 0}
        return self._act(u, "ask_slot", self.spec.text("ask_order_id"))

    def _lookup(self, order_id: str):
        src = self.s.orders
        if src is None:
            return None
        norm = src.normalize_id(order_id) if hasattr(src, "normalize_id") else order_id
        return src.get(norm) if norm else None

    def _order_or_ask(self, u, st, rule, slots) -> tuple[Any, Action | None]:
        """The order the turn names, or the action that asks for (or re-asks) its number."""
        oid = self._order_id(u, slots)
        if not oid:
            return None, self._ask_order(u, st, rule.intent)
        order = self._lookup(oid)
        if order is None:
            st.pending = {"kind": "slot", "slot": "order_id", "intent": rule.intent, "retries": 1}
            return None, self._act(u, "ask_slot", self.spec.text("order_not_found", order_id=oid), quick=(staff_button(),))
        return order, None

    def _a_order_status(self, u, st, rule, **slots):
        order, ask = self._order_or_ask(u, st, rule, slots)
        if ask is not None:
            return ask
        status = _attr(order, "status", "")
        return self._act(u, "answer", self.spec.text("order_status", order_id=_attr(order, "order_id"),
                                                     status_text=STATUS_TEXT.get(status, status)), cards=(order.as_card(),))

    def _a_cancel_order(self, u, st, rule, **slots):
        order, ask = self._order_or_ask(u, st, rule, slots)
        if ask is not None:
            return ask
        oid = _attr(order, "order_id")
        if not _attr(order, "cancellable", False):
            status = _attr(order, "status", "")
            why = f"it is already {STATUS_TEXT.get(status, status)}"
            return self._act(u, "answer", self.spec.text("cancel_refused", order_id=oid, why=why), cards=(order.as_card(),),
                             quick=(staff_button(),))
        if rule.confirm:
            st.pending = {"kind": "confirm", "order_id": oid, "intent": rule.intent}
            quick = ({"label": "Yes, cancel it", "text": "yes"}, {"label": "No, keep it", "text": "no"})
            return self._act(u, "confirm", self.spec.text("confirm_cancel", order_id=oid), cards=(order.as_card(),), quick=quick)
        return self._do_cancel(u, st, oid)

    def _do_cancel(self, u: Understanding, st: SessionState, oid: str) -> Action:
        try:
            order = self.s.orders.cancel(oid)
        except Exception as exc:  # not cancellable any more (it shipped meanwhile), or the order system failed
            log.warning("cancel %s refused: %s", oid, exc)
            return self._act(u, "answer", self.spec.text("cancel_refused", order_id=oid, why=str(exc)), quick=(staff_button(),))
        return self._act(u, "answer", self.spec.text("cancelled", order_id=oid), cards=(order.as_card(),))
