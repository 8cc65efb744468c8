"""Voice latency: end of speech → transcript → first reply audio, and Piper's speed, on this machine.

Spoken questions from the *dev* part of the spoken set (``bench/voice_set.py``; clean, the two tuning voices)
go through the same path as ``storeclerk voice-test``: the endpointer in audio time, then Whisper, the kiosk's
turn and Piper's first audio on the wall clock, with the models loaded once (a warm kiosk). Each setting is run
on the same files: the default (decode at the first 200 ms pause while the endpointer waits for 500 ms) and
the plain one (decode after the end of speech). Then Piper alone: real-time factor and first audio over the
kiosk's typical replies.

    python bench/voice_latency.py [--n 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

REPLIES = ["Oat milk (Oatly) is in aisle 4.", "Banana costs €2.19 per kg.",
           "We're open now until 22:00. Today (Monday) we're open 07:00 to 22:00.",
           "I've asked a member of staff to come over. They'll be with you shortly.",
           "Sure. What's your order number? It's on your receipt or in the confirmation email.",
           "Yes, the Alpro soy yoghurt is vegan. It contains soy. Do you want to see similar products?"]


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 1)


def tts_speed() -> dict:
    from runtime.voice.tts import PiperTTS

    async def go() -> dict:
        tts = PiperTTS(cache_size=0)
        await tts.start()
        firsts, rtfs = [], []
        try:
            for _ in range(2):
                for text in REPLIES:
                    t0 = time.perf_counter()
                    first, samples, out_rate = None, 0, 22050
                    async for pcm, r in tts.synthesize(text):
                        first = first or time.perf_counter()
                        samples += len(pcm) // 2
                        out_rate = r
                    total = time.perf_counter() - t0
                    firsts.append((first - t0) * 1000)
                    rtfs.append(total / (samples / out_rate))
        finally:
            tts.close()
        return {"first_audio_ms_p50": pct(firsts, 50), "first_audio_ms_p90": pct(firsts, 90),
                "rtf_p50": round(float(np.median(rtfs)), 3), "n": len(firsts)}

    return asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", type=Path, default=REPO / "build" / "voice_set")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from tqdm import tqdm

    from runtime.voice.pipeline import voice_turns

    man = args.set / "manifest.csv"
    if not man.exists():
        raise SystemExit(f"{man} not found: make the spoken set first with python bench/voice_set.py")
    with open(man, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "dev" and r["condition"] == "clean"]
    rows = rows[: args.n]
    wavs = [args.set / r["path"] for r in rows]
    out: dict = {"n": len(wavs), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    voice_turns(wavs[:3])  # warm-up (page cache, first Whisper and Piper calls), not timed
    for name, early in (("early decode at 200 ms (default)", -1), ("decode after the end of speech", None)):
        with tqdm(total=len(wavs), desc=name, unit="utt") as bar:
            res = voice_turns(wavs, early_decode_ms=early, on_result=lambda _r, b=bar: b.update())
        out[name] = {k: {"p50": pct([r[k] for r in res], 50), "p90": pct([r[k] for r in res], 90)}
                     for k in ("end_of_speech", "asr_ms", "asr_final", "understanding", "tts_first_ms", "first_audio")}
    out["piper"] = tts_speed()
    print(f"\n{'ms from the end of speech (p50 / p90)':40s} {'endpoint':>12s} {'decode':>12s} {'transcript':>12s} "
          f"{'first audio':>12s}")
    for name in ("early decode at 200 ms (default)", "decode after the end of speech"):
        g = out[name]
        print(f"{name:40s} " + " ".join(f"{g[k]['p50']:5.0f} /{g[k]['p90']:5.0f}"
                                          for k in ("end_of_speech", "asr_ms", "asr_final", "first_audio")))
    p = out["piper"]
    print(f"Piper: first audio p50 {p['first_audio_ms_p50']} ms (p90 {p['first_audio_ms_p90']}), "
          f"real-time factor p50 {p['rtf_p50']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
