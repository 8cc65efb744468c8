"""Tests for runtime/kb: the shipped knowledge base, validation (file and line for every problem), store hours,
hybrid retrieval (a deterministic fake encoder, plus one check with the real bundle encoder), hot reload,
and the ``kb validate`` report."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import ConfigError
from runtime.kb import HybridRetriever, KBError, KBWatcher, KnowledgeBase, ean13_check_digit, valid_ean13
from runtime.kb.commands import cmd_kb_validate
from runtime.kb.retrieval import BM25, RetrievalConfig
from runtime.paths import data_dir

KB_DIR = Path(__file__).resolve().parents[2] / "data" / "kb"
REQUIRED_FAQ = ("opening-hours", "returns", "refund-policy", "payment-methods", "loyalty-card", "bags", "accessibility",
                "delivery-options", "delivery-period", "cancellation-fee", "contact", "newsletter", "invoices",
                "complaints", "account", "shipping-address", "parking", "gift-cards", "price-match", "toilets", "wifi",
                "bottle-return", "click-and-collect", "lost-property", "allergens-info", "store-services")


@pytest.fixture
def kb_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "kb"
    shutil.copytree(KB_DIR, dst)
    return dst


def fake_embed(texts: list[str]) -> np.ndarray:
    """Deterministic bag-of-words hashing encoder (64-d, L2-normalised): similar words, similar vectors."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in re.findall(r"[a-z]+", str(t).lower()):
            h = int(hashlib.md5(w[:5].encode()).hexdigest(), 16)
            out[i, h % 64] += 1.0 if (h >> 8) % 2 else -1.0
    n = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(n, 1e-12)


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, count), encoding="utf-8")


def line_of(path: Path, needle: str) -> int:
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


def load_error(kb_dir: Path) -> KBError:
    with pytest.raises(KBError) as ei:
        KnowledgeBase.load(kb_dir)
    return ei.value


# ------------------------------------------------------------------------------------------- shipped KB


def test_shipped_kb_loads_and_is_complete(kb: KnowledgeBase) -> None:
    assert len(kb.products) == 81
    assert 35 <= len(kb.faqs) <= 60
    for fid in REQUIRED_FAQ:
        f = kb.faq(fid)
        assert f is not None and f.answer and f.title, fid
        assert len(re.findall(r"[.!?](\s|$)", f.answer)) <= 3, fid
    assert kb.faq("faq:returns") is kb.faq("returns")
    assert kb.faq("no-such-entry") is None and kb.product("no-such-product") is None
    assert kb.store.name and kb.store.phone and kb.store.staff_call
    assert {"bakery", "parcel-pickup", "bottle-return", "click-and-collect", "atm", "toilets", "wifi"} <= {
        s.id for s in kb.store.services}
    assert not kb.warnings, kb.warnings


def test_shipped_products_are_consistent(kb: KnowledgeBase) -> None:
    ids = {p.id for p in kb.products}
    eans = set()
    for p in kb.products:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", p.id)
        assert valid_ean13(p.ean13) and 20 <= int(p.ean13[:2]) <= 29, p.ean13  # in-store range: no GS1 clash
        eans.add(p.ean13)
        assert 0 < p.price < 20 and p.currency == "EUR" and p.unit in ("each", "kg", "litre", "pack")
        assert p.aisle in kb.store.aisles and p.aisle_name == kb.store.aisles[p.aisle]
        assert set(p.goes_with) <= ids and p.id not in p.goes_with and p.goes_with
        assert (KB_DIR / "images" / p.image).stat().st_size < 100_000
        assert p.description
    assert len(eans) == len(kb.products)
    oat = kb.product("oatly-oat-milk")
    assert "vegan" in oat.tags and "oats" in oat.allergens and "milk" not in oat.allergens
    assert "milk" in kb.product("arla-lactose-medium-fat-milk").allergens  # lactose-free is still milk
    assert "lactose-free" in kb.product("arla-lactose-medium-fat-milk").tags
    assert "organic" in kb.product("banana").tags and "soy" in kb.product("alpro-fresh-soy-milk").allergens
    total = sum(f.stat().st_size for f in KB_DIR.rglob("*") if f.is_file())
    assert total < 3 * 1024 * 1024
    assert "MIT License" in (KB_DIR / "LICENSE-grocery.txt").read_text(encoding="utf-8")


