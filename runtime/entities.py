"""Rule-based entity extraction for the kiosk: deterministic, no ML weights, microseconds per turn.

Why rules and gazetteers instead of a tagger: Bitext annotates only 4-8 distinct values per entity type, so a
learned tagger would memorise those values; the kiosk needs order numbers, names and cities it has never seen.
World knowledge lives in data files (``data/entities/gazetteer.yml``, ``data/kb/catalog.csv``); this
module holds the context rules (which words make a number an order id, a phone, a price...).

Public API::

    ex = EntityExtractor.default()
    ex.extract("cancel order 7781123 and refund $42")   # -> [Entity(order_id ...), Entity(refund_amount ...)]
    ex.redact("mail me at a@b.org")                     # -> "mail me at [EMAIL]"

Entity types: the Bitext ones (order_id, invoice_id, account_type, person_name, delivery_city,
delivery_country, refund_amount) plus product, product_category, quantity, money (an amount with no refund
context: a price), email, phone, card_number.

Safety: ``extract`` never raises on a ``str`` (a bug is logged and yields ``[]``); every regex is anchored so
that each start position is tried once (no catastrophic backtracking), and input beyond ``MAX_CHARS`` is not
analysed (``redact`` still masks emails and long digit runs there with plain regexes).
"""

from __future__ import annotations

import csv
import logging
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from runtime.errors import ConfigError
from runtime.paths import data_dir

log = logging.getLogger(__name__)

BITEXT_TYPES = (
    "order_id",
    "invoice_id",
    "account_type",
    "person_name",
    "delivery_city",
    "delivery_country",
    "refund_amount",
)
ENTITY_TYPES = BITEXT_TYPES + (
    "product",
    "product_category",
    "quantity",
    "money",
    "email",
    "phone",
    "card_number",
)
PII_PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "card_number": "[CARD]", "person_name": "[NAME]"}
MAX_CHARS = 10_000  # a kiosk utterance is < 500 chars; the cap bounds the work on pasted or hostile input

# Higher wins when candidates overlap; within a priority the longer span wins.
_PRIO = {
    "email": 100,
    "card_number": 95,
    "phone": 90,
    "id": 85,
    "money": 80,
    "name_strong": 75,
    "quantity": 70,
    "product": 65,
    "account_type": 60,
    "place": 55,
    "name_weak": 50,
    "id_weak": 40,
}


@dataclass(frozen=True, slots=True)
class Entity:
    """One extracted entity. ``value`` is normalized (digits for ids, canonical names, "12.5" for amounts,
    "+14155550132" for phones...); ``text`` is the surface ``text[start:end]``; ``score`` is a rule confidence
    (1.0 for explicit context, lower for guesses such as a bare long number read as an order id)."""

    type: str
    value: str
    start: int
    end: int
    text: str
    score: float = 1.0


# ----------------------------------------------------------------------------------------------- text utils

# Numbers, words (letters with inner apostrophes: O'Brien, it's) or one symbol. Branches start with disjoint
# character classes, so the scan is linear.
_TOKEN_RE = re.compile(r"[0-9]+(?:[.,][0-9]+)*|[^\W\d_]+(?:['\u2019][^\W\d_]+)*|[^\w\s]")
_CAMEL_RE = re.compile(r"(?<=[a-z])(?=[A-Z])")
# Digit runs with single separators between groups ("4111 1111 1111 1111", "(415) 555-0132", "2023-1187").
_RUN_RE = re.compile(r"(?<![0-9])[0-9]+(?:(?:[ .,:/\-]|\) ?)[0-9]+)*")
_GROUP_SPLIT_RE = re.compile(r"[^0-9]+")
_ALNUM_ID_RE = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{2,5})( ?[-#] ?|)([0-9]{3,}(?:-[0-9]+)*)(?![A-Za-z0-9])")
_EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63}){1,8}"
)
_DATE_RE = re.compile(r"[0-9]{1,4}([/.\-])[0-9]{1,2}\1[0-9]{1,4}")
_THOUSANDS_RE = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?")
_DECIMAL_COMMA_RE = re.compile(r"[0-9]+,[0-9]{1,2}")
_TAIL_DIGITS_RE = re.compile(r"(?<![0-9])[0-9](?:[ .\-]?[0-9]){6,}")

_ABBREVIATIONS = frozenset("mr mrs ms dr prof st no nr vs etc inc ltd jr sr mt mx approx".split())
_NAME_PARTICLES = frozenset("van der den de la le du del della dos da di von al el bin ibn ter ten st".split())
_GLUE_PREFIXES = frozenset("my her his the a an ing to your our their new another".split())
_NUMBER_LINKS = frozenset("number num nr no id ref reference code".split())
_FROM_TYPO_BLOCK = frozenset("form forms prom frog fro farm firm".split())
_NAME_INTRO_STRONG = (("my", "name", "is"), ("name", "is"), ("my", "name's"), ("name's",), ("names",))
_NAME_INTRO_SELF = (
    ("i", "am"),
    ("i'm",),
    ("im",),
    ("this", "is"),
    ("call", "me"),
    ("it's",),
    ("address", "me", "as"),
    ("known", "as"),
    ("goes", "by"),
)
_NAME_PREPS = frozenset("from for by of to with behalf".split())
# Words after which a lower-case known given name is read as a name in caseless input ("text mary").
_NAME_VERBS = frozenset("text call phone ring tell ask email message meet meeting remind thank thanks dear".split())
# Short all-capital place variants that are ordinary words in lower case ("send it to us").
_CASELESS_PLACE_BLOCK = frozenset(["us", "la", "car", "oz", "gb", "sf", "dc"])
_FUNCTION_WORDS = frozenset(
    "a an the and or but if at in on to for from by of with about as is are was were be been am i me my you "
    "your he she it we they them his her its our their this that these those not no yes so too very just here "
    "there again please thanks thank hi hello hey ok okay now then what where when why how who which can could "
    "would will should shall may might must do does did have has had get got want need like back later soon today "
    "tomorrow tonight asap again maybe anytime sometime whenever anyway sir madam".split()
)
_UNIT_NEEDS_OF = frozenset(["can", "head", "net", "piece", "pack"])  # "I can", "head office": only "2 cans of"


def _fold(s: str) -> str:
    """Lower-case, strip accents, unify apostrophes (used on single tokens, so offsets are unaffected)."""
    s = s.replace("\u2019", "'").lower()
    if s.isascii():
        return s
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))


def _singular(w: str) -> str:
    if w.endswith("'s"):
        w = w[:-2]
    if len(w) <= 3 or not w.isalpha():
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("ches", "shes", "xes", "sses", "zes", "oes")):
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us")):  # both sides are singularized, so "this"->"thi" is harmless
        return w[:-1]
    return w


