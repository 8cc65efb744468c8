"""Compose multimodal kiosk turns from real single-modality examples (docs/fusion.md, "How the data is made").

No data set records a customer's words, the product in their hand, their face and their voice together, so
each turn is assembled: a real utterance (or a hand-written product-question template filled from the
catalogue), a real Grocery Store photo (its recognizer output, computed in ``models.fusion.features``), a
prosody vector measured on speech synthesised for this purpose, and a *synthetic* facial-expression vector
(there is no labelled face data here). Everything is drawn from one seeded ``numpy`` generator, so a split is
a pure function of (pools, seed, n).

Labels come from the composition, never from a model:

* ``intent``: the utterance's or template's intent.
* ``refers``: 1 when the sentence is a deictic product question ("is this gluten-free?", a template's
  ``{obj}`` filled with a referent from ``data/fusion/referents.csv``) *and* a catalogue product is in view
  (photo or scanned barcode); 0 for named-product questions ("is the oat milk vegan?"),
  for deictic questions with nothing or a non-product in view, and for every non-product intent; -1 (not
  scored) for product-intent utterances from the intent files, whose deixis nobody annotated.
* ``frustrated``: a latent coin per turn (more often heads for complaints). Each modality then shows a cue
  only *probabilistically*: a frustrated phrasing in the text, an agitated voice, an angry/disgusted face,
  each more likely when frustrated but neither necessary nor sufficient. No single modality determines the
  label; the Bayes-optimal classifier needs all three, which is what the ablation measures.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.errors import DataError
from runtime.fusion import FACE_CLASSES

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "fusion"
SPLITS = ("train", "dev", "test")
PRODUCT_INTENTS = ("product_info", "product_price", "find_product")
OOS_LABEL = "oos"

# The generative process (docs/fusion.md). Pairs are (P | calm, P | frustrated).
P_KIND = {"deictic": 0.30, "named": 0.10, "general": 0.60}
P_FRUSTRATED, P_FRUSTRATED_COMPLAINT = 0.25, 0.60
P_TEXT_CUE = (0.04, 0.45)
P_POLITE = 0.15  # polite wrappers on calm turns too, so "the sentence was wrapped" is no cue by itself
P_AUDIO, P_AGITATED = 0.5, (0.12, 0.65)
P_FACE, P_ANGRY_FACE = 0.6, (0.08, 0.55)
IMAGE_MIX = {
    "deictic": {"photo": 0.70, "barcode": 0.10, "negative": 0.10, "none": 0.10},
    "named": {"photo": 0.45, "barcode": 0.05, "negative": 0.0, "none": 0.50},
    "general": {"photo": 0.30, "barcode": 0.03, "negative": 0.05, "none": 0.62},
}
CUE_FACES = {"angry": 0.75, "disgust": 0.25}
CALM_FACES = {"neutral": 0.55, "happy": 0.20, "sad": 0.12, "surprise": 0.08, "fear": 0.05}
# Cap per Bitext intent: its 27 intents would otherwise outnumber the kiosk's own 13 several times over.
BITEXT_PER_INTENT = {"train": 60, "test": 12}
CLINC_OOS_TRAIN = 300
DEV_FRACTION = 0.15
DEV_REFERENTS = ("this here", "these ones")  # training referents held back for the dev split


@dataclass(frozen=True)
class Template:
    """``{obj}``: a deictic referent ("this one") or a product's name, the same question both ways, so the
    pair differs only in what it points at; ``{product}``: named only; no slot: deictic only."""

    intent: str
    text: str

    @property
    def deictic_ok(self) -> bool:
        return "{product}" not in self.text

    @property
    def named_ok(self) -> bool:
        return "{obj}" in self.text or "{product}" in self.text


@dataclass(frozen=True)
class Pools:
    """What one split draws from."""

    utterances: Mapping[str, Sequence[str]]  # intent → sentences
    templates: Sequence[Template]
    frustrated_phrases: Sequence[tuple[str, str]]  # (position, phrase)
    polite_phrases: Sequence[tuple[str, str]]
    photo_labels: np.ndarray  # true fine class of each photo in the split's image pool
    n_negatives: int  # non-product views (open-set negatives) in the image pool
    prosody_arousal: np.ndarray  # 0 calm / 1 agitated, per prosody-pool entry
    prosody_words: np.ndarray  # words in the sentence each prosody entry was synthesised from
    product_names: Sequence[Sequence[str]]  # per fine class: the names a customer may use
    referents: Sequence[str] = ("this", "this one", "these")
    n_products: int = 81


@dataclass
class Turn:
    text: str
    intent: str
    kind: str  # deictic | named | general
    refers: int  # 1 / 0 / -1 (not scored)
    frustrated: int
    image: str  # photo | barcode | negative | none
    image_index: int = -1  # row in the split's photo or negative pool
    product: int = -1  # the true product in view (photo label or scanned product), -1 for none
    face: np.ndarray | None = None
    audio_index: int = -1  # row in the split's prosody pool
    cues: dict = field(default_factory=dict)


def bucket(text: str) -> float:
    """A stable pseudo-random number in [0, 1) from the text alone (dev split membership)."""
    return int(hashlib.sha256(text.strip().lower().encode()).hexdigest()[:8], 16) / 2**32


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def read_templates(path: Path = DATA / "product_questions.csv") -> dict[str, list[Template]]:
    """split → templates. The test split's phrasings are not in the training split's."""
    out: dict[str, list[Template]] = {"train": [], "test": []}
    with open(path, encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            if row.get("split") not in out or row.get("intent") not in PRODUCT_INTENTS or not row.get("template"):
                raise DataError(f"{path}:{i}: need split (train|test), a product intent and a template, got {row}")
            out[row["split"]].append(Template(row["intent"], row["template"].strip()))
    return out


def read_phrases(path: Path = DATA / "tone_phrases.csv") -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(split, tone) → [(position, phrase)]."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            if row.get("split") not in ("train", "test") or row.get("tone") not in ("frustrated", "polite") \
                    or row.get("position") not in ("prefix", "suffix") or not row.get("phrase"):
                raise DataError(f"{path}:{i}: need split, tone (frustrated|polite), position (prefix|suffix), phrase")
            out.setdefault((row["split"], row["tone"]), []).append((row["position"], row["phrase"]))
    return out


def read_referents(path: Path = DATA / "referents.csv") -> dict[str, list[str]]:
    """split → the words a deictic question points with ("this one", "these", …)."""
    out: dict[str, list[str]] = {"train": [], "test": []}
    with open(path, encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            if row.get("split") not in out or not (row.get("referent") or "").strip():
                raise DataError(f"{path}:{i}: need split (train|test) and a referent, got {row}")
            out[row["split"]].append(row["referent"].strip())
    return out


def product_names(catalog_csv: Path = REPO / "data" / "kb" / "catalog.csv") -> tuple[list[list[str]], list[str]]:
    """Per fine class (catalogue order): display name + aliases; and the catalogue ids (for barcode one-hots)."""
    with open(catalog_csv, encoding="utf-8", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["fine_id"]))
    names = [[r["display_name"].lower()] + [a for a in r["aliases"].split("|") if a] for r in rows]
    return names, [r["id"] for r in rows]


def utterance_pools(shared: Path, bitext_csv: Path | None = None, seed: int = 0) -> dict[str, dict[str, list[str]]]:
    """split → intent → sentences. Train: the intent model's own training material (project files, 85% of
    Bitext); dev: 15% of that by a hash of the text; test: the evaluation files the intent model never saw
    plus the bundle's Bitext hold-out (``models.kiosk_bundle.bitext_split``, seed 0 as the bundle used)."""
    from models.data import Example, read_labeled, stratified_split
    from models.kiosk_bundle import bitext_split, clinc_oos_rows

    if bitext_csv is None:
        train_bx, held_bx = bitext_split(shared, seed=0)
    else:
        train_bx, held_bx = stratified_split(read_labeled(bitext_csv, "instruction", "intent"), 0.15, 0)
    rng = np.random.default_rng(seed)

    def capped(rows: Sequence[Example], cap: int) -> list[Example]:
        by: dict[str, list[Example]] = {}
        for e in rows:
            by.setdefault(e.label, []).append(e)
        out = []
        for lab in sorted(by):
            idx = rng.permutation(len(by[lab]))[:cap]
            out += [by[lab][i] for i in sorted(idx)]
        return out

    own = [e for p in sorted((REPO / "data" / "intents").glob("*.csv")) for e in read_labeled(p)]
    oos = clinc_oos_rows(shared, 0)
    oos = [oos[i] for i in sorted(rng.permutation(len(oos))[:CLINC_OOS_TRAIN])]
    train_rows = own + capped(train_bx, BITEXT_PER_INTENT["train"]) + oos
    ev = REPO / "data" / "eval"
    test_rows = (read_labeled(ev / "kiosk_basics_test.csv") + read_labeled(ev / "bitext_paraphrases.csv")
                 + read_labeled(ev / "oos_kiosk.csv") + capped(held_bx, BITEXT_PER_INTENT["test"]))
    # Bitext repeats sentences across its templates, so the bundle's hold-out shares texts with its training
    # part: the whole hold-out is kept out of training, not just the rows sampled into the test split.
    test_keys = {_norm(e.text) for e in test_rows} | {_norm(e.text) for e in held_bx}
    pools: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    seen: set[str] = set()
    for e in train_rows:
        k = _norm(e.text)
        if not k or k in test_keys or k in seen:  # a sentence in both would leak the test split
            continue
        seen.add(k)
        pools["dev" if bucket(e.text) < DEV_FRACTION else "train"].setdefault(e.label, []).append(e.text)
    for e in test_rows:
        if _norm(e.text):
            pools["test"].setdefault(e.label, []).append(e.text)
    return pools


