"""Text normalisation shared by product look-up and BM25: fold case and accents, split into word tokens,
make plurals singular. Deterministic, no data files, microseconds per call."""

from __future__ import annotations

import re
import unicodedata

_WORD = re.compile(r"\w+", re.UNICODE)
_SPECIAL = str.maketrans({"ß": "ss", "æ": "ae", "ø": "o", "œ": "oe", "ł": "l", "đ": "d", "þ": "th", "’": "'"})

# Words that carry no meaning for finding an entry (the kiosk's filler words included). Kept short on
# purpose: BM25's IDF already discounts common words; this list only removes the ones that *look* rare
# in a small knowledge base but say nothing ("please", "hi", "u").
STOPWORDS = frozenset(
    """a an the and or but if of to in on at by for from with without about into onto as is are was were be been
    being am do does did doing have has had i me my mine we us our you your u ur he she it its they them their
    this that these those there here what which who whom whose when where why how can could would should will
    shall may might must please pls plz hi hello hey thanks thank ok okay so just any some get got im i'm ive
    dont not no yes yeah yet also too very really want wanted need needed like tell know let m s t d ll re ve""".split()
)


def fold(text: str) -> str:
    """Lower-case, accents removed (``Gräddfil`` -> ``graddfil``), a few ligatures spelled out."""
    s = unicodedata.normalize("NFKD", str(text).casefold().translate(_SPECIAL))
    return "".join(c for c in s if not unicodedata.combining(c))


def singular(word: str) -> str:
    """A light English plural stripper (the same on documents and queries, so it only has to be consistent)."""
    w = word
    if len(w) <= 3 or not w.isalpha():
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("oes", "ches", "shes", "xes", "sses", "zzes")):
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is", "ys")):
        return w[:-1]
    return w


def words(text: str) -> list[str]:
    """Folded word tokens (``"Oatly-Oat-Milk"`` -> ``["oatly", "oat", "milk"]``)."""
    return _WORD.findall(fold(text).replace("_", " "))


def terms(text: str, *, drop_stopwords: bool = True) -> list[str]:
    """Tokens for retrieval: folded, singular, stop words removed."""
    out = []
    for w in words(text):
        if drop_stopwords and w in STOPWORDS:
            continue
        out.append(singular(w))
    return out


def key(text: str) -> str:
    """A match key for names: folded singular words joined by one space (``"Granny-Smiths"`` -> ``"granny smith"``)."""
    return " ".join(singular(w) for w in words(text.replace("'", "")))