def _dl_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance (Levenshtein + adjacent transpositions); only called on short words."""
    if a == b:
        return 0
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def _deletes1(w: str) -> set[str]:
    return {w[:i] + w[i + 1 :] for i in range(len(w))}


class _Fuzzy:
    """Typo-tolerant lookup (distance 1) via a deletion index: O(len(word)) per query, independent of the
    vocabulary size, so it stays linear on long inputs."""

    def __init__(
        self, words: Iterable[str], min_len: int = 5, stop: Iterable[str] = (), vocab_min_len: int | None = None
    ) -> None:
        self.min_len = min_len
        vocab_min_len = min_len if vocab_min_len is None else vocab_min_len
        self._words: set[str] = set()
        self._index: dict[str, set[str]] = {}
        self._stop = frozenset(stop)
        for w in words:
            if len(w) >= vocab_min_len and w.isalpha():
                self._words.add(w)
                for d in _deletes1(w) | {w}:
                    self._index.setdefault(d, set()).add(w)

    def __contains__(self, word: str) -> bool:
        return word in self._words

    def lookup(self, word: str) -> str | None:
        if word in self._words:
            return word
        if len(word) < self.min_len or len(word) > 24 or word in self._stop or not word.isalpha():
            return None
        cands: set[str] = set()
        for d in _deletes1(word) | {word}:
            cands |= self._index.get(d, set())
        hits = [c for c in cands if _dl_distance(word, c) <= 1]
        return hits[0] if len(hits) == 1 else None


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _parse_number(s: str) -> float | None:
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    elif _DECIMAL_COMMA_RE.fullmatch(s):
        s = s.replace(",", ".")
    if "," in s or s.count(".") > 1:
        return None
    try:
        return float(s)
    except ValueError:
        return None


def fmt_number(x: float) -> str:
    """12.0 -> "12", 12.5 -> "12.5", 0.99 -> "0.99"."""
    if x == int(x):
        return str(int(x))
    return f"{x:.4f}".rstrip("0").rstrip(".")


# ------------------------------------------------------------------------------------------------- tokens


@dataclass(slots=True)
class _Tok:
    text: str
    start: int
    end: int
    kind: str  # "num" | "word" | "sym"
    low: str  # folded lower-case
    key: str  # singular form of low (catalog matching)
    cap: bool
    upper: bool
    sent: int = 0


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    for m in _TOKEN_RE.finditer(text):
        s, e = m.span()
        t = m.group()
        if t[0].isdigit():
            kind = "num"
        elif t[0].isalpha():
            kind = "word"
        else:
            kind = "sym"
        pieces = [(s, e)]
        # Split glued camel case ("fromAnna", "myFreemium") only after an all-lower prefix, so names such as
        # McDonald or brand names like iPhone stay whole.
        if kind == "word" and len(t) > 4:
            cut = _CAMEL_RE.search(t)
            if cut and cut.start() >= 2 and len(t) - cut.start() >= 3 and t[: cut.start()].islower():
                pieces = [(s, s + cut.start()), (s + cut.start(), e)]
        for ps, pe in pieces:
            pt = text[ps:pe]
            low = _fold(pt)
            toks.append(_Tok(pt, ps, pe, kind, low, _singular(low), pt[0].isupper(), pt.isupper() and len(pt) > 1))
    sent = 0
    for i, tk in enumerate(toks):
        tk.sent = sent
        if tk.text in "?!" or (tk.text == "." and _ends_sentence(text, toks, i)):
            sent += 1
    return toks


def _ends_sentence(text: str, toks: list[_Tok], i: int) -> bool:
    prev = toks[i - 1] if i else None
    if prev is not None and (prev.low in _ABBREVIATIONS or (prev.kind == "word" and len(prev.text) == 1)):
        return False
    rest = text[toks[i].end : toks[i].end + 2]
    return rest == "" or (rest[:1].isspace() and not rest[1:2].islower() and not rest[1:2].isdigit())


@dataclass(slots=True)
class _Cand:
    type: str
    value: str
    start: int
    end: int
    score: float
    prio: int


class _Doc:
    """Per-call analysis state: tokens, a hyphen-free view for phrase matching, and their keys."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        # Hyphens are dropped from the phrase view so "lactose-free" == "lactose free", "Stoke-on-Trent" ==
        # "Stoke on Trent", "twenty-five" == "twenty five".
        self.view = [i for i, t in enumerate(self.toks) if t.text != "-"]
        self.vt = [self.toks[i] for i in self.view]
        self.low = [t.low for t in self.vt]
        self.starts = [t.start for t in self.toks]
        self.cands: list[_Cand] = []
        # Speech recognizers (pocketsphinx, Vosk) and many typists give no case information: then capital
        # letters prove nothing and the rules lean on context words alone.
        self.caseless = not any(c.isupper() for c in text) or not any(c.islower() for c in text)

    def add(self, type_: str, value: str, start: int, end: int, score: float, prio: str) -> None:
        if start < end and value:
            self.cands.append(_Cand(type_, value, start, end, score, _PRIO[prio]))

    def tok_at(self, char_pos: int) -> int:
        """Index (in toks) of the token starting at or before char_pos."""
        return max(0, bisect_right(self.starts, char_pos) - 1)


class _Phrases:
    """Multi-word phrase lookup keyed by token tuples; longest match first (bounded by the longest phrase)."""

    def __init__(self) -> None:
        self.map: dict[tuple[str, ...], Any] = {}
        self.first: set[str] = set()  # cheap pre-check: most tokens start no phrase
        self.max_len = 1

    def add(self, words: tuple[str, ...], payload: Any, *, overwrite: bool = True) -> None:
        if not words or (not overwrite and words in self.map):
            return
        self.map[words] = payload
        self.first.add(words[0])
        self.max_len = max(self.max_len, len(words))

    def longest(self, keys: Sequence[str], i: int) -> tuple[int, Any] | None:
        if i >= len(keys) or keys[i] not in self.first:
            return None
        for n in range(min(self.max_len, len(keys) - i), 0, -1):
            p = self.map.get(tuple(keys[i : i + n]))
            if p is not None:
                return n, p
        return None


