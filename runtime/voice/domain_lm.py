"""A small n-gram language model of the kiosk's own words, for pocketsphinx.

pocketsphinx's generic US-English model spreads its probability over all of English, so "oat milk" competes
with every phrase a newspaper might print. The kiosk hears a narrow domain: the intent training sentences and
the catalog's names and aliases say what customers ask and which products exist. An n-gram model of exactly
that text narrows the search to it.

The estimator is interpolated Kneser-Ney with one discount per order (D = n1 / (n1 + 2 n2), Ney's estimate),
written in ARPA backoff form: for an interpolated model the stored probability of a seen n-gram already
includes its lower-order share, so the backoff weight of a context is exactly its interpolation weight and
an unseen word costs bow(h) * p(w | shorter h). A few thousand sentences estimate in well under a second in
plain Python, so there is no need for an external toolkit (SRILM, KenLM) on the kiosk.

pocketsphinx can only decode words its pronunciation dictionary knows, so unknown words (typos in the
training text, brand names such as "Oatly") are dropped before counting, counted, and reported. The model goes
out with a dictionary pruned to its own words: pocketsphinx spends seconds (17 s for a three-phrase model here)
relating a small model to the 134,000-word dictionary, and ~0.05 s with the pruned one; words outside the model
could never be decoded anyway.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import ConfigError, DataError

log = logging.getLogger("storeclerk.asr")

BOS, EOS = "<s>", "</s>"
_DIGITS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
           "7": "seven", "8": "eight", "9": "nine"}
# Words keep inner apostrophes ("isn't", "where's") because the CMU dictionary spells them that way.
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*|\d")


def tokenize(text: str) -> list[str]:
    """Lower-case words as a speaker says them: digits become one word each ("5512093" is read digit by
    digit at a kiosk, and the CMU dictionary has no numerals)."""
    text = str(text).lower().replace("&", " and ").replace("’", "'")
    return [_DIGITS.get(t, t) for t in _TOKEN.findall(text)]


def kiosk_sentences(data: str | Path | None = None) -> list[str]:
    """The kiosk's own text: every intent training sentence (``data/intents/*.csv``, column ``text`` or
    ``utterance``) and every catalog display name and alias (``data/kb/catalog.csv``)."""
    if data is None:
        from runtime.paths import data_dir

        data = data_dir()
    data = Path(data)
    out: list[str] = []
    intent_files = sorted((data / "intents").glob("*.csv"))
    for path in intent_files:
        if path.stem.endswith("_test"):
            continue  # held-out evaluation text must never shape the model it evaluates
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            col = next((c for c in ("text", "utterance") if c in (reader.fieldnames or [])), None)
            if col is None:
                raise DataError(f"{path}: no 'text' or 'utterance' column (columns: {reader.fieldnames})")
            out.extend(row[col] for row in reader if row.get(col))
    catalog = data / "kb" / "catalog.csv"
    if catalog.exists():
        with open(catalog, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                out.extend(x for x in [row.get("display_name", "")] + (row.get("aliases") or "").split("|") if x)
    if not out:
        raise DataError(f"no kiosk text found under {data} (expected intents/*.csv and kb/catalog.csv)")
    return out


def cmu_words(dict_path: str | Path) -> set[str]:
    """The words of a pocketsphinx pronunciation dictionary (alternates such as ``read(2)`` folded)."""
    words = set()
    with open(dict_path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            head = line.split(maxsplit=1)[0] if line.strip() else ""
            if head:
                words.add(head.split("(", 1)[0])
    return words


@dataclass
class DomainLM:
    """What ``build_domain_lm`` wrote: the ARPA file and what went into it."""

    path: Path
    order: int
    sentences: int
    vocabulary: int
    ngrams: dict[int, int]
    discounts: dict[int, float]
    dropped: Counter = field(default_factory=Counter)  # word -> times dropped (not in the dictionary)
    dict_path: Path | None = None  # pronunciation dictionary pruned to the model's words


def _discount(adjusted: dict[tuple[str, ...], int]) -> float:
    hist = Counter(v for v in adjusted.values() if v <= 2)
    n1, n2 = hist[1], hist[2]
    if n1 == 0 or n2 == 0:
        return 0.5  # too little data for Ney's estimate; a middle value keeps every order smoothed
    return min(max(n1 / (n1 + 2 * n2), 0.05), 0.95)


def build_arpa(sentences: Iterable[list[str]], order: int = 3) -> tuple[str, dict[int, int], dict[int, float]]:
    """Estimate an interpolated Kneser-Ney model from tokenized sentences; return (ARPA text, n-gram counts
    per order, discount per order)."""
    if order < 1:
        raise ConfigError(f"an n-gram model needs order >= 1, got {order}")
    raw: list[Counter] = [Counter() for _ in range(order + 1)]
    n_sent = 0
    for words in sentences:
        if not words:
            continue
        n_sent += 1
        seq = [BOS, *words, EOS]
        for n in range(1, order + 1):
            for i in range(len(seq) - n + 1):
                raw[n][tuple(seq[i:i + n])] += 1
    if n_sent == 0:
        raise DataError("no usable sentences to build a language model from (all empty after dropping "
                        "words the dictionary does not know?)")

    # Lower orders count how many different words precede an n-gram (Kneser-Ney's continuation counts),
    # not how often it occurs: "milk" follows many words, "francisco" only "san", and a lower order is
    # consulted exactly when the longer context was not seen. n-grams opening with <s> keep raw counts
    # because nothing can precede <s>.
    adjusted: list[dict[tuple[str, ...], int]] = [{} for _ in range(order + 1)]
    adjusted[order] = dict(raw[order])
    for n in range(order - 1, 0, -1):
        left = Counter(g[1:] for g in raw[n + 1])
        adjusted[n] = {g: (c if g[0] == BOS else left[g]) for g, c in raw[n].items()}
    adjusted[1][(BOS,)] = 0  # <s> is never predicted

    discounts = {n: _discount({g: c for g, c in adjusted[n].items() if c > 0}) for n in range(1, order + 1)}
    vocab = [g[0] for g in raw[1] if g[0] != BOS]

    # Per context: total adjusted count and number of distinct followers, which give the interpolation weight.
    totals: list[dict[tuple[str, ...], int]] = [defaultdict(int) for _ in range(order + 1)]
    followers: list[dict[tuple[str, ...], int]] = [defaultdict(int) for _ in range(order + 1)]
    for n in range(1, order + 1):
        for g, c in adjusted[n].items():
            if c > 0:
                totals[n][g[:-1]] += c
                followers[n][g[:-1]] += 1

    def gamma(n: int, h: tuple[str, ...]) -> float:
        return discounts[n] * followers[n][h] / totals[n][h]

    prob: list[dict[tuple[str, ...], float]] = [{} for _ in range(order + 1)]
    uniform = 1.0 / len(vocab)
    for n in range(1, order + 1):
        d = discounts[n]
        for g, c in adjusted[n].items():
            if c <= 0:
                continue
            h = g[:-1]
            lower = uniform if n == 1 else prob[n - 1][g[1:]]
            prob[n][g] = max(c - d, 0.0) / totals[n][h] + gamma(n, h) * lower

    def lg(p: float) -> str:
        return f"{math.log10(p):.6f}"

    lines = ["\\data\\"]
    counts = {n: (len(prob[n]) + (1 if n == 1 else 0)) for n in range(1, order + 1)}
    lines += [f"ngram {n}={counts[n]}" for n in range(1, order + 1)]
    for n in range(1, order + 1):
        lines += ["", f"\\{n}-grams:"]
        grams = sorted(prob[n]) if n > 1 else [(BOS,)] + sorted(prob[1])
        for g in grams:
            p = "-99.000000" if g == (BOS,) else lg(prob[n][g])
            line = f"{p}\t{' '.join(g)}"
            if n < order and g in totals[n + 1]:
                line += f"\t{lg(gamma(n + 1, g))}"
            lines.append(line)
    lines += ["", "\\end\\", ""]
    return "\n".join(lines), counts, discounts


def prune_dictionary(source: str | Path, words: set[str], out_path: str | Path) -> Path:
    """Copy the entries of ``words`` (alternate pronunciations included) from a pocketsphinx dictionary."""
    out_path = Path(out_path)
    with open(source, encoding="utf-8", errors="replace") as src, open(out_path, "w", encoding="utf-8") as dst:
        for line in src:
            head = line.split(maxsplit=1)[0] if line.strip() else ""
            if head and head.split("(", 1)[0] in words:
                dst.write(line)
    return out_path


def build_domain_lm(out_path: str | Path, sentences: Iterable[str], *, known: Callable[[str], bool] | set[str]
                    | None = None, order: int = 3, dictionary: str | Path | None = None) -> DomainLM:
    """Tokenize ``sentences``, drop words ``known`` rejects (default: those missing from ``dictionary``), and
    write an ARPA model of the rest to ``out_path``. With ``dictionary`` (a pocketsphinx .dict), a copy pruned
    to the model's words is written beside it (``.dict``). Logs how many words were dropped and which."""
    if known is None and dictionary is not None:
        known = cmu_words(dictionary)
    is_known = known.__contains__ if isinstance(known, set) else known
    dropped: Counter = Counter()
    kept: list[list[str]] = []
    for s in sentences:
        words = tokenize(s)
        if is_known is not None:
            for w in words:
                if not is_known(w):
                    dropped[w] += 1
            words = [w for w in words if is_known(w)]
        if words:
            kept.append(words)
    text, counts, discounts = build_arpa(kept, order)
    out_path = Path(out_path)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write the domain language model to {out_path}: {e.strerror or e}") from e
    vocabulary = counts[1] - 2  # minus <s> and </s>
    dict_path = None
    if dictionary is not None:
        vocab = {w for words in kept for w in words}
        try:
            dict_path = prune_dictionary(dictionary, vocab, out_path.with_suffix(".dict"))
        except OSError as e:
            raise ConfigError(f"cannot write the pruned dictionary next to {out_path}: {e.strerror or e}") from e
    if dropped:
        log.info("domain LM: dropped %d word tokens (%d distinct) missing from the pronunciation dictionary, "
                 "e.g. %s", sum(dropped.values()), len(dropped),
                 ", ".join(f"{w} ({c})" for w, c in dropped.most_common(8)))
    log.info("domain LM: %d sentences, %d words, n-grams %s -> %s", len(kept), vocabulary, counts, out_path)
    return DomainLM(out_path, order, len(kept), vocabulary, counts, discounts, dropped, dict_path)