def test_catalog_keeps_the_entity_columns_and_is_the_only_catalog() -> None:
    with open(KB_DIR / "catalog.csv", newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert header[:6] == ["fine_id", "coarse_id", "name", "display_name", "coarse_name", "aliases"]
    assert not (data_dir() / "catalog" / "products.csv").exists()
    from runtime.entities import EntityExtractor

    ents = EntityExtractor.default().extract("where is the oatly oat milk")
    assert ("product", "Oatly-Oat-Milk") in [(e.type, e.value) for e in ents]


def test_find_products_and_barcodes(kb: KnowledgeBase) -> None:
    ids = lambda q: [p.id for p in kb.find_products(q)]  # noqa: E731
    assert ids("Oatly-Oat-Milk") == ["oatly-oat-milk"]  # the entity extractor's value
    assert ids("OAT MILKS") == ["oatly-oat-milk"]  # case and plural
    assert ids("Granny Smiths") == ["granny-smith"]
    assert ids("gräddfil") == ["arla-sour-cream"]  # accents folded
    assert ids("Oatly oat milk") == ["oatly-oat-milk"]  # brand + display name
    assert ids("Yoghurt") and all(kb.product(i).coarse_name == "Yoghurt" for i in ids("Yoghurt"))  # a group
    assert set(ids("oatly")) >= {"oatly-oat-milk"}
    assert set(ids("arla sour")) == {"arla-sour-cream", "arla-sour-milk", "arla-ecological-sour-cream"}
    assert ids("") == [] and ids("spaceship") == [] and ids("🙂") == []
    p = kb.product("avocado")
    assert kb.by_ean(p.ean13) is p and kb.by_ean(f"{p.ean13[:7]} {p.ean13[7:]}") is p
    assert kb.by_ean("0000000000000") is None and kb.by_ean("abc") is None
    assert kb.by_fine_id(45).id == "oatly-oat-milk"
    assert kb.entry("catalog:avocado") is p and kb.entry("faq:wifi").id == "wifi" and kb.entry("x:y") is None
    with pytest.raises(AttributeError):
        kb.products = ()


def test_ean13_check_digit() -> None:
    assert ean13_check_digit("400638133393") == 1 and valid_ean13("4006381333931")
    assert not valid_ean13("4006381333932") and not valid_ean13("12345")


# ----------------------------------------------------------------------------------------------- hours


def test_store_hours(kb: KnowledgeBase) -> None:
    s = kb.store
    mon = dt.datetime(2026, 11, 23, 12, 0)  # a Monday
    assert s.is_open(mon) and not s.is_open(mon.replace(hour=6, minute=59)) and s.is_open(mon.replace(hour=7))
    assert not s.is_open(mon.replace(hour=22))
    assert "open now until 22:00" in s.hours_text(mon)
    assert "open today at 07:00" in s.hours_text(mon.replace(hour=6))
    late = s.hours_text(mon.replace(hour=23))
    assert "closed now" in late and "tomorrow at 07:00" in late
    xmas = dt.datetime(2026, 12, 25, 11, 0)
    assert not s.is_open(xmas) and "Christmas Day" in s.hours_text(xmas)
    eve = dt.datetime(2026, 12, 24, 13, 0)
    assert s.is_open(eve) and s.today_hours(eve) == "07:00 to 14:00" and not s.is_open(eve.replace(hour=15))
    assert s.today_hours(dt.datetime(2026, 11, 29, 9)) == "10:00 to 18:00"  # Sunday
    assert s.next_opening(dt.datetime(2026, 11, 29, 19)) == dt.datetime(2026, 11, 30, 7, 0)
    utc = dt.datetime(2026, 11, 23, 6, 30, tzinfo=dt.timezone.utc)  # 07:30 in Berlin
    assert s.is_open(utc)
    assert s.week_text().startswith("Monday to Friday 07:00 to 22:00")
    assert isinstance(s.hours_text(), str)


# ---------------------------------------------------------------------------------------- validation


def test_faq_missing_answer_names_file_and_line(kb_copy: Path) -> None:
    faq = kb_copy / "faq.yml"
    ln = line_of(faq, "- id: bags")
    edit(faq, "  answer: >-\n    Paper bags cost", "  answr: >-\n    Paper bags cost")
    err = load_error(kb_copy)
    assert isinstance(err, ConfigError) and err.code == "kb"
    assert any(re.search(rf"faq\.yml line {ln}: entry 'bags' has no 'answer'", e) for e in err.errors), err.errors
    assert any("unknown key 'answr'" in e and f"line {ln + 2}" in e for e in err.errors), err.errors
    assert err.file.endswith("faq.yml") and err.line


def test_yaml_syntax_error_has_line(kb_copy: Path) -> None:
    faq = kb_copy / "faq.yml"
    ln = line_of(faq, "- id: wifi")
    edit(faq, "- id: wifi\n  title: Free Wi-Fi", "- id: wifi\n  title: [Free Wi-Fi")
    err = load_error(kb_copy)
    assert len(err.errors) == 1 and "YAML syntax error" in err.errors[0]
    m = re.search(r"faq\.yml line (\d+)", err.errors[0])
    assert m and ln <= int(m.group(1)) <= ln + 4, err.errors


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  title: Bottle and can return", "  title: [Bottle, can]", "'title' must be non-empty text, not a list"),
        ("  title: Bottle and can return", "  title: yes", "quote it"),
        ("  title: Bottle and can return", "  title: ''", "'title' must be non-empty text"),
        ("    - Where can I return empty bottles?", "    - {a: 1}", "item 1 of 'questions' must be non-empty text"),
        ("- id: bottle-return", "- id: Bottle Return", "id must be lower-case"),
    ],
)
def test_faq_type_errors(kb_copy: Path, old: str, new: str, message: str) -> None:
    faq = kb_copy / "faq.yml"
    ln = line_of(faq, old.strip())
    edit(faq, old, new)
    err = load_error(kb_copy)
    assert any(message in e and f"faq.yml line {ln}" in e for e in err.errors), (ln, err.errors)


