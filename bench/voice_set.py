"""Make the spoken test set for the voice evaluation (issue 5), reproducibly, from held-out text.

Sentences come from the intent evaluation files the models never trained on (``data/eval/kiosk_basics_test.csv``,
``data/eval/bitext_paraphrases.csv``) and from the KB questions of the dev split, stratified by label and split
by a hash of the text into

* ``dev``  (80 sentences): the only part looked at while tuning the recogniser (prompt, decoder, endpointer);
* ``test`` (240 sentences): measured, never tuned on.

Voices. Two synthesisers are installed (Piper's en_US-joe-medium and espeak-ng); each sentence is spoken by a
*tuning* voice (``piper-joe`` or ``espeak-us``, alternating) and by a *held-out* voice that no setting was chosen
on (``espeak-gb-f``: espeak-ng's British RP voice with a female variant, slower; ``piper-joe-fast``: Piper at
0.85 length scale with more phoneme-duration noise). Every file is made twice: clean, and with store-like
noise (babble of six other synthetic talkers + pink noise) at 10 dB SNR over the speech.

Piper and espeak-ng are GPL, so both run as programs, never imported (DESIGN §5). Piper's sampling noise is not
seeded by its CLI, so a rerun gives audibly the same but not bit-identical files; the noise mix is seeded.

    python bench/voice_set.py [--out build/voice_set] [--jobs 2]

Writes ``OUT/manifest.csv`` (id, split, voice, held_out, condition, label, text, path) and the WAVs (16 kHz mono).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from device.wavio import read_wav, write_wav  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))

RATE = 16000
N_DEV, N_TEST = 80, 240
SNR_DB = 10.0
TUNING_VOICES = ("piper-joe", "espeak-us")
HELD_OUT_VOICES = ("espeak-gb-f", "piper-joe-fast")


def _voice_path() -> str:
    from runtime.voice.tts import default_voice_path

    return str(default_voice_path())


def synthesize(voice: str, text: str, out: Path) -> None:
    """One sentence to a 16 kHz mono WAV with 0.3 s of silence before and 0.8 s after."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        if voice.startswith("piper"):
            piper = Path(sys.executable).with_name("piper")
            cmd = [str(piper) if piper.exists() else "piper", "-m", _voice_path(), "-f", str(raw)]
            if voice == "piper-joe-fast":
                cmd += ["--length-scale", "0.85", "--noise-w-scale", "1.0"]
            subprocess.run(cmd, input=text, text=True, check=True, capture_output=True, timeout=120)
        else:
            if not shutil.which("espeak-ng"):
                raise SystemExit("espeak-ng is not installed: sudo apt-get install espeak-ng")
            args = {"espeak-us": ["-v", "en-us", "-s", "165"], "espeak-gb-f": ["-v", "en-gb-x-rp+f3", "-s", "145"]}[voice]
            subprocess.run(["espeak-ng", *args, "-w", str(raw), text], check=True, capture_output=True, timeout=60)
        x = read_wav(raw, RATE)
    pad = lambda s: np.zeros(int(s * RATE), np.int16)  # noqa: E731
    write_wav(out, np.concatenate([pad(0.3), x, pad(0.8)]), RATE)


