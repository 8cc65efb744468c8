"""Typing noise for training sentences: kiosk customers type on a touch screen, and the model trained on
clean text read "swtich acount" or "i wanna creat an acount" as something else entirely."""

from __future__ import annotations

import random
from collections.abc import Sequence

from models.data import Example

KEYBOARD_NEIGHBOURS = {
    "a": "qwsz", "b": "vghn", "c": "xdfv", "d": "serfcx", "e": "wsdr", "f": "drtgvc", "g": "ftyhbv",
    "h": "gyujnb", "i": "ujko", "j": "huikmn", "k": "jiolm", "l": "kop", "m": "njk", "n": "bhjm",
    "o": "iklp", "p": "ol", "q": "wa", "r": "edft", "s": "awedxz", "t": "rfgy", "u": "yhji", "v": "cfgb",
    "w": "qase", "x": "zsdc", "y": "tghu", "z": "asx",
}


def typo(text: str, rng: random.Random) -> str:
    """One edit at a random letter: swap with the next, drop, double, or hit a neighbouring key."""
    letters = [i for i, ch in enumerate(text) if ch.isalpha()]
    if len(letters) < 4:
        return text
    i = rng.choice(letters[1:-1])
    op = rng.randrange(4)
    if op == 0 and i + 1 < len(text):
        return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    if op == 1:
        return text[:i] + text[i + 1 :]
    if op == 2:
        return text[:i] + text[i] + text[i:]
    near = KEYBOARD_NEIGHBOURS.get(text[i].lower())
    return text[:i] + rng.choice(near) + text[i + 1 :] if near else text


def with_typos(examples: Sequence[Example], fraction: float, seed: int, skip_label: str | None = None,
               max_edits: int = 2) -> list[Example]:
    """Noisy copies of ``fraction`` of the rows (1..max_edits edits each), added to the originals."""
    rng = random.Random(seed)
    extra = []
    for e in examples:
        if e.label == skip_label or rng.random() >= fraction:
            continue
        t = e.text
        for _ in range(rng.randint(1, max_edits)):
            t = typo(t, rng)
        if t != e.text:
            extra.append(Example(t, e.label))
    return list(examples) + extra