def test_duplicate_faq_id_and_duplicate_key(kb_copy: Path) -> None:
    faq = kb_copy / "faq.yml"
    first = line_of(faq, "- id: wifi")
    second = line_of(faq, "- id: parking")
    edit(faq, "- id: parking", "- id: wifi")
    tl = line_of(faq, "  title: Trolleys and baskets")
    edit(faq, "  title: Trolleys and baskets", "  title: Trolleys and baskets\n  title: Trolleys")
    err = load_error(kb_copy)
    assert any(f"faq.yml line {second}: duplicate id 'wifi' (first at line {first})" in e for e in err.errors), err.errors
    assert any(f"faq.yml line {tl + 1}: duplicate key 'title' (first at line {tl})" in e for e in err.errors), err.errors


def catalog_rows(kb_dir: Path) -> tuple[list[str], list[list[str]]]:
    with open(kb_dir / "catalog.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def write_catalog(kb_dir: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(kb_dir / "catalog.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])


def set_cell(kb_dir: Path, pid: str, column: str, value: str) -> int:
    header, rows = catalog_rows(kb_dir)
    i = next(i for i, r in enumerate(rows) if r[header.index("id")] == pid)
    rows[i][header.index(column)] = value
    write_catalog(kb_dir, header, rows)
    return i + 2  # header is line 1, no multi-line values


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("ean13", "2142000000451", "ean13 2142000000451 has a wrong check digit (expected 6 at the end)"),
        ("ean13", "21420000", "must be 13 digits"),
        ("price", "-1.00", "price -1.00 is negative"),
        ("price", "1,99", "is not a number (use a dot: 1.99)"),
        ("price", "1.999", "more than two decimals"),
        ("unit", "bunch", "unit 'bunch' must be one of"),
        ("aisle", "99", "aisle '99' is not in store.yml's aisles"),
        ("goes_with", "banana|unicorn-milk", "goes_with 'unicorn-milk' is not a product id"),
        ("goes_with", "oatly-oat-milk", "goes_with names the product itself"),
        ("image", "nope.jpg", "image file"),
        ("image", "../faq.yml", "without folders"),
        ("tags", "vegan|veggan", "tags 'veggan' is not in store.yml's dietary_tags"),
        ("allergens", "milkk", "allergens 'milkk'"),
        ("fine_id", "x", "fine_id 'x' must be a whole number"),
        ("display_name", "", "'display_name' is empty"),
    ],
)
def test_catalog_errors_name_the_line(kb_copy: Path, column: str, value: str, message: str) -> None:
    ln = set_cell(kb_copy, "oatly-oat-milk", column, value)
    err = load_error(kb_copy)
    assert any(f"catalog.csv line {ln}: product 'oatly-oat-milk': " in e and message in e for e in err.errors), err.errors


