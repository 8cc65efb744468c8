"""Evaluate speech recognition and spoken understanding on the spoken set made by ``bench/voice_set.py``.

Each WAV goes through the kiosk's own front end (Silero VAD endpointer → the utterance it cuts out) and the
recogniser; the transcript is scored against the sentence (word error rate, corpus level, after a light
normalisation applied to both sides) and run through the intent model next to the sentence itself as text.

    python bench/voice_eval.py [--set build/voice_set] [--split dev|test] [--engine whisper] [--prompt store|none]

``--split test`` is the measurement; every setting was chosen on ``dev``. Writes ``--out`` (JSON) and prints a
table per voice and condition.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

_NUM_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_PUNCT = re.compile(r"[^\w\s']")
_SPELLING = {"ok": "okay", "alright": "all right", "yeah": "yes", "gonna": "going to", "wanna": "want to",
             "i'm": "i am", "it's": "it is", "what's": "what is", "don't": "do not", "can't": "cannot",
             "i'd": "i would", "you're": "you are", "that's": "that is", "where's": "where is", "didn't": "did not",
             "doesn't": "does not", "isn't": "is not", "i've": "i have", "let's": "let us", "won't": "will not"}


def normalize(text: str) -> list[str]:
    """Lower case, digits kept as written, punctuation dropped, common contractions and spellings unified
    (both sides get the same treatment, so this never flatters one engine over another)."""
    t = text.lower().replace("’", "'").replace("-", " ").replace("%", " percent")
    t = _NUM_COMMA.sub("", t)
    t = _PUNCT.sub(" ", t)
    words = []
    for w in t.split():
        w = w.strip("'")
        if w:
            words += _SPELLING.get(w, w).split()
    return words


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def load_manifest(root: Path, split: str) -> list[dict]:
    path = root / "manifest.csv"
    if not path.exists():
        raise SystemExit(f"{path} not found: make the spoken set first with python bench/voice_set.py")
    with open(path, newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if r["split"] == split]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", type=Path, default=REPO / "build" / "voice_set")
    ap.add_argument("--split", choices=("dev", "test"), default="dev")
    ap.add_argument("--engine", default="whisper")
    ap.add_argument("--prompt", choices=("store", "none"), default="store")
    ap.add_argument("--trailing-ms", type=int, default=None, help="endpointer trailing silence (default: config)")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from tqdm import tqdm

    from device.wavio import read_wav
    from runtime.engine import Engine
    from runtime.intents import IntentClassifier
    from runtime.kb.loader import KnowledgeBase
    from runtime.paths import data_dir, default_bundle_dir
    from runtime.voice.asr import make_whisper, store_vocabulary
    from runtime.voice.pipeline import first_utterance
    from runtime.voice.vad import Endpointer, SileroVAD

    rows = load_manifest(args.set, args.split)
    if args.limit:
        rows = rows[: args.limit]
    kb = KnowledgeBase.load(data_dir() / "kb")
    if args.engine == "whisper":
        asr = make_whisper(store_vocabulary(kb) if args.prompt == "store" else None, beam_size=args.beam)
    else:
        from runtime.voice.engines import make_recognizer

        asr = make_recognizer(args.engine, phrases=store_vocabulary(kb))
    classifier = IntentClassifier(Engine(default_bundle_dir()))
    vad = SileroVAD()
    results = []
    for r in tqdm(rows, desc=f"{args.engine} {args.split}", unit="utt"):
        pcm = read_wav(args.set / r["path"], 16000)
        vad.reset()
        ep = Endpointer(vad) if args.trailing_ms is None else Endpointer(vad, trailing_silence_ms=args.trailing_ms)
        found = first_utterance(pcm, ep)
        audio = found[0].audio if found else np.zeros(0, np.int16)
        t0 = time.perf_counter()
        tr = asr.transcribe(audio, 16000) if len(audio) else None
        ms = (time.perf_counter() - t0) * 1000
        hyp = tr.text if tr else ""
        ref_w, hyp_w = normalize(r["text"]), normalize(hyp)
        results.append({**r, "hyp": hyp, "errors": edit_distance(ref_w, hyp_w), "ref_words": len(ref_w),
                        "decode_ms": ms, "speech_s": len(audio) / 16000})
    labelled = [x for x in results if x["label"] != "kb"]
    spoken = classifier.predict([x["hyp"] for x in labelled])
    texts = classifier.predict([x["text"] for x in labelled])
    for x, s, t in zip(labelled, spoken, texts, strict=True):
        x["intent_spoken"], x["intent_text"] = s.intent, t.intent

    def summary(sel: list[dict]) -> dict:
        lab = [x for x in sel if "intent_spoken" in x]
        words = sum(x["ref_words"] for x in sel)
        return {"n": len(sel), "wer": round(sum(x["errors"] for x in sel) / max(words, 1), 4),
                "intent_spoken": round(float(np.mean([x["intent_spoken"] == x["label"] for x in lab])), 4) if lab else None,
                "intent_text": round(float(np.mean([x["intent_text"] == x["label"] for x in lab])), 4) if lab else None,
                "n_intent": len(lab),
                "decode_ms_p50": round(float(np.median([x["decode_ms"] for x in sel])), 1),
                "rtf": round(sum(x["decode_ms"] for x in sel) / 1000 / max(sum(x["speech_s"] for x in sel), 1e-9), 3)}

    groups: dict[str, dict] = {}
    for cond in ("clean", "noisy"):
        c = [x for x in results if x["condition"] == cond]
        groups[f"{cond}"] = summary(c)
        groups[f"{cond} · tuning voices"] = summary([x for x in c if x["held_out"] == "0"])
        groups[f"{cond} · held-out voices"] = summary([x for x in c if x["held_out"] == "1"])
        for v in sorted({x["voice"] for x in c}):
            groups[f"{cond} · {v}"] = summary([x for x in c if x["voice"] == v])
    out = {"split": args.split, "engine": args.engine, "prompt": args.prompt, "model": getattr(asr, "name", ""),
           "groups": groups,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}}
    print(f"{'group':34s} {'n':>4s} {'WER':>7s} {'intent (spoken)':>16s} {'intent (text)':>14s} {'decode p50':>11s}")
    for k, g in groups.items():
        sp = f"{g['intent_spoken']:.3f}" if g["intent_spoken"] is not None else "-"
        tx = f"{g['intent_text']:.3f}" if g["intent_text"] is not None else "-"
        print(f"{k:34s} {g['n']:4d} {g['wer']:7.3f} {sp:>16s} {tx:>14s} {g['decode_ms_p50']:9.0f}ms")
    path = args.out or (args.set / f"eval_{args.split}_{args.engine}_{args.prompt}.json")
    path.write_text(json.dumps({**out, "items": results}, indent=1))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