def _phrase_tokens(phrase: str, *, singular: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(keys, surfaces) of a gazetteer phrase, tokenized exactly like input text (hyphens dropped)."""
    toks = [t for t in _tokenize(phrase) if t.text != "-"]
    keys = tuple(t.key if singular else t.low for t in toks)
    return keys, tuple(t.text for t in toks)


def _split_variants(entry: str) -> list[str]:
    return [v.strip() for v in str(entry).split("|") if v.strip()]


# ----------------------------------------------------------------------------------------------- extractor


class EntityExtractor:
    """Deterministic entity extractor built from a gazetteer mapping and catalog rows.

    Instances are immutable after construction and safe to share between threads/tasks.
    """

    def __init__(self, gazetteer: Mapping[str, Any], catalog: Sequence[Mapping[str, str]]) -> None:
        g = gazetteer
        try:
            self._build_places(g["countries"], g["cities"], g.get("ambiguous_places", []))
            self._build_accounts(g["account_types"], g["account_nouns"], g.get("account_switch_cues", []))
            self._build_numbers(g["number_words"], g["units"], g["currencies"])
            self._build_people(g["titles"], g["first_names"], g.get("name_stopwords", []))
            self._build_products(
                catalog, g.get("product_categories", {}), g.get("product_blocklist", []), g.get("fuzzy_stopwords", [])
            )
            self._build_cues(g)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"entity gazetteer/catalog is malformed: {exc!r}") from exc

    # ---- construction ----------------------------------------------------------------------------------

    @classmethod
    def from_files(cls, gazetteer_path: str | Path, catalog_path: str | Path) -> EntityExtractor:
        try:
            with open(gazetteer_path, encoding="utf-8") as fh:
                gaz = yaml.safe_load(fh)
            with open(catalog_path, encoding="utf-8", newline="") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, yaml.YAMLError, csv.Error) as exc:
            raise ConfigError(
                f"cannot load entity data ({gazetteer_path}, {catalog_path}): {exc}. "
                "Check the data directory or set STORECLERK_DATA."
            ) from exc
        if not isinstance(gaz, Mapping):
            raise ConfigError(f"{gazetteer_path} is not a YAML mapping")
        return cls(gaz, rows)

    @classmethod
    def default(cls) -> EntityExtractor:
        """The extractor over ``data_dir()/entities/gazetteer.yml`` and ``data_dir()/kb/catalog.csv``
        (loaded once per data directory and shared)."""
        return _load_default(str(data_dir()))

    def _build_places(self, countries: Iterable[str], cities: Iterable[str], ambiguous: Iterable[str]) -> None:
        amb = {_fold(a) for a in ambiguous}
        self._places = _Phrases()
        self._place_canon: dict[tuple[str, str], str] = {}
        self._place_words: set[str] = set()
        for type_, entries in (("delivery_city", cities), ("delivery_country", countries)):
            for entry in entries:
                variants = _split_variants(entry)
                canon = variants[0]
                for v in variants:
                    keys, surf = _phrase_tokens(v)
                    # All-capital short variants (US, UK, LA) must be written in capitals: "us" is a pronoun.
                    must_upper = tuple(s.isupper() and len(s) <= 4 for s in surf)
                    is_amb = _fold(v) in amb or _fold(canon) in amb
                    # Countries are added last and win a tie (Mexico, Singapore, Luxembourg).
                    self._places.add(keys, (type_, canon, is_amb, must_upper))
                    self._place_canon[(type_, " ".join(keys))] = canon
                    if len(keys) == 1:
                        self._place_words.add(keys[0])

    def _build_accounts(self, types: Iterable[str], nouns: Iterable[str], switch: Iterable[str]) -> None:
        self._accounts = _Phrases()
        self._account_canon: dict[str, str] = {}
        self._account_single: list[tuple[str, str]] = []
        for entry in types:
            variants = _split_variants(entry)
            for v in variants:
                keys, _ = _phrase_tokens(v)
                self._accounts.add(keys, variants[0])
                self._account_canon[" ".join(keys)] = variants[0]
                if len(keys) == 1:
                    self._account_single.append((keys[0], variants[0]))
        self._account_single.sort(key=lambda kv: -len(kv[0]))
        self._account_nouns = {_fold(n) for n in nouns if " " not in str(n)}
        self._account_noun_fuzzy = _Fuzzy(self._account_nouns, min_len=5, stop=["amount", "count", "mount"])
        self._switch_cues = {_fold(s) for s in switch}

    def _build_numbers(
        self,
        number_words: Mapping[str, float],
        units: Mapping[str, Iterable[str]],
        currencies: Mapping[str, Iterable[str]],
    ) -> None:
        self._numwords = _Phrases()
        for phrase, val in number_words.items():
            keys, _ = _phrase_tokens(str(phrase))
            self._numwords.add(keys, float(val))
        self._tens = {k[0]: v for k, v in self._numwords.map.items() if len(k) == 1 and v in range(20, 100, 10)}
        self._ones = {k[0]: v for k, v in self._numwords.map.items() if len(k) == 1 and 1 <= v <= 9}
        self._units: dict[str, str] = {}
        for canon, forms in units.items():
            for f in forms:
                self._units[_fold(str(f))] = str(canon)
        self._currency_after = _Phrases()
        self._currency_symbols: dict[str, str] = {}
        self._currency_codes: set[str] = set()
        for code, forms in currencies.items():
            for f in forms:
                f = str(f)
                keys, _ = _phrase_tokens(f)
                if len(f) == 1 and not f.isalnum():
                    self._currency_symbols[f] = str(code)
                elif keys and keys[-1] in ("$",) and len(keys) > 1:
                    self._currency_symbols["$"] = "USD"
                else:
                    self._currency_after.add(keys, str(code))
                    if len(f) == 3 and f.isalpha() and f.lower() == code.lower():
                        self._currency_codes.add(f.lower())

    def _build_people(
        self, titles: Mapping[str, Iterable[str]], first_names: Iterable[str], stopwords: Iterable[str]
    ) -> None:
        self._titles: dict[str, str] = {}
        for canon, forms in titles.items():
            for f in forms:
                self._titles[_fold(str(f)).rstrip(".")] = str(canon)
        self._first_names = {_fold(n) for n in first_names}
        self._name_stop = {_fold(s) for s in stopwords} | _FUNCTION_WORDS

    def _build_products(
        self,
        rows: Sequence[Mapping[str, str]],
        categories: Mapping[str, Iterable[str]],
        blocklist: Iterable[str],
        fuzzy_stop: Iterable[str],
    ) -> None:
        alias_to: dict[tuple[str, ...], set[int]] = {}
        name_of: dict[int, str] = {}
        coarse_of: dict[int, str] = {}
        per_coarse: dict[str, list[int]] = {}
        for row in rows:
            fid = int(row["fine_id"])
            name_of[fid] = row["name"]
            coarse_of[fid] = row["coarse_name"]
            per_coarse.setdefault(row["coarse_name"], []).append(fid)
            aliases = [row["name"].replace("-", " ")] + _split_variants(row.get("aliases") or "")
            for a in aliases:
                keys, _ = _phrase_tokens(a, singular=True)
                alias_to.setdefault(keys, set()).add(fid)
        self._products = _Phrases()
        self._coarse_of_name = {name_of[f]: coarse_of[f] for f in name_of}
        for keys, fids in alias_to.items():
            if len(fids) == 1:
                fid = next(iter(fids))
                self._products.add(keys, ("product", name_of[fid]))
            elif len({coarse_of[f] for f in fids}) == 1:  # shared alias (a brand) names the group
                self._products.add(keys, ("product_category", coarse_of[next(iter(fids))]))
        for coarse, phrases in categories.items():
            members = per_coarse.get(str(coarse), [])
            payload = ("product", name_of[members[0]]) if len(members) == 1 else ("product_category", str(coarse))
            for p in phrases:
                keys, _ = _phrase_tokens(str(p), singular=True)
                self._products.add(keys, payload, overwrite=False)
        for p in blocklist:
            keys, _ = _phrase_tokens(str(p), singular=True)
            self._products.add(keys, ("blocked", ""))
        self._product_vocab = {w for k in self._products.map for w in k}
        self._product_heads = {k[0] for k, v in self._products.map.items() if len(k) == 1 and v[0] != "blocked"}
        self._product_fuzzy = _Fuzzy(
            (w for w in self._product_vocab if len(w) >= 5), min_len=5, stop={_fold(s) for s in fuzzy_stop}
        )

    def _build_cues(self, g: Mapping[str, Any]) -> None:
        def words(key: str) -> set[str]:
            return {_fold(str(w)) for w in g.get(key, []) if " " not in str(w)}

        self._order_cues = words("order_cues")
        self._invoice_cues = words("invoice_cues")
        self._card_cues = words("card_cues")
        self._phone_cues = words("phone_cues") - _NUMBER_LINKS
        # Typed cues are often misspelt ("oder", "bil #00108", "biull"); short words only count right before
        # the number or a "#", where a typo is the only sensible reading.
        short_stop = ["will", "till", "fill", "all", "older", "odor", "other"]
        self._id_cue_fuzzy = {
            "order": _Fuzzy(self._order_cues, min_len=3, vocab_min_len=4, stop=short_stop),
            "invoice": _Fuzzy(self._invoice_cues, min_len=3, vocab_min_len=4, stop=short_stop),
        }
        self._id_cue_glue = sorted(
            (
                (w, k)
                for k, ws in (("order", self._order_cues), ("invoice", self._invoice_cues))
                for w in ws
                if len(w) >= 4
            ),
            key=lambda wk: -len(wk[0]),
        )
        self._place_cues = words("place_cues")
        self._place_cue_fuzzy = _Fuzzy(self._place_cues, min_len=4)
        refund = [str(w) for w in g.get("refund_cues", [])]
        self._refund_words = {_fold(w) for w in refund if " " not in w}
        self._refund_phrases = _Phrases()
        for w in refund:
            if " " in w:
                self._refund_phrases.add(_phrase_tokens(w)[0], True)
        self._refund_stems = [w for w in self._refund_words if len(w) >= 6]
        self._refund_fuzzy = _Fuzzy(self._refund_words, min_len=5, stop=["debate", "refine", "retain"])
        self._not_qty_after = words("not_quantity_after") | {"%", "am", "pm"}
        self._qty_verbs = words("quantity_verbs")
        self._known_words = (
            self._place_words
            | self._first_names
            | self._order_cues
            | self._invoice_cues
            | set(self._units)
            | self._refund_words
            | self._account_nouns
            | self._name_stop
            | {k[0] for k in self._numwords.map if len(k) == 1}
        ) - self._product_vocab

    # ---- public API ------------------------------------------------------------------------------------

    def extract(self, text: str) -> list[Entity]:
        """Entities in ``text``: non-overlapping, sorted by start. Never raises on a ``str``."""
        if not isinstance(text, str):
            raise TypeError(f"extract() takes a str, not {type(text).__name__}")
        if not text or text.isspace():
            return []
        text = text[:MAX_CHARS]
        try:
            doc = _Doc(text)
            self._emails(doc)
            self._digit_runs(doc)
            self._alnum_ids(doc)
            product_at = self._products_pass(doc)
            self._amounts(doc, product_at)
            self._account_types(doc)
            self._places_pass(doc)
            self._names(doc)
            return _resolve(doc)
        except Exception:  # the kiosk must keep talking; a rule bug is logged, not raised
            log.exception("entity extraction failed on a %d-char input", len(text))
            return []

    def redact(self, text: str) -> str:
        """``text`` with emails, phones, card numbers and person names replaced by [EMAIL] [PHONE] [CARD]
        [NAME]. Text beyond ``MAX_CHARS`` is masked conservatively (emails and any 7+ digit run)."""
        if not isinstance(text, str):
            raise TypeError(f"redact() takes a str, not {type(text).__name__}")
        head, tail = text[:MAX_CHARS], text[MAX_CHARS:]
        out: list[str] = []
        pos = 0
        for e in self.extract(head):
            if e.type in PII_PLACEHOLDERS:
                out.append(head[pos : e.start])
                out.append(PII_PLACEHOLDERS[e.type])
                pos = e.end
        out.append(head[pos:])
        redacted = "".join(out)
        # Safety net for digits a rule did not type (e.g. a Luhn-invalid card after "card"): a card-like run
        # next to a card word is masked anyway.
        redacted = self._mask_card_like(redacted)
        if tail:
            tail = _EMAIL_RE.sub("[EMAIL]", tail)
            tail = _TAIL_DIGITS_RE.sub("[NUMBER]", tail)
        return redacted + tail

    def canonical_value(self, type_: str, value: str) -> str:
        """Normalize a value the way the extractor does, for comparing gold and predictions."""
        v = " ".join(str(value).split())
        if type_ in ("order_id", "invoice_id", "card_number"):
            v = v.upper().replace("#", "").replace(" ", "").replace("-", "")
            return v.lstrip("0") or "0" if v.isdigit() else v
        if type_ == "phone":
            return "+" + re.sub(r"\D", "", v) if v.startswith("+") else re.sub(r"\D", "", v)
        if type_ in ("refund_amount", "money"):
            n = _parse_number(v.replace("$", "").replace("€", "").replace("£", "").strip())
            return fmt_number(n) if n is not None else v
        if type_ == "quantity":
            parts = v.lower().split()
            n = _parse_number(parts[0]) if parts else None
            return " ".join([fmt_number(n)] + parts[1:]) if n is not None else v.lower()
        if type_ in ("delivery_city", "delivery_country"):
            keys, _ = _phrase_tokens(v)
            return self._place_canon.get((type_, " ".join(keys)), v).casefold()
        if type_ == "account_type":
            keys, _ = _phrase_tokens(v)
            return self._account_canon.get(" ".join(keys), v).casefold()
        if type_ == "person_name":
            return v.replace(".", "").casefold()
        return v.casefold()

    # ---- detectors -------------------------------------------------------------------------------------

    def _emails(self, doc: _Doc) -> None:
        for m in _EMAIL_RE.finditer(doc.text):
            s, e = m.span()
            while e > s and doc.text[e - 1] in ".-":
                e -= 1
            tld = doc.text[s:e].rsplit(".", 1)[-1]
            if "@" in doc.text[s:e] and len(tld) >= 2 and tld.isalpha():
                doc.add("email", doc.text[s:e].lower(), s, e, 1.0, "email")

    def _cue_before(self, doc: _Doc, tok_index: int) -> tuple[str | None, bool]:
        """Nearest id-like cue before a number in the same sentence: ("order"|"invoice"|"card"|"phone"|None,
        whether a linking word like "number"/"#" was seen)."""
        toks = doc.toks
        link = False
        sent = toks[tok_index].sent if tok_index < len(toks) else -1
        for k in range(tok_index - 1, max(-1, tok_index - 10), -1):
            t = toks[k]
            if t.sent != sent or t.kind == "num":
                break
            w = t.low
            if t.text == "#" or w in _NUMBER_LINKS:
                link = True
                continue
            if t.kind != "word":
                continue
            if w in self._order_cues:
                return "order", link
            if w in self._invoice_cues:
                return "invoice", link
            if w in self._card_cues:
                return "card", link
            if w in self._phone_cues:
                return "phone", link
            adjacent = k >= tok_index - 2
            for cue, kind in self._id_cue_glue:  # "theorder", "ispurchase"
                if w.endswith(cue) and 0 < len(w) - len(cue) <= 4:
                    return kind, link
            if len(w) >= 5 or link or adjacent:
                for kind, fz in self._id_cue_fuzzy.items():
                    if fz.lookup(w):
                        return kind, link
        return None, link

    def _digit_runs(self, doc: _Doc) -> None:
        text = doc.text
        for s, e in _split_runs(text):
            surface = text[s:e]
            # Times (8:30, 10:30:15) and dates (12/03/2021, 2021-03-12) are neither ids nor phones.
            if ":" in surface or _DATE_RE.fullmatch(surface):
                continue
            groups = [g for g in _GROUP_SPLIT_RE.split(surface) if g]
            digits = "".join(groups)
            n = len(digits)
            before = text[max(0, s - 3) : s]
            prev_char = before.rstrip()[-1:] if before.strip() else ""
            if prev_char in self._currency_symbols or self._currency_follows(doc, e):
                continue  # an amount: handled by _amounts
            if len(groups) == 2 and len(groups[1]) <= 2 and surface[len(groups[0])] in ".,":
                continue  # a decimal number
            ti = doc.tok_at(s)
            kind, link = self._cue_before(doc, ti)
            hashed = prev_char == "#"
            paren = prev_char == "("
            if paren:
                s -= 1
            if prev_char == "+" and 7 <= n <= 15:
                ps = text.rfind("+", 0, s)
                doc.add("phone", "+" + digits, ps, e, 1.0, "phone")
            elif kind in ("order", "invoice"):
                self._maybe_id(doc, kind, digits, s, e, hashed or link, groups)
            elif 13 <= n <= 19 and _luhn_ok(digits) and (len(groups) == 1 or all(3 <= len(g) <= 6 for g in groups)):
                doc.add("card_number", digits, s, e, 1.0 if kind == "card" or len(groups) > 1 else 0.9, "card_number")
            elif kind == "phone" and 7 <= n <= 15:
                doc.add("phone", _phone_value(digits), s, e, 1.0, "phone")
            elif kind == "card":
                continue
            elif _phone_shaped(groups, paren):
                doc.add("phone", _phone_value(digits), s, e, 0.9, "phone")
            elif link and 7 <= n <= 15 and kind is None and not hashed:
                doc.add("phone", _phone_value(digits), s, e, 0.7, "phone")  # "my number is 6135550179"
            elif hashed and n >= 4 and len(groups) == 1:
                doc.add("order_id", digits, s - 1, e, 0.5, "id_weak")
            elif n >= 8 and len(groups) == 1:
                doc.add("order_id", digits, s, e, 0.5, "id_weak")  # bare long number: likely an order id

    def _currency_follows(self, doc: _Doc, end: int) -> bool:
        ti = bisect_right(doc.starts, end - 1)
        if ti >= len(doc.toks):
            return False
        if doc.toks[ti].text in self._currency_symbols and doc.toks[ti].start - end <= 1:
            return True  # "15€"
        keys = [t.low for t in doc.toks[ti : ti + 3]]
        hit = self._currency_after.longest(keys, 0)
        return hit is not None and not (hit[1] == "GBP" and keys[0].startswith("pound"))

    def _maybe_id(self, doc: _Doc, kind: str, digits: str, s: int, e: int, linked: bool, groups: list[str]) -> None:
        n = len(digits)
        if n < 3 or (n == 3 and not linked) or n > 24:
            return
        if n == 4 and len(groups) == 1 and 1900 <= int(digits) <= 2099 and not linked:
            return  # "my order from 2023"
        nxt = bisect_right(doc.starts, e - 1)
        if nxt < len(doc.toks):
            w = doc.toks[nxt].low
            if w in self._units or doc.toks[nxt].key in self._product_heads or w in self._not_qty_after:
                return  # "order 1500 grams", "order 2019 purchases"
        if doc.text[s - 1 : s] == "#":
            s -= 1
        doc.add("order_id" if kind == "order" else "invoice_id", digits, s, e, 1.0, "id")

    def _alnum_ids(self, doc: _Doc) -> None:
        known = {"ord": "order", "po": "order", "so": "order", "inv": "invoice", "rcpt": "invoice"}
        for m in _ALNUM_ID_RE.finditer(doc.text):
            prefix, _, num = m.groups()
            kind = known.get(prefix.lower())
            if kind is None:
                if not prefix.isupper():
                    continue
                kind, _ = self._cue_before(doc, doc.tok_at(m.start()))
                if kind not in ("order", "invoice"):
                    continue
            value = f"{prefix.upper()}-{num}" if m.group(2).strip() == "-" else f"{prefix.upper()}{num}"
            doc.add("order_id" if kind == "order" else "invoice_id", value, m.start(), m.end(), 1.0, "id")

    def _mask_card_like(self, text: str) -> str:
        def repl(m: re.Match[str]) -> str:
            digits = re.sub(r"\D", "", m.group())
            if not 13 <= len(digits) <= 19:
                return m.group()
            window = _fold(text[max(0, m.start() - 40) : m.start()])
            if any(c in window for c in self._card_cues if len(c) > 2):
                return "[CARD]"
            return m.group()

        return _RUN_RE.sub(repl, text)

    # ---- products --------------------------------------------------------------------------------------

    def _product_keys(self, doc: _Doc) -> tuple[list[str], list[bool]]:
        keys: list[str] = []
        fuzzy: list[bool] = []
        for j, t in enumerate(doc.vt):
            k = t.key
            used = False
            if t.kind == "word" and k not in self._product_vocab and k not in self._known_words:
                sentence_start = j == 0 or doc.vt[j - 1].sent != t.sent
                # A capital mid-sentence is likely a name ("Kumar"): never "correct" it into a product.
                if not t.cap or sentence_start:
                    fixed = self._product_fuzzy.lookup(k) or (self._product_fuzzy.lookup(t.low) if t.low != k else None)
                    if fixed:
                        k, used = fixed, True
            keys.append(k)
            fuzzy.append(used)
        return keys, fuzzy

    def _products_pass(self, doc: _Doc) -> dict[int, _Cand]:
        """Catalog products/groups; returns view index -> candidate for quantity linking."""
        keys, fuzzy = self._product_keys(doc)
        found: dict[int, _Cand] = {}
        last: _Cand | None = None
        j = 0
        while j < len(keys):
            hit = self._products.longest(keys, j)
            if hit is None:
                j += 1
                continue
            n, (type_, value) = hit
            if type_ != "blocked":
                s, e = doc.vt[j].start, doc.vt[j + n - 1].end
                if doc.vt[j + n - 1].text.endswith(("'s", "\u2019s")):
                    e -= 2
                score = 0.8 if any(fuzzy[j : j + n]) else 1.0
                prev = last if last is not None and 0 <= s - last.end <= 1 else None
                group = (
                    prev.value
                    if prev and prev.type == "product_category"
                    else (self._coarse_of_name.get(prev.value) if prev else None)
                )
                if prev is not None and type_ == "product_category" and value == group:
                    prev.end = e  # "Yoggi yoghurts", "Tropicana juice": brand + its group noun is one mention
                else:
                    doc.add(type_, value, s, e, score, "product")
                    found[j] = last = doc.cands[-1]
            j += n
        return found

    # ---- amounts and quantities ------------------------------------------------------------------------

    def _number_at(self, doc: _Doc, j: int) -> tuple[float, int, bool] | None:
        """A number starting at view index j: (value, next index, is_bare_article)."""
        vt = doc.vt
        t = vt[j]
        if t.kind == "num":
            v = _parse_number(t.text)
            return None if v is None else (v, j + 1, False)
        if t.kind != "word":
            return None
        hit = self._numwords.longest(doc.low, j)
        if hit is None:
            return None
        n, v = hit
        k = j + n
        if n == 1 and t.low in self._tens and k < len(vt) and vt[k].low in self._ones:
            v += self._ones[vt[k].low]
            k += 1
        if k < len(vt) and vt[k].low == "hundred" and v < 100:
            v *= 100
            k += 1
        if k < len(vt) and vt[k].low == "thousand" and v < 1000:
            v *= 1000
            k += 1
        return v, k, n == 1 and t.low in ("a", "an")

    def _refund_context(self, doc: _Doc) -> list[int]:
        """Character positions of refund cues (typos tolerated: "reimbvurse", "rebatingg")."""
        pos: list[int] = []
        for j, t in enumerate(doc.vt):
            if t.kind != "word":
                continue
            if (
                t.low in self._refund_words
                or self._refund_fuzzy.lookup(t.low)
                or self._refund_phrases.longest(doc.low, j)
                or any(t.low.startswith(w) for w in self._refund_stems)
            ):  # glued "reimbursementof"
                pos.append(t.start)
        return pos

    def _amounts(self, doc: _Doc, product_at: dict[int, _Cand]) -> None:
        vt = doc.vt
        refund_pos: list[int] | None = None
        j = 0
        while j < len(vt):
            num = self._number_at(doc, j)
            if num is None:
                j += 1
                continue
            value, k, article = num
            start, end = vt[j].start, vt[k - 1].end
            # Money: symbol/code before, or currency word after.
            cur = None
            p = j - 1
            if p >= 0 and vt[p].text in self._currency_symbols and vt[p].end >= start - 1:
                cur, start = self._currency_symbols[vt[p].text], vt[p].start
                if p >= 1 and vt[p - 1].text.upper() in ("US", "C", "A", "R") and vt[p - 1].end == vt[p].start:
                    start = vt[p - 1].start
            elif p >= 0 and vt[p].low in self._currency_codes and not article:
                cur, start = vt[p].low.upper(), vt[p].start
            after = self._currency_after.longest(doc.low, k) if k < len(vt) else None
            if cur is None and k < len(vt) and vt[k].text in self._currency_symbols and vt[k].start - end <= 1:
                cur, end = self._currency_symbols[vt[k].text], vt[k].end
                k += 1
            elif cur is None and after is not None:
                n_after, code = after
                weight = (
                    code == "GBP" and vt[k].low.startswith("pound") and self._weight_context(doc, k + 1, product_at)
                )
                if not weight and not (vt[k].low == "p" and k + 1 < len(vt) and vt[k + 1].text == "."):
                    cur = code
                    end = vt[k + n_after - 1].end
                    if code == "CENT":
                        value /= 100
                    k += n_after
            if cur is not None:
                if refund_pos is None:
                    refund_pos = self._refund_context(doc)
                near = bisect_right(refund_pos, start + 160)  # refund_pos is sorted: stay O(log n) per amount
                refund = near > 0 and refund_pos[near - 1] > start - 160
                doc.add("refund_amount" if refund else "money", fmt_number(value), start, end, 1.0, "money")
                j = k
                continue
            self._quantity(doc, j, k, value, article, product_at)
            j = k

    def _weight_context(self, doc: _Doc, k: int, product_at: dict[int, _Cand]) -> bool:
        """ "2 pounds of carrots" / "2 pounds carrots" weigh; "a refund of 25 pounds for the onions" pays."""
        vt = doc.vt
        return k < len(vt) and (vt[k].low == "of" or k in product_at)

    def _quantity(self, doc: _Doc, j: int, k: int, value: float, article: bool, product_at: dict[int, _Cand]) -> None:
        vt = doc.vt
        if k < len(vt) and vt[k].low in self._not_qty_after:
            return
        if j > 0 and (vt[j - 1].text in ("#", "+") or vt[j - 1].low in _NUMBER_LINKS):
            return  # "gate #12", "number 5"
        unit = None
        m = k
        if m < len(vt) and vt[m].low in self._units and vt[m].start - vt[m - 1].end <= 1:
            u = self._units[vt[m].low]
            has_of = m + 1 < len(vt) and vt[m + 1].low == "of"
            plural = vt[m].low.endswith("s") and vt[m].low != u
            if vt[m].low not in _UNIT_NEEDS_OF or has_of or plural:
                unit = u
                m += 1
        if unit == "dozen":
            value, unit = value * 12, None
            unit_done = True
        else:
            unit_done = unit is not None
        of = m < len(vt) and vt[m].low == "of"
        first = m + 1 if of else m
        # A product may follow directly or after up to two adjectives ("3 ripe bananas").
        prod_i = next((i for i in range(first, min(first + 3, len(vt))) if i in product_at), None)
        product_next = prod_i is not None and all(
            vt[i].kind == "word" and vt[i].low not in _FUNCTION_WORDS for i in range(first, prod_i)
        )
        if article and not (unit_done and (of or product_next)):
            return  # "a bag of carrots" yes; "a package to arrive" no
        end = vt[m - 1].end
        if unit_done:
            v = fmt_number(value) + (f" {unit}" if unit else "")
            doc.add("quantity", v, vt[j].start, end, 1.0, "quantity")
            return
        if vt[j].kind == "num" and "." not in vt[j].text and len(vt[j].text) > 4:
            return  # 5+ digit numbers are not shopping quantities
        if product_next:
            doc.add("quantity", fmt_number(value), vt[j].start, end, 1.0, "quantity")
            return
        verb = any(vt[i].low in self._qty_verbs for i in range(max(0, j - 2), j))
        clause_end = m >= len(vt) or vt[m].kind == "sym" or vt[m].low in ("please", "more", "them", "those", "of")
        if verb and clause_end and value < 1000:
            doc.add("quantity", fmt_number(value), vt[j].start, end, 0.8, "quantity")

    # ---- account types ---------------------------------------------------------------------------------

    def _is_account_noun(self, w: str) -> bool:
        if w in self._account_nouns or self._account_noun_fuzzy.lookup(w):
            return True
        return any(w.startswith(n) for n in self._account_nouns if len(n) >= 6)  # "accountcan"

    def _account_types(self, doc: _Doc) -> None:
        vt = doc.vt
        for j, t in enumerate(vt):
            if t.kind != "word":
                continue
            hit = self._accounts.longest(doc.low, j)
            if hit is not None:
                n, canon = hit
                k = j + n
                nxt = vt[k].low if k < len(vt) and vt[k].sent == t.sent else ""
                if nxt and vt[k].kind == "word" and self._is_account_noun(nxt):
                    doc.add("account_type", canon, t.start, vt[k - 1].end, 1.0, "account_type")
                    continue
                # "my account type is gold"
                stated = (
                    j >= 2
                    and vt[j - 1].low in ("is", "was", ":", "=")
                    and any(self._is_account_noun(vt[i].low) for i in range(max(0, j - 3), j - 1))
                )
                switched = stated or any(
                    vt[i].low in self._switch_cues for i in range(max(0, j - 4), j) if vt[i].sent == t.sent
                )
                if switched and (not nxt or vt[k].kind == "sym" or nxt in ("to", "from", "and", "or", "one")):
                    doc.add("account_type", canon, t.start, vt[k - 1].end, 0.8, "account_type")
                continue
            # Glued forms seen in typed text: "Freemiumaccount", "myFreemium account", "herfree account".
            w = t.low
            if len(w) < 4:
                continue
            for variant, canon in self._account_single:
                if w.startswith(variant) and self._is_account_noun(w[len(variant) :]):
                    doc.add("account_type", canon, t.start, t.start + len(variant), 0.9, "account_type")
                    break
                glue = w[: -len(variant)]
                if (
                    w.endswith(variant)
                    and (glue in _GLUE_PREFIXES or glue.endswith("ing"))
                    and j + 1 < len(vt)
                    and self._is_account_noun(vt[j + 1].low)
                ):
                    doc.add("account_type", canon, t.end - len(variant), t.end, 0.9, "account_type")
                    break

    # ---- places ----------------------------------------------------------------------------------------

    def _is_place_cue(self, w: str) -> bool:
        return w in self._place_cues or bool(self._place_cue_fuzzy.lookup(w)) or _from_typo(w)

    def _places_pass(self, doc: _Doc) -> None:
        vt = doc.vt
        last_place_end = -1
        j = 0
        while j < len(vt):
            hit = self._places.longest(doc.low, j) if vt[j].kind == "word" else None
            if hit is None:
                j += 1
                continue
            n, (type_, canon, ambiguous, must_upper) = hit
            span = vt[j : j + n]
            if doc.caseless:
                if n == 1 and span[0].low in _CASELESS_PLACE_BLOCK:
                    j += 1
                    continue
            elif any(mu and not tk.text.isupper() for mu, tk in zip(must_upper, span, strict=True)):
                j += 1
                continue
            prev = [x for x in vt[max(0, j - 3) : j] if x.sent == vt[j].sent]
            cue = bool(prev) and self._is_place_cue(prev[-1].low)
            listed = bool(prev) and prev[-1].low in ("and", "or", ",", "&") and prev[-1].start - last_place_end <= 2
            cue_near = cue or listed or any(self._is_place_cue(x.low) for x in prev)
            if ambiguous:
                head = next((tk for tk in span if tk.low != "the"), span[0])
                if not (head.cap or doc.caseless) or not (cue or listed):
                    j += 1
                    continue
            doc.add(type_, canon, span[0].start, span[-1].end, 1.0 if cue_near else 0.8, "place")
            last_place_end = span[-1].end
            j += n

    # ---- person names ----------------------------------------------------------------------------------

    def _name_parts(self, doc: _Doc, i: int, allow_lower: bool) -> tuple[int, int, list[str]] | None:
        """Up to 3 name words from toks[i] (hyphen/apostrophe joined, particles allowed inside)."""
        toks = doc.toks
        parts: list[str] = []
        start = end = -1
        k = i
        while k < len(toks) and len(parts) < 4:
            t = toks[k]
            if t.kind != "word" or (parts and t.start - end > 1):
                break
            low = _singular(t.low) if t.low.endswith("'s") else t.low
            if low in _NAME_PARTICLES and parts and k + 1 < len(toks) and toks[k + 1].cap:
                parts.append(t.text)
                end = t.end
                k += 1
                continue
            if low in self._name_stop or (not t.cap and not allow_lower) or t.upper and len(t.text) > 3:
                break
            if not parts and (low in self._place_words or low in self._product_heads) and low not in self._first_names:
                break
            word_s, word_e = t.start, t.end
            # Join "Al-Sayed", "Smith-Jones".
            while (
                k + 2 < len(toks)
                and toks[k + 1].text == "-"
                and toks[k + 1].start == word_e
                and toks[k + 2].kind == "word"
                and toks[k + 2].start == toks[k + 1].end
            ):
                k += 2
                word_e = toks[k].end
            surface = doc.text[word_s:word_e]
            possessive = surface.endswith(("'s", "\u2019s"))
            if possessive:
                surface, word_e = surface[:-2], word_e - 2
            if allow_lower and not surface[0].isupper():
                surface = "-".join(p[:1].upper() + p[1:] for p in surface.split("-"))
            parts.append(surface)
            if start < 0:
                start = word_s
            end = word_e
            k += 1
            if possessive:
                break  # "Dr. Nguyen's order": a possessive ends the name
        while parts and parts[-1].lower() in _NAME_PARTICLES:
            parts.pop()
        if not parts:
            return None
        return start, end, parts

    def _names(self, doc: _Doc) -> None:
        toks = doc.toks
        lows = [t.low for t in toks]
        last_name_end = -1
        for i, t in enumerate(toks):
            if t.kind != "word":
                continue
            # (a) title + surname: "Mr. Smith", "mr smith", "Dr Okafor".
            title = self._titles.get(t.low)
            if title is not None:
                k = i + 1
                if k < len(toks) and toks[k].text == "." and toks[k].start == t.end:
                    k += 1
                abbrev = t.low in ("mr", "mrs", "ms", "dr", "mx", "prof")
                if k < len(toks) and (abbrev or t.cap):
                    got = self._name_parts(doc, k, allow_lower=abbrev and not t.cap)
                    if got:
                        _, e, parts = got
                        doc.add("person_name", f"{title} {' '.join(parts)}", t.start, e, 1.0, "name_strong")
                continue
            # (b) self-introduction: "my name is ...", "I'm ...", "this is ...", "call me ...".
            for pattern, strong in [(p, True) for p in _NAME_INTRO_STRONG] + [(p, False) for p in _NAME_INTRO_SELF]:
                n = len(pattern)
                if tuple(lows[i : i + n]) != pattern:
                    continue
                got = self._name_parts(doc, i + n, allow_lower=strong or doc.caseless)
                naming = pattern[0] in ("call", "address", "known", "goes")  # "call me X" names; "I'm X" may not
                if got and (strong or self._plausible_name(got[2], doc, got[1], naming=naming)):
                    s, e, parts = got
                    doc.add("person_name", " ".join(parts), s, e, 1.0 if strong else 0.9, "name_strong")
                break
            # (c) after a preposition: "bills from Anna Freeman", "for Carlos Mendoza".
            chained = t.low in ("and", "or", "&") and last_name_end >= 0 and t.start - last_name_end <= 2
            if t.low in _NAME_PREPS or _from_typo(t.low) or chained or (doc.caseless and t.low in _NAME_VERBS):
                got = self._name_parts(doc, i + 1, allow_lower=doc.caseless)
                if got and (not doc.caseless or _fold(got[2][0]) in self._first_names):
                    if len(got[2]) >= 2 or _fold(got[2][0]) in self._first_names:
                        s, e, parts = got
                        doc.add("person_name", " ".join(parts), s, e, 0.8 if not doc.caseless else 0.6, "name_weak")
                        last_name_end = e
            # (d) a known given name anywhere ("my husband Ahmed"); sentence-initial needs a surname too.
            if t.cap and t.low in self._first_names and t.low not in self._name_stop:
                got = self._name_parts(doc, i, allow_lower=False)
                if got:
                    initial = i == 0 or toks[i - 1].sent != t.sent or toks[i - 1].text in ",:;\"'("
                    if len(got[2]) >= 2 or not initial:
                        s, e, parts = got
                        doc.add("person_name", " ".join(parts), s, e, 0.7, "name_weak")

    def _plausible_name(self, parts: list[str], doc: _Doc, end: int, naming: bool) -> bool:
        """A self-introduction ("I'm X", "call me X") names a person if X is a known given name, or two
        capitalised words, or, in caseless input, a lone word that ends the clause ("call me shane")."""
        if _fold(parts[0]) in self._first_names:
            return True
        if doc.caseless and naming:
            rest = doc.text[end:].lstrip()
            return (
                len(parts) == 1
                and parts[0].isalpha()
                and (not rest or not rest[0].isalnum() or rest.startswith("please"))
            )
        # In caseless input the parts were title-cased by us, so capitals prove nothing.
        return not doc.caseless and len(parts) >= 2 and all(p[:1].isupper() for p in parts)


# ---------------------------------------------------------------------------------------------- helpers


def _from_typo(w: str) -> bool:
    """Typed "from" with one typo ("rfom", "frm", "fromn") but not real words such as "form"."""
    return 3 <= len(w) <= 5 and w not in _FROM_TYPO_BLOCK and w[0] in "fr" and _dl_distance(w, "from") <= 1


def _split_runs(text: str) -> Iterable[tuple[int, int]]:
    """Digit runs, cut before a lone digit after a space ("order 12345 2 kg" is an id and a quantity) unless
    the run is an international number (+33 1 42 68 53 00)."""
    for m in _RUN_RE.finditer(text):
        s, e = m.span()
        if text[max(0, s - 2) : s].strip().endswith("+"):
            yield s, e
            continue
        cut = s
        for g in re.finditer(r" (?=[0-9](?![0-9]))", text[s:e]):
            if g.start() > 0:
                yield cut, s + g.start()
                cut = s + g.end()
        yield cut, e


def _nanp(d10: str) -> bool:
    return len(d10) == 10 and d10[0] in "23456789" and d10[3] in "23456789"


def _phone_value(digits: str) -> str:
    if len(digits) == 11 and digits[0] == "1" and _nanp(digits[1:]):
        return "+" + digits
    if _nanp(digits):
        return "+1" + digits
    return digits


def _phone_shaped(groups: list[str], paren: bool) -> bool:
    """Digit grouping that only phone numbers use: 415-555-0132, (415) 555 0132, 1-800-555-0199,
    07700 900461, 020 7946 0321."""
    sizes = [len(g) for g in groups]
    digits = "".join(groups)
    if sizes == [3, 3, 4] and _nanp(digits):
        return True
    if sizes == [1, 3, 3, 4] and groups[0] == "1" and _nanp(digits[1:]):
        return True
    if paren and len(digits) == 10 and _nanp(digits):
        return True
    return digits.startswith("0") and 9 <= len(digits) <= 11 and len(groups) >= 2 and sizes[0] >= 3


def _resolve(doc: _Doc) -> list[Entity]:
    """Greedy non-overlapping selection: priority first, then longer span, then earlier start."""
    chosen: list[_Cand] = []
    taken = bytearray(len(doc.text) + 1)
    for c in sorted(doc.cands, key=lambda c: (-c.prio, -(c.end - c.start), -c.score, c.start)):
        if any(taken[c.start : c.end]):
            continue
        chosen.append(c)
        taken[c.start : c.end] = b"\x01" * (c.end - c.start)
    chosen.sort(key=lambda c: c.start)
    return [Entity(c.type, c.value, c.start, c.end, doc.text[c.start : c.end], c.score) for c in chosen]


@lru_cache(maxsize=4)
def _load_default(root: str) -> EntityExtractor:
    base = Path(root)
    return EntityExtractor.from_files(base / "entities" / "gazetteer.yml", base / "kb" / "catalog.csv")