def test_catalog_duplicates_and_bad_image(kb_copy: Path) -> None:
    ln = set_cell(kb_copy, "banana", "id", "avocado")
    (kb_copy / "images" / "kiwi.jpg").write_bytes(b"not an image at all")
    err = load_error(kb_copy)
    assert any(f"catalog.csv line {ln}: product 'avocado': duplicate id 'avocado' (first at line" in e for e in err.errors)
    assert any("kiwi.jpg is not a JPEG or PNG image" in e for e in err.errors), err.errors


def test_catalog_header_and_row_shape(kb_copy: Path) -> None:
    header, rows = catalog_rows(kb_copy)
    write_catalog(kb_copy, [("prise" if h == "price" else h) for h in header], rows)
    err = load_error(kb_copy)
    assert any("catalog.csv line 1: unknown column 'prise'" in e for e in err.errors)
    assert any("catalog.csv line 1: required column 'price' is missing" in e for e in err.errors)
    rows[3] = rows[3][:-2]
    write_catalog(kb_copy, header, rows)
    err = load_error(kb_copy)
    assert any("catalog.csv line 5: the row has" in e for e in err.errors), err.errors
    (kb_copy / "catalog.csv").write_text("fine_id;coarse_id;name\n1;2;x\n", encoding="utf-8")
    assert "separated by commas" in load_error(kb_copy).errors[0]


def test_store_errors(kb_copy: Path) -> None:
    store = kb_copy / "store.yml"
    mon = line_of(store, "  monday:")
    edit(store, '  monday: "07:00-22:00"', '  monday: "07:00-25:00"')
    sat = line_of(store, "  saturday:")
    edit(store, '  saturday: "08:00-22:00"', "  saturday: 9:30-8:00")
    tz = line_of(store, "timezone:")
    edit(store, "timezone: Europe/Berlin", "timezone: Mars/Olympus")
    edit(store, '  - {date: "12-25", hours: closed, note: Christmas Day}', '  - {date: "02-30", hours: closed}')
    err = load_error(kb_copy)
    text = "\n".join(err.errors)
    assert f"store.yml line {mon}: hours: monday: '25:00' is not a time" in text
    assert f"store.yml line {sat}: hours: saturday: '9:30-8:00' closes before it opens" in text  # not base-60 570
    assert f"store.yml line {tz}: unknown timezone 'Mars/Olympus'" in text or "no time-zone database" in text
    assert "day is out of range for month" in text