def _bucket(text: str) -> float:
    return int(hashlib.sha1(text.strip().lower().encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _speakable():
    """A sentence a customer would say aloud: every word is in pocketsphinx's CMU dictionary (or a number,
    or a word of the store's catalog). The text evaluation files deliberately carry typos and text-isms
    ("reveiw", "thx", "u", "asap"); read aloud they are not speech, and scoring a recogniser against a typo
    measures the typo."""
    import pocketsphinx
    from voice_eval import normalize

    from runtime.kb.loader import KnowledgeBase
    from runtime.paths import data_dir
    from runtime.voice.asr import store_vocabulary

    words = set()
    with open(Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict", encoding="utf-8") as f:
        for line in f:
            w = line.split(" ", 1)[0].split("(", 1)[0]
            words.add(w.lower())
    for phrase in store_vocabulary(KnowledgeBase.load(data_dir() / "kb")):
        words.update(normalize(phrase))
    # text-isms the dictionary happens to list as words (abbreviations, letters) but nobody says
    words -= {"thx", "u", "ur", "pls", "plz", "asap", "im", "dont", "cant", "wont", "r", "ya", "tho"}
    return lambda text: all(w.isdigit() or w in words for w in normalize(text))


def choose_sentences() -> tuple[list[dict], list[dict]]:
    """Disjoint dev/test sentences, stratified by label (round-robin over labels in hash order)."""
    rows: list[dict] = []
    for name in ("kiosk_basics_test.csv", "bitext_paraphrases.csv"):
        with open(REPO / "data/eval" / name, newline="", encoding="utf-8") as f:
            rows += [{"text": r["text"].strip(), "label": r["label"].strip(), "source": name} for r in csv.DictReader(f)]
    with open(REPO / "data/eval/kb_questions_dev.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            # KB questions carry an entry, not an intent: they count for word error rate (product names are
            # where biasing matters) and are left out of intent accuracy (label "kb").
            rows.append({"text": r["question"].strip(), "label": "kb", "source": "kb_questions_dev.csv"})
    speakable = _speakable()
    seen, unique = set(), []
    for r in rows:
        key = r["text"].lower()
        if key and key not in seen and len(r["text"]) <= 160 and speakable(r["text"]):
            seen.add(key)
            unique.append(r)
    dev_pool = [r for r in unique if _bucket(r["text"]) < 0.25]
    test_pool = [r for r in unique if _bucket(r["text"]) >= 0.25]

    def stratified(pool: list[dict], n: int) -> list[dict]:
        by: dict[str, list[dict]] = {}
        for r in sorted(pool, key=lambda r: _bucket(r["text"] + "#order")):
            by.setdefault(r["label"], []).append(r)
        out, labels = [], sorted(by)
        while len(out) < n and any(by.values()):
            for lab in labels:
                if by[lab] and len(out) < n:
                    out.append(by[lab].pop(0))
        return out

    return stratified(dev_pool, N_DEV), stratified(test_pool, N_TEST)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return x / (np.std(x) + 1e-9)


def add_noise(speech: np.ndarray, babble_pool: list[np.ndarray], rng: np.random.Generator, snr_db: float) -> np.ndarray:
    """Speech + (babble of six talkers + pink noise), scaled so the SNR over the speech's active part is snr_db."""
    x = speech.astype(np.float64)
    n = len(x)
    babble = np.zeros(n)
    for _ in range(6):
        b = babble_pool[rng.integers(len(babble_pool))].astype(np.float64)
        b = np.tile(b, int(np.ceil(n / max(len(b), 1))) + 1)
        start = rng.integers(0, max(1, len(b) - n))
        babble += b[start : start + n] * rng.uniform(0.5, 1.0)
    babble /= np.std(babble) + 1e-9
    noise = 0.7 * babble + 0.3 * pink_noise(n, rng)
    active = np.abs(x) > 0.02 * np.max(np.abs(x)) if np.any(x) else np.ones(n, bool)
    p_speech = np.mean(x[active] ** 2)
    noise *= np.sqrt(p_speech / (np.mean(noise**2) * 10 ** (snr_db / 10)))
    y = x + noise
    peak = np.max(np.abs(y))
    if peak > 32000:  # keep it unclipped: clipping is a separate bad-input case
        y *= 32000 / peak
    return np.round(y).astype(np.int16)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "build" / "voice_set")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args(argv)
    from tqdm import tqdm

    dev, test = choose_sentences()
    items = []
    for split, sents in (("dev", dev), ("test", test)):
        for i, r in enumerate(sents):
            voices = [TUNING_VOICES[i % 2]] + ([HELD_OUT_VOICES[i % 2]] if split == "test" else [TUNING_VOICES[(i + 1) % 2]])
            for v in voices:
                items.append({"split": split, "voice": v, "held_out": int(v in HELD_OUT_VOICES), **r,
                              "id": f"{split}-{i:03d}-{v}"})
    clean_dir, noisy_dir = args.out / "clean", args.out / "noisy"
    clean_dir.mkdir(parents=True, exist_ok=True)
    noisy_dir.mkdir(parents=True, exist_ok=True)

    def make(it: dict) -> None:
        p = clean_dir / f"{it['id']}.wav"
        if not p.exists():
            synthesize(it["voice"], it["text"], p)

    with ThreadPoolExecutor(args.jobs) as ex:
        list(tqdm(ex.map(make, items), total=len(items), desc="synthesize", unit="utt"))

    # Babble talkers: the dev sentences in the tuning voices, so no test sentence is heard inside its own noise.
    babble_pool = [read_wav(clean_dir / f"{it['id']}.wav", RATE) for it in items if it["split"] == "dev"]
    rng = np.random.default_rng(args.seed)
    rows = []
    for it in tqdm(items, desc="noise 10 dB", unit="utt"):
        clean = read_wav(clean_dir / f"{it['id']}.wav", RATE)
        noisy = add_noise(clean, babble_pool, rng, SNR_DB)
        write_wav(noisy_dir / f"{it['id']}.wav", noisy, RATE)
        for cond in ("clean", "noisy"):
            rows.append({"id": it["id"], "split": it["split"], "voice": it["voice"], "held_out": it["held_out"],
                         "condition": cond, "label": it["label"], "text": it["text"], "source": it["source"],
                         "path": f"{cond}/{it['id']}.wav"})
    with open(args.out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    n_test = sum(1 for r in rows if r["split"] == "test")
    print(f"{len(rows)} files ({n_test} test, {len(rows) - n_test} dev) in {args.out}; "
          f"{len(test)} test sentences, {len(dev)} dev sentences; voices {TUNING_VOICES + HELD_OUT_VOICES}")
    return 0


if __name__ == "__main__":
    random.seed(0)
    raise SystemExit(main())