def face_vector(rng: np.random.Generator, cue: bool) -> np.ndarray:
    """A synthetic FER2013 softmax: one dominant expression (angry/disgust for a cue) plus Dirichlet spread."""
    table = CUE_FACES if cue else CALM_FACES
    dom = FACE_CLASSES.index(str(rng.choice(list(table), p=list(table.values()))))
    peak = rng.uniform(0.35, 0.9)
    rest = rng.dirichlet(np.full(len(FACE_CLASSES) - 1, 0.7)) * (1.0 - peak)
    if rest.max() >= peak:  # "dominant" means the argmax: squeeze the spread under the peak
        rest *= 0.9 * peak / rest.max()
    v = np.insert(rest, dom, peak).astype(np.float32)
    return v / v.sum()


def _choice(rng: np.random.Generator, table: Mapping[str, float]) -> str:
    keys = list(table)
    p = np.array([table[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _wrap(text: str, position: str, phrase: str) -> str:
    if position == "prefix":
        return f"{phrase} {text}"
    return text.rstrip(" ?.!") + phrase


def compose(pools: Pools, n: int, seed: int) -> list[Turn]:
    """``n`` turns drawn from ``pools`` with ``seed`` (the same arguments always give the same turns)."""
    rng = np.random.default_rng(seed)
    intents = sorted(i for i, rows in pools.utterances.items() if rows)
    deictic = [t for t in pools.templates if t.deictic_ok]
    named = [t for t in pools.templates if t.named_ok]
    if not intents or not deictic or not named or not len(pools.photo_labels) or not len(pools.prosody_arousal):
        raise DataError("a split needs utterances, deictic and named templates, photos and prosody to compose from")
    by_class = {c: np.flatnonzero(pools.photo_labels == c) for c in range(pools.n_products)}
    classes = [c for c, idx in by_class.items() if len(idx)]
    out: list[Turn] = []
    for _ in range(n):
        kind = _choice(rng, P_KIND)
        if kind == "general":
            intent = intents[int(rng.integers(len(intents)))]  # intents evenly, then a sentence of it
            rows = pools.utterances[intent]
            text = rows[int(rng.integers(len(rows)))]
        else:
            group = deictic if kind == "deictic" else named
            t = group[int(rng.integers(len(group)))]
            intent, text = t.intent, t.text
            if kind == "named":
                names = pools.product_names[int(rng.integers(len(pools.product_names)))]
                name = names[int(rng.integers(len(names)))]
                text = text.replace("{product}", name)
                text = text.replace("{obj}", f"the {name}" if rng.random() < 0.5 else name)
            else:
                text = text.replace("{obj}", pools.referents[int(rng.integers(len(pools.referents)))])
        frustrated = int(rng.random() < (P_FRUSTRATED_COMPLAINT if intent == "complaint" else P_FRUSTRATED))
        text_cue = bool(rng.random() < P_TEXT_CUE[frustrated])
        if text_cue:
            pos, phrase = pools.frustrated_phrases[int(rng.integers(len(pools.frustrated_phrases)))]
            text = _wrap(text, pos, phrase)
        elif rng.random() < P_POLITE:
            pos, phrase = pools.polite_phrases[int(rng.integers(len(pools.polite_phrases)))]
            text = _wrap(text, pos, phrase)

        image = _choice(rng, IMAGE_MIX[kind])
        image_index = product = -1
        if image == "photo":
            c = classes[int(rng.integers(len(classes)))]
            image_index = int(rng.choice(by_class[c]))
            product = int(pools.photo_labels[image_index])
        elif image == "barcode":
            product = image_index = int(rng.integers(pools.n_products))
        elif image == "negative":
            if pools.n_negatives == 0:
                image = "none"
            else:
                image_index = int(rng.integers(pools.n_negatives))
        if kind == "deictic":
            refers = int(product >= 0)
        elif kind == "general" and intent in PRODUCT_INTENTS:
            refers = -1
        else:
            refers = 0

        face = None
        face_cue = False
        if rng.random() < P_FACE:
            face_cue = bool(rng.random() < P_ANGRY_FACE[frustrated])
            face = face_vector(rng, face_cue)
        audio_index = -1
        agitated = None
        if rng.random() < P_AUDIO:
            agitated = int(rng.random() < P_AGITATED[frustrated])
            cand = np.flatnonzero(pools.prosody_arousal == agitated)
            # A voice of about this sentence's length: duration and word rate stay plausible for the text.
            words = len(text.split())
            near = cand[np.argsort(np.abs(pools.prosody_words[cand] - words), kind="stable")[:12]]
            audio_index = int(rng.choice(near))
        out.append(Turn(text, intent, kind, refers, frustrated, image, image_index, product, face, audio_index,
                        {"text": text_cue, "face": face_cue, "audio": agitated}))
    return out


def label_counts(turns: Sequence[Turn]) -> dict:
    """A split's make-up, for the manifest and docs."""
    n = max(1, len(turns))
    return {
        "n": len(turns),
        "kinds": {k: sum(t.kind == k for t in turns) for k in P_KIND},
        "images": {k: sum(t.image == k for t in turns) for k in ("photo", "barcode", "negative", "none")},
        "refers_positive": sum(t.refers == 1 for t in turns),
        "refers_scored": sum(t.refers >= 0 for t in turns),
        "frustrated_rate": round(sum(t.frustrated for t in turns) / n, 4),
        "with_face": sum(t.face is not None for t in turns),
        "with_audio": sum(t.audio_index >= 0 for t in turns),
        "intents": len({t.intent for t in turns}),
    }