def test_all_problems_are_collected_across_files(kb_copy: Path) -> None:
    edit(kb_copy / "faq.yml", "  title: Free Wi-Fi\n", "")
    set_cell(kb_copy, "kiwi", "price", "-2")
    edit(kb_copy / "store.yml", "phone:", "telephone:")
    err = load_error(kb_copy)
    files = {e.split(" line ")[0].split(":")[0].rsplit("/", 1)[-1] for e in err.errors}
    assert files == {"store.yml", "faq.yml", "catalog.csv"}, err.errors
    assert len(err.issues) >= 4 and "more problem" in str(err)


def test_unreadable_files(kb_copy: Path, tmp_path: Path) -> None:
    (kb_copy / "faq.yml").write_bytes("- id: x\n  title: caf\xe9\n".encode("latin-1"))
    (kb_copy / "store.yml").unlink()
    err = load_error(kb_copy)
    assert any("faq.yml line 2: not valid UTF-8" in e for e in err.errors), err.errors
    assert any("store.yml: file is missing" in e for e in err.errors), err.errors
    (kb_copy / "faq.yml").write_text("", encoding="utf-8")
    assert any("faq.yml line 1: the file is empty" in e for e in load_error(kb_copy).errors)
    with pytest.raises(KBError, match="directory not found"):
        KnowledgeBase.load(tmp_path / "nowhere")


def test_other_files_in_the_kb_dir_are_ignored(kb_copy: Path) -> None:
    (kb_copy / "notes.txt").write_text("operator notes", encoding="utf-8")
    (kb_copy / "images" / "unused.jpg").write_bytes((kb_copy / "images" / "kiwi.jpg").read_bytes())
    kb = KnowledgeBase.load(kb_copy)
    assert any("unused.jpg" in str(w) and "no product uses" in str(w) for w in kb.warnings)


# ------------------------------------------------------------------------------------------- retrieval


@pytest.fixture(scope="module")
def retriever(kb: KnowledgeBase) -> HybridRetriever:
    return HybridRetriever(kb, fake_embed)


def test_search_basics(retriever: HybridRetriever) -> None:
    hits = retriever.search("can I return a product and get a refund", k=3)
    assert len(hits) == 3 and {h.entry_id for h in hits} & {"faq:returns", "faq:refund-policy"}
    h = hits[0]
    assert h.kind == "faq" and h.title and h.text and h.source.startswith("faq.yml:") and h.score > 0
    assert [x.score for x in hits] == sorted((x.score for x in hits), reverse=True)
    assert retriever.search("where is the oatly oat milk", k=1)[0].entry_id == "catalog:oatly-oat-milk"
    p = retriever.search("oat milk", k=5, kinds=("product",))
    assert p[0].entry_id == "catalog:oatly-oat-milk" and all(x.kind == "product" for x in p)
    assert all(x.kind == "faq" for x in retriever.search("oat milk", k=5, kinds=("faq",)))
    assert retriever.search("pomegranite", k=1)[0].entry_id == "catalog:pomegranate"  # typo: character n-grams
    assert retriever.search("wifi password", k=1, method="bm25")[0].entry_id == "faq:wifi"
    assert len(retriever.search("wifi password", k=2, method="embedding")) == 2
    assert retriever.search("zzzqqq", method="bm25") == []  # BM25 only returns entries sharing a term
    assert len(retriever.search("parking", k=50)) == 50
    with pytest.raises(ValueError):
        retriever.search("x", kinds=("recipes",))
    with pytest.raises(ValueError):
        retriever.search("x", method="magic")


@pytest.mark.parametrize(
    "query",
    ["", "   ", "\n\t", "🙂🙂🙂", "???!!!", "a" * 10_000, "where " * 3000 + "is the oat milk", "牛奶在哪里",
     "\x00\x01\x02 milk", "the the the", "SELECT * FROM faq; --", "ñandú über straße", "12345678901234567890"],
)
def test_garbage_queries_never_raise(retriever: HybridRetriever, query: str) -> None:
    for method in ("hybrid", "bm25", "embedding"):
        hits = retriever.search(query, k=3, method=method)
        assert isinstance(hits, list) and len(hits) <= 3
    assert retriever.search("🙂🙂🙂") == [] and retriever.search("") == []


