"""The dialogue manager against small fakes: the logic (slots, confirmation, context, clarification,
hand-off) independent of the shipped KB. Scenarios over the real kiosk are in test_scenarios.py."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runtime.dialogue import DialogueError, DialogueManager, Services, load_dialogue
from runtime.events import Understanding
from runtime.paths import data_dir
from runtime.sessions import SessionState

DIALOGUE = data_dir() / "dialogue" / "dialogue.yml"


@dataclass(frozen=True)
class P:
    id: str
    name: str
    price: float
    aisle: str
    coarse_name: str = "Milk"
    unit: str = "each"
    tags: tuple = ()
    allergens: tuple = ()
    goes_with: tuple = ()
    description: str = ""
    display_name: str = ""
    image: str = ""


@dataclass(frozen=True)
class F:
    id: str
    title: str
    answer: str


class FakeKB:
    def __init__(self):
        self.products = [P("oat-milk", "Oat milk", 1.99, "4", tags=("vegan",), allergens=("oats",), goes_with=("muesli",)),
                         P("muesli", "Muesli", 3.49, "6", coarse_name="Cereal"),
                         P("cheap-oat", "Store oat drink", 0.99, "4")]
        self.faqs = [F(i, i.title(), f"Answer about {i}.") for i in (
            "opening-hours", "returns", "refund-policy", "payment-methods", "delivery-options", "delivery-period",
            "cancellation-fee", "contact", "newsletter", "invoices", "complaints", "account", "shipping-address",
            "click-and-collect", "store-services")]

    def product(self, pid):
        return next((p for p in self.products if p.id == pid), None)

    def find_products(self, name):
        return [p for p in self.products if p.name.lower() == name.lower() or p.id == name]

    def faq(self, fid):
        return next((f for f in self.faqs if f.id == fid), None)


@dataclass
class Order:
    order_id: str
    status: str
    cancellable: bool = True

    def as_card(self):
        return {"type": "order", "order_id": self.order_id, "status": self.status, "source": f"orders:{self.order_id}"}


@dataclass
class FakeOrders:
    orders: dict = field(default_factory=lambda: {"113542617735902": Order("113542617735902", "processing"),
                                                  "00004587345": Order("00004587345", "shipped", False)})
    cancelled: list = field(default_factory=list)

    def normalize_id(self, text):
        return text.strip().lstrip("#")

    def get(self, oid):
        return self.orders.get(oid)

    def cancel(self, oid):
        self.cancelled.append(oid)
        self.orders[oid] = Order(oid, "cancelled", False)
        return self.orders[oid]


class Rec:
    def __init__(self, kb):
        self.kb = kb

    def similar(self, pid, k=3):
        return [p for p in self.kb.products if p.id != pid][:k]

    def goes_with(self, pid, k=3):
        return [self.kb.product(g) for g in self.kb.product(pid).goes_with]

    def cheaper(self, pid, k=3):
        me = self.kb.product(pid)
        return [p for p in self.kb.products if p.price < me.price and p.coarse_name == me.coarse_name]


@pytest.fixture
def dm():
    kb = FakeKB()
    orders = FakeOrders()
    m = DialogueManager(load_dialogue(DIALOGUE), Services(kb=kb, orders=orders, recommender=Rec(kb)))
    return m, orders


def U(text, intent, conf=0.95, oos=False, ents=(), alts=None, turn=1):
    alts = alts if alts is not None else ((intent, conf),)
    return Understanding("s", turn, text, intent, conf, oos, tuple(ents), tuple(alts))


def prod(v):
    return {"type": "product", "value": v}


def test_find_then_price_in_context(dm):
    m, _ = dm
    st = SessionState("s")
    a = m.handle(U("where is the oat milk", "find_product", ents=[prod("Oat milk")]), st)
    assert "aisle 4" in a.reply and a.cards[0]["type"] == "product" and a.cards[0]["source"] == "catalog:oat-milk"
    b = m.handle(U("and how much is it?", "product_price"), st)
    assert "€1.99" in b.reply
    c = m.handle(U("is it vegan?", "product_info"), st)
    assert c.reply.startswith("Yes") and "vegan" in c.reply
    d = m.handle(U("does it have gluten", "product_info"), st)
    assert "isn't listed as containing gluten" in d.reply


def test_order_slot_filling_with_reprompt_then_handoff(dm):
    m, _ = dm
    st = SessionState("s")
    a = m.handle(U("where is my order", "track_order"), st)
    assert a.kind == "ask_slot" and st.pending["kind"] == "slot"
    b = m.handle(U("I don't know", "oos", 0.3, oos=True), st)
    assert b.kind == "ask_slot"
    c = m.handle(U("it's 113542617735902", "track_order"), st)
    assert c.kind == "answer" and c.cards[0]["order_id"] == "113542617735902"
    m.handle(U("track my order", "track_order"), st)
    for _ in range(2):
        m.handle(U("hmm", "oos", 0.2, oos=True), st)
    e = m.handle(U("hmm", "oos", 0.2, oos=True), st)
    assert e.handoff and e.handoff_reason == "failures"


def test_cancel_needs_explicit_yes(dm):
    m, orders = dm
    st = SessionState("s")
    a = m.handle(U("cancel order 113542617735902", "cancel_order", ents=[{"type": "order_id", "value": "113542617735902"}]), st)
    assert a.kind == "confirm" and not orders.cancelled
    b = m.handle(U("what time do you close", "store_hours"), st)  # moving on never cancels
    assert not orders.cancelled and st.pending is None and b.kind == "answer"
    m.handle(U("cancel order 113542617735902", "cancel_order", ents=[{"type": "order_id", "value": "113542617735902"}]), st)
    c = m.handle(U("no", "deny"), st)
    assert "left order" in c.reply and not orders.cancelled
    m.handle(U("cancel order 113542617735902", "cancel_order", ents=[{"type": "order_id", "value": "113542617735902"}]), st)
    d = m.handle(U("yes", "affirm"), st)
    assert orders.cancelled == ["113542617735902"] and "cancelled" in d.reply


def test_shipped_order_cannot_be_cancelled(dm):
    m, orders = dm
    a = m.handle(U("cancel 00004587345", "cancel_order", ents=[{"type": "order_id", "value": "00004587345"}]), SessionState("s"))
    assert "can't cancel" in a.reply and not orders.cancelled


def test_low_confidence_offers_top_readings(dm):
    m, _ = dm
    st = SessionState("s")
    a = m.handle(U("my money", "get_refund", 0.3, alts=(("get_refund", 0.3), ("track_refund", 0.25), ("payment_issue", 0.2))), st)
    assert a.kind == "clarify"
    labels = [q["label"] for q in a.quick_replies]
    assert labels[:3] == ["Get a refund", "Refund status", "A payment problem"] and labels[-1] == "Call staff"
    b = m.handle(U("Refund status", "track_refund", 0.4), st)
    assert b.understanding.intent == "track_refund" and b.cards[0]["source"] == "faq:refund-policy"


def test_repeated_failures_and_frustration_hand_off(dm):
    m, _ = dm
    st = SessionState("s")
    a = m.handle(U("blorp", "oos", 0.9, oos=True), st)
    assert a.kind == "out_of_scope" and not a.handoff and any(q["label"] == "Call staff" for q in a.quick_replies)
    b = m.handle(U("zzz", "oos", 0.9, oos=True), st)
    assert b.handoff and b.handoff_reason == "failures"
    c = m.handle(U("this is useless!!!", "complaint"), SessionState("t"))
    assert c.handoff and c.handoff_reason == "frustration"
    d = m.handle(U("can I talk to a person", "contact_human_agent"), SessionState("u"))
    assert d.handoff and d.handoff_reason == "request" and d.cards[0]["type"] == "staff"


def test_two_frustrated_turns_in_a_row_call_staff_one_does_not(dm):
    import dataclasses

    m, _ = dm
    st = SessionState("s")
    angry = lambda text, intent, **kw: dataclasses.replace(U(text, intent, **kw), emotion="frustrated")  # noqa: E731
    a = m.handle(angry("where is the oat milk", "find_product", ents=[prod("Oat milk")]), st)
    assert not a.handoff and "aisle 4" in a.reply  # one tense turn still gets its answer
    b = m.handle(dataclasses.replace(U("and the price", "product_price"), emotion="calm"), st)
    assert not b.handoff  # calm again: the count starts over
    m.handle(angry("where is the oat milk", "find_product", ents=[prod("Oat milk")]), st)
    c = m.handle(angry("how much is it", "product_price"), st)
    assert c.handoff and c.handoff_reason == "frustration" and st.frustrated_turns == 0


def test_a_product_in_view_answers_this_one_and_a_named_product_wins(dm):
    import dataclasses

    m, _ = dm
    st = SessionState("s")
    st.camera = True
    a = m.handle(dataclasses.replace(U("is this vegan?", "product_info"), product="oat-milk"), st)
    assert "vegan" in a.reply and a.cards[0]["source"] == "catalog:oat-milk"
    # no "this/it": the view counts only when the fusion model said the question points at it
    b = m.handle(dataclasses.replace(U("how much?", "product_price"), product="oat-milk", refers_to_view=0.9), st)
    assert "€1.99" in b.reply
    c = m.handle(dataclasses.replace(U("how much is the oat milk", "product_price", ents=[prod("Oat milk")]),
                                     product="banana"), st)
    assert "€1.99" in c.reply  # named beats in view
    d = m.handle(U("what is this?", "product_info"), SessionState("t", camera=True))
    assert d.kind == "ask_slot" and "can't see a product" in d.reply


def test_an_unsure_recognition_is_confirmed_before_it_is_answered_about(dm):
    import dataclasses

    from runtime.events import Sighting

    m, _ = dm
    unsure = Sighting("product", "oat-milk", 0.55, "recognizer", "Oat milk")
    sure = Sighting("product", "oat-milk", 0.95, "recognizer", "Oat milk")
    for answer, expect in (("yes", "€1.99"), ("no", "don't recognize")):
        st = SessionState("s", camera=True, in_view=unsure)
        q = m.handle(dataclasses.replace(U("how much is this?", "product_price"), product="oat-milk", sighting=unsure), st)
        assert q.kind == "confirm" and "Is this" in q.reply and q.cards[0]["source"] == "catalog:oat-milk"
        a = m.handle(U(answer, "affirm" if answer == "yes" else "deny"), st)
        assert expect in a.reply, a.reply
        assert (st.in_view is not None and st.in_view.source == "confirmed") == (answer == "yes")
    st = SessionState("s", camera=True, in_view=sure)
    direct = m.handle(dataclasses.replace(U("how much is this?", "product_price"), product="oat-milk", sighting=sure), st)
    assert "€1.99" in direct.reply and st.pending is None  # confident: no extra question
    scanned = Sighting("product", "oat-milk", 1.0, "barcode", "Oat milk")
    st = SessionState("s", camera=True)
    shown = m.handle(dataclasses.replace(U("[showed: Oat milk]", "product_info"), product="oat-milk", channel="camera",
                                         sighting=unsure), st)
    assert shown.kind == "confirm"
    assert "€1.99" in m.handle(U("yes", "affirm"), st).reply
    assert m.handle(dataclasses.replace(U("[scanned]", "product_info"), product="oat-milk", channel="camera",
                                        sighting=scanned), SessionState("t")).kind == "answer"


def test_recommendations(dm):
    m, _ = dm
    st = SessionState("s")
    a = m.handle(U("what goes with oat milk", "product_info", ents=[prod("Oat milk")]), st)
    assert "Muesli" in a.reply
    b = m.handle(U("something cheaper?", "product_price"), SessionState("x", last_product="oat-milk"))
    assert "Store oat drink" in b.reply and "€0.99" in b.reply


def test_goodbye_ends_and_repeat(dm):
    m, _ = dm
    st = SessionState("s")
    m.handle(U("hi", "greet"), st)
    r = m.handle(U("say that again", "repeat"), st)
    assert r.reply.startswith(("Hello", "Hi"))
    g = m.handle(U("bye", "goodbye"), st)
    assert g.end_session


def test_action_bug_is_contained(dm):
    m, _ = dm
    m.s.orders = None  # the order system is gone
    st = SessionState("s")
    a = m.handle(U("cancel 113542617735902", "cancel_order", ents=[{"type": "order_id", "value": "113542617735902"}]), st)
    assert a.kind in ("ask_slot", "error", "answer")


def test_dialogue_file_errors_name_line(tmp_path):
    bad = tmp_path / "d.yml"
    text = DIALOGUE.read_text().replace("  greet: {say: greet}", "  greet: {say: gret}")
    bad.write_text(text)
    with pytest.raises(DialogueError) as e:
        load_dialogue(bad)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "{say: gret}" in t)
    assert f"line {line}" in str(e.value) and "gret" in str(e.value)
    bad.write_text("intents: [")
    with pytest.raises(DialogueError, match="line"):
        load_dialogue(bad)


def test_every_model_intent_has_a_rule():
    import json

    from runtime.paths import default_bundle_dir

    labels = json.loads((Path(default_bundle_dir()) / "manifest.json").read_text())["models"]["intent"]["labels"]
    load_dialogue(DIALOGUE, labels)  # raises if one is missing
    with pytest.raises(DialogueError, match="no rule"):
        load_dialogue(DIALOGUE, [*labels, "brand_new_intent"])
