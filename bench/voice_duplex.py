"""Barge-in and self-trigger benchmark: a simulated kiosk session with the kiosk's own voice in its microphone.

A timeline of turns is laid out in audio time: the customer says something, the kiosk answers (Piper, the
kiosk's real voice), there is a pause, and so on for ``--minutes``. The kiosk's speech reaches the microphone
through a simulated room (40–60 ms delay, gain 0.45–0.7, three reflections, a noise floor); in a third of the
turns the customer talks over the answer 1–2.5 s into it. The microphone and the speaker's reference are fed,
32 ms at a time, to the same ``Listener`` the kiosk runs. When it reports a barge-in, the answer is cut 20 ms
later (one speaker chunk: what ``WavSpeaker.stop`` / ``PyAudioSpeaker.stop`` take at most).

Counted:
* self-triggers: a barge-in or an utterance (SpeechEnd) that overlaps no customer speech;
* barge-in latency: from the customer's speech onset to playback stopping (decision + one chunk);
* missed barge-ins: customer speech over the kiosk that never stopped it.

    python bench/voice_duplex.py [--minutes 10] [--seed 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from device.wavio import read_wav  # noqa: E402

RATE = 16000
CUSTOMER = ["where can I find the oat milk", "how much are the bananas", "is the soy yoghurt vegan",
            "I want to cancel my order", "what time do you close on sunday", "can I talk to someone",
            "do you have gluten free bread", "where is the coffee", "I would like a refund please",
            "yes please", "no thanks", "which aisle are the tomatoes in"]
KIOSK = ["Oat milk is in aisle four, on the left, next to the soy drinks. Would you like me to show it on the map?",
         "Bananas are two euros nineteen a kilo today. They are in aisle one with the other fruit.",
         "Yes, the Alpro soy yoghurt is vegan. It contains soy. Do you want to see similar products?",
         "I can help with that. What is your order number? It starts with the letter S.",
         "On Sundays we are open from ten in the morning until six in the evening.",
         "I have called a member of staff. Someone will be with you in a moment. Thank you for waiting."]
CHUNK_S = 0.020  # a speaker chunk: the longest a stop() waits


def _espeak(text: str, path: Path, voice: str) -> np.ndarray:
    subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(path), text], check=True, capture_output=True)
    return read_wav(path, RATE)


def _piper(texts: list[str]) -> list[np.ndarray]:
    import asyncio

    from runtime.voice.tts import PiperTTS

    async def go() -> list[np.ndarray]:
        tts = PiperTTS()
        await tts.start()
        try:
            out = []
            for t in texts:
                pcm, rate = await tts.synthesize_all(t)
                out.append(read_pcm(pcm, rate))
            return out
        finally:
            tts.close()

    return asyncio.run(go())


def read_pcm(pcm: bytes, rate: int) -> np.ndarray:
    from device.wavio import resample, to_int16

    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    return to_int16(resample(x, rate, RATE))


def make_audio(tmp: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    cust = []
    for i, t in enumerate(CUSTOMER):
        cust.append(_espeak(t, tmp / f"c{i}.wav", ["en-us", "en-gb-x-rp+f3", "en-us+m3"][i % 3]))
    return cust, _piper(KIOSK)


def onset(x: np.ndarray) -> int:
    """First sample of speech in a clean synthetic recording (energy over 5 ms windows)."""
    w = 80
    e = np.sqrt(np.mean(x[: len(x) // w * w].astype(np.float64).reshape(-1, w) ** 2, axis=1))
    idx = np.nonzero(e > 0.05 * e.max())[0]
    return int(idx[0] * w) if len(idx) else 0


def simulate(minutes: float, seed: int, customer: list[np.ndarray], kiosk: list[np.ndarray]) -> dict:
    from runtime.voice.listener import BargeIn, Listener
    from runtime.voice.vad import Endpointer, SileroVAD, SpeechEnd

    rng = np.random.default_rng(seed)
    total = int(minutes * 60 * RATE)
    mic_near = np.zeros(total + RATE * 10)  # what the customer says, as the microphone hears it
    cust_spans: list[tuple[float, float]] = []
    turns = []  # (reply_start_sample, reply_audio, barge_sample or None)
    t = int(0.5 * RATE)
    while t < total:
        c = customer[rng.integers(len(customer))] * rng.uniform(0.6, 1.0)
        mic_near[t : t + len(c)] += c
        on = t + onset(c.astype(np.int16))
        cust_spans.append((on / RATE, (t + len(c)) / RATE))
        t += len(c) + int(rng.uniform(0.6, 1.0) * RATE)  # endpointing + thinking
        reply = kiosk[rng.integers(len(kiosk))]
        barge = None
        if rng.random() < 1 / 3 and len(reply) > 3 * RATE:
            b = customer[rng.integers(len(customer))] * rng.uniform(0.6, 1.0)
            at = t + int(rng.uniform(1.0, 2.5) * RATE)
            mic_near[at : at + len(b)] += b
            barge = at + onset(b.astype(np.int16))
            cust_spans.append((barge / RATE, (at + len(b)) / RATE))
        turns.append((t, reply, barge))
        t += len(reply) + int(rng.uniform(1.0, 3.0) * RATE) + (int(3 * RATE) if barge else 0)

    # The room: delay, gain, reflections; fixed for the session (a kiosk doesn't move).
    delay = int(rng.uniform(0.04, 0.06) * RATE)
    h = np.zeros(delay + int(0.06 * RATE))
    h[delay] = rng.uniform(0.45, 0.7)
    for k, g in ((int(0.011 * RATE), 0.25), (int(0.023 * RATE), -0.12), (int(0.041 * RATE), 0.06)):
        h[delay + k] = h[delay] * g
    noise = rng.normal(0, 40, len(mic_near))

    listener = Listener(Endpointer(SileroVAD(), trailing_silence_ms=500))
    frame = 512
    ref = np.zeros(len(mic_near))
    turn_i = 0
    cut_at: dict[int, float] = {}
    played_until = -1
    events: list = []
    t0 = time.perf_counter()
    n_frames = 0
    pos = 0
    # Playback is decided frame by frame so a barge-in can cut the reference (and hence the echo) for real.
    while pos + frame <= total:
        while turn_i < len(turns) and turns[turn_i][0] <= pos:
            start, reply, _ = turns[turn_i]
            ref[start : start + len(reply)] = reply
            played_until = start + len(reply)
            turn_i += 1
        r = ref[pos : pos + frame]
        # The echo of this frame: the room's response over what was played up to now (cut playback included).
        seg = np.convolve(ref[max(0, pos - len(h) + 1) : pos + frame], h)[min(pos, len(h) - 1):][:frame]
        mic = np.clip(mic_near[pos : pos + frame] + seg + noise[pos : pos + frame], -32768, 32767)
        for ev in listener.push(mic.astype(np.int16), r.astype(np.int16), ts=pos / RATE):
            events.append(ev)
            if isinstance(ev, BargeIn) and pos < played_until:
                stop = int((ev.decided_ts + CHUNK_S) * RATE)
                ref[stop:played_until] = 0.0  # the speaker stops: nothing more is played, nothing more echoes
                cut_at[stop] = ev.decided_ts
                played_until = stop
        pos += frame
        n_frames += 1
    wall = time.perf_counter() - t0

    def overlaps(a: float, b: float) -> bool:
        return any(a < e + 0.05 and s < b for s, e in cust_spans)

    barge_ins = [e for e in events if isinstance(e, BargeIn)]
    utts = [e for e in events if isinstance(e, SpeechEnd)]
    self_barge = [e for e in barge_ins if not overlaps(e.ts - 0.3, e.decided_ts)]
    self_utts = [e for e in utts if not overlaps(e.start_ts, e.ts)]
    lat, missed = [], 0
    for _start, _reply, barge in turns:
        if barge is None or barge >= total:
            continue
        b_s = barge / RATE
        hit = [e for e in barge_ins if b_s - 0.1 <= e.ts <= b_s + 1.5]
        if hit:
            lat.append((hit[0].decided_ts + CHUNK_S - b_s) * 1000)
        else:
            missed += 1
    n_barge_turns = sum(1 for _, _, b in turns if b is not None and b < total)
    return {
        "minutes": round(total / RATE / 60, 2),
        "turns": len(turns),
        "kiosk_speech_s": round(float(np.count_nonzero(ref[:total])) / RATE, 1),
        "customer_utterances": len(cust_spans),
        "barge_in_turns": n_barge_turns,
        "barge_ins_detected": len(barge_ins) - len(self_barge),
        "missed_barge_ins": missed,
        "barge_in_ms_p50": round(float(np.median(lat)), 1) if lat else None,
        "barge_in_ms_p90": round(float(np.percentile(lat, 90)), 1) if lat else None,
        "barge_in_ms_max": round(float(np.max(lat)), 1) if lat else None,
        "self_triggers": len(self_barge) + len(self_utts),
        "self_barge_ins": len(self_barge),
        "self_utterances": len(self_utts),
        "suppressed_echo_utterances": listener.suppressed,
        "utterances_heard": len(utts),
        "erle_db": round(listener.erle_db(), 1),
        "aec_resets": listener.aec.resets,
        "ms_per_frame": round(wall / max(n_frames, 1) * 1000, 3),
        "room": {"delay_ms": round(delay / RATE * 1000, 1), "gain": round(float(h[delay]), 2)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        customer, kiosk = make_audio(Path(tmp))
    res = simulate(args.minutes, args.seed, [c.astype(np.float64) for c in customer],
                   [k.astype(np.float64) for k in kiosk])
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:28s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