def test_search_is_fast(retriever: HybridRetriever) -> None:
    qs = ["where are the toilets", "do you sell oat milk", "how long does delivery take", "gift card balance",
          "which potatoes for mash", "a" * 5000]
    vecs = [retriever.query_vector(q) for q in qs]
    for q, v in zip(qs, vecs, strict=False):
        retriever.search(q, query_vector=v)
    t0 = time.perf_counter()
    for _ in range(20):
        for q, v in zip(qs, vecs, strict=False):
            retriever.search(q, k=3, query_vector=v)
    per_query_ms = (time.perf_counter() - t0) * 1000 / (20 * len(qs))
    assert per_query_ms < 5.0, per_query_ms


def test_failing_encoder_falls_back_to_bm25(kb: KnowledgeBase) -> None:
    calls = {"n": 0}

    def flaky(texts: list[str]) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("encoder crashed")
        return fake_embed(texts)

    r = HybridRetriever(kb, flaky)
    assert r.search("where can I recycle batteries", k=1)[0].entry_id == "faq:recycling"
    assert r.search("batteries", method="embedding") == []
    no_encoder = HybridRetriever(kb, None)
    assert no_encoder.search("bottle deposit machine", k=1)[0].entry_id == "faq:bottle-return"


def test_reuse_embeds_only_changed_texts(kb_copy: Path, kb: KnowledgeBase) -> None:
    seen: list[str] = []

    def counting(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return fake_embed(texts)

    first = HybridRetriever(kb, counting)
    n_first = len(seen)
    edit(kb_copy / "faq.yml", "There are dog hooks", "There are dog leash hooks")
    second = HybridRetriever(KnowledgeBase.load(kb_copy), counting, reuse=first)
    assert n_first > 300 and len(seen) - n_first == 1  # only the edited answer was embedded again
    assert second.search("dog leash", k=1, method="bm25")[0].entry_id == "faq:pets"  # the edit is indexed


def test_bm25_scores() -> None:
    bm = BM25([["oat", "milk"], ["milk", "milk", "cow"], ["bread"]])
    s = bm.scores(["oat", "milk"])
    assert s[0] > s[1] > 0 and s[2] == 0
    assert not bm.scores(["unknown"]).any()


def test_rrf_fusion_also_works(kb: KnowledgeBase, retriever: HybridRetriever) -> None:
    rrf = HybridRetriever(kb, fake_embed, RetrievalConfig(fusion="rrf"), reuse=retriever)
    assert rrf.search("where is the oatly oat milk", k=1)[0].entry_id == "catalog:oatly-oat-milk"


def test_real_encoder_on_a_few_questions(kb: KnowledgeBase) -> None:
    from runtime.intents import IntentClassifier
    from runtime.paths import default_bundle_dir

    clf = IntentClassifier.from_bundle(default_bundle_dir())
    # Every FAQ entry, and the products of a few groups (embedding all 81 descriptions takes seconds here).
    groups = {"Potato", "Soyghurt", "Yoghurt", "Soy-Milk", "Milk", "Tomato", "Apple"}
    small = KnowledgeBase(kb.store, kb.faqs, [p for p in kb.products if p.coarse_name in groups])
    r = HybridRetriever(small, clf.embed)
    for q, gold in [("is there somewhere I can charge my phone or car", "faq:ev-charging"),
                    ("my package from DHL, can I pick it up here", "faq:parcel-pickup"),
                    ("which spuds are good for mashing", "catalog:floury-potato"),
                    ("do you take contactless", "faq:payment-methods"),
                    ("soy yoghurt blueberry", "catalog:alpro-blueberry-soyghurt")]:
        assert gold in [h.entry_id for h in r.search(q, k=3)], q
    assert r.search("🙂") == []


# ---------------------------------------------------------------------------------------------- reload


def test_watcher_keeps_the_last_good_kb(kb_copy: Path) -> None:
    seen, errors = [], []
    w = KBWatcher(kb_copy, on_change=seen.append, on_error=errors.append, poll_s=0.05)
    good = w.kb
    assert good is not None and seen == [good] and w.health()["ok"]
    assert w.check_now() is False  # nothing changed
    faq = kb_copy / "faq.yml"
    ln = line_of(faq, "- id: bags")
    edit(faq, "  answer: >-\n    Paper bags cost", "  answr: >-\n    Paper bags cost")
    assert w.check_now() is False
    assert w.kb is good and len(seen) == 1
    assert w.last_error and f"faq.yml line {ln}: entry 'bags' has no 'answer'" in w.last_error
    h = w.health()
    assert not h["ok"] and h["rejected"] == 1 and any("answr" in e for e in h["errors"]) and errors
    assert w.check_now() is False and w.health()["rejected"] == 1  # a rejected version is not retried
    edit(faq, "  answr: >-\n    Paper bags cost", "  answer: >-\n    Paper bags now cost")
    assert w.check_now() is True
    assert w.kb is not good and "now cost" in w.kb.faq("bags").answer and w.last_error is None and len(seen) == 2


def test_watcher_rejects_when_the_callback_fails(kb_copy: Path) -> None:
    def boom(kb: KnowledgeBase) -> None:
        if len(kb.faqs) < 53:
            raise RuntimeError("retriever rebuild failed")

    w = KBWatcher(kb_copy, on_change=boom)
    good = w.kb
    text = (kb_copy / "faq.yml").read_text(encoding="utf-8")
    (kb_copy / "faq.yml").write_text(text.split("- id: food-donation")[0], encoding="utf-8")
    assert w.reload() is False and w.kb is good and "retriever rebuild failed" in w.last_error


def test_watcher_settles_and_runs_async_and_in_a_thread(kb_copy: Path) -> None:
    w = KBWatcher(kb_copy, poll_s=0.02)
    edit(kb_copy / "faq.yml", "four weeks", "six weeks")
    assert w.check_now(settle=True) is False  # first sight of a change: wait for writes to settle
    assert w.check_now(settle=True) is True and "six weeks" in w.kb.faq("lost-property").answer

    async def go() -> None:
        task = asyncio.create_task(w.run())
        edit(kb_copy / "faq.yml", "six weeks", "eight weeks")
        for _ in range(200):
            await asyncio.sleep(0.02)
            if "eight" in w.kb.faq("lost-property").answer:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert "eight weeks" in w.kb.faq("lost-property").answer
    w.start_thread()
    try:
        edit(kb_copy / "faq.yml", "eight weeks", "ten weeks")
        deadline = time.monotonic() + 5
        while "ten" not in w.kb.faq("lost-property").answer and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "ten weeks" in w.kb.faq("lost-property").answer
    finally:
        w.stop()


def test_watcher_starting_from_a_broken_kb(kb_copy: Path) -> None:
    (kb_copy / "store.yml").write_text("name: [broken\n", encoding="utf-8")
    w = KBWatcher(kb_copy)
    assert w.kb is None and "store.yml line" in w.last_error and not w.health()["ok"]


# ---------------------------------------------------------------------------------------------- command


def test_kb_validate_command(kb_copy: Path, capsys: pytest.CaptureFixture) -> None:
    assert cmd_kb_validate(kb_copy) == 0
    out = capsys.readouterr().out
    assert "81 products" in out and "53 FAQ entries" in out
    assert cmd_kb_validate(kb_copy, as_json=True) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] and rep["products"] == 81
    set_cell(kb_copy, "kiwi", "price", "-1")
    assert cmd_kb_validate(kb_copy) == 1
    err = capsys.readouterr().err
    assert "1 problem" in err and "price -1 is negative" in err and "catalog.csv line" in err
    assert cmd_kb_validate(kb_copy, as_json=True) == 1
    rep = json.loads(capsys.readouterr().out)
    assert not rep["ok"] and rep["issues"][0]["line"] and rep["issues"][0]["file"].endswith("catalog.csv")
