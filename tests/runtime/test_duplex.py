"""Full duplex: the echo canceller, the listener's barge-in and self-trigger decisions, decoding at a pause,
and the voice stage cutting its own reply when the customer talks over it (real-time WAV devices)."""

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.voice.echo import EchoCanceller
from runtime.voice.listener import BargeIn, Listener
from runtime.voice.vad import Endpointer, SileroVAD, SpeechEnd, SpeechPause, SpeechStart

REPO = Path(__file__).resolve().parents[2]
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def _speech(text: str, tmp_path: Path, voice: str = "en-us") -> np.ndarray:
    from device.wavio import read_wav

    p = tmp_path / f"{abs(hash((text, voice)))}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(p), text], check=True, capture_output=True)
    return read_wav(p, 16000)


def _room(ref: np.ndarray, delay_ms: float = 50, gain: float = 0.6) -> np.ndarray:
    d = int(delay_ms * 16)
    h = np.zeros(d + 400)
    h[d], h[d + 176], h[d + 368] = gain, 0.2 * gain, -0.1 * gain
    return np.convolve(ref.astype(np.float64), h)[: len(ref)]


@needs_espeak
def test_echo_canceller_removes_the_kiosk_voice(tmp_path):
    ref = np.concatenate([_speech("Oat milk is in aisle four, next to the soy drinks. Anything else today?", tmp_path)] * 2)
    mic = _room(ref) + np.random.default_rng(0).normal(0, 30, len(ref))
    aec = EchoCanceller()
    out = np.concatenate([aec.process(mic[i:i + 512], ref[i:i + 512]) for i in range(0, len(ref) - 511, 512)])
    half = len(out) // 2  # the second pass: converged
    erle = 10 * np.log10(np.mean(mic[half:len(out)] ** 2) / np.mean(out[half:].astype(np.float64) ** 2))
    assert erle > 20, erle
    # With no reference the canceller is transparent: the customer reaches the VAD untouched.
    quiet = EchoCanceller()
    x = (np.random.default_rng(1).normal(0, 3000, 2048)).astype(np.int16)
    assert np.array_equal(quiet.process(x, np.zeros_like(x)), x)


def test_echo_canceller_rejects_mismatched_input():
    with pytest.raises(ValueError, match="differ in length"):
        EchoCanceller().process(np.zeros(512), np.zeros(256))
    with pytest.raises(ValueError):
        EchoCanceller(mu=0)


@needs_espeak
def test_listener_barges_in_on_the_customer_not_on_itself(tmp_path):
    reply = _speech("Bananas are two euros nineteen a kilo today. They are in aisle one with the other fruit, "
                    "next to the apples and the pears.", tmp_path, "en-gb-x-rp")
    customer = _speech("wait, how much are the apples", tmp_path, "en-us+f3")
    # Two replies: the first teaches the canceller the room (until then the listener is half duplex).
    second = 8000 + len(reply) + 16000
    n = second + len(reply) + 16000
    ref = np.zeros(n)
    ref[8000 : 8000 + len(reply)] = reply
    ref[second : second + len(reply)] = reply
    near = np.zeros(n)
    at = second + int(2.0 * 16000)  # 2 s into the second reply
    near[at : at + len(customer)] = customer * 0.8
    echo = _room(ref)
    listener = Listener(Endpointer(SileroVAD()))
    events, self_only = [], []
    # The same session twice: once without the customer (no event may come), once with.
    for with_customer, sink in ((False, self_only), (True, events)):
        listener = Listener(Endpointer(SileroVAD()))
        mic = echo + (near if with_customer else 0) + np.random.default_rng(2).normal(0, 30, n)
        for i in range(0, n - 511, 512):
            sink += listener.push(mic[i:i + 512].astype(np.int16), ref[i:i + 512].astype(np.int16), ts=i / 16000)
    assert [e for e in self_only if isinstance(e, (BargeIn, SpeechStart, SpeechEnd))] == []
    barge = [e for e in events if isinstance(e, BargeIn)]
    assert len(barge) == 1
    onset = at / 16000
    assert onset - 0.05 <= barge[0].ts and barge[0].decided_ts - onset < 0.2  # decided within 200 ms
    assert any(isinstance(e, SpeechEnd) for e in events)  # and the customer's words become an utterance
    assert listener.converged and listener.erle_db() > 12


def test_listener_is_half_duplex_until_the_canceller_converges():
    """Before the filter has learned the room, speech during playback is never a barge-in: it is dropped."""
    listener = Listener(Endpointer(SileroVAD()))
    assert not listener.converged
    rng = np.random.default_rng(3)
    ref = (rng.normal(0, 4000, 512 * 10)).astype(np.int16)
    events = listener.push(ref, ref, ts=0.0)  # mic == ref: all echo, nothing learned yet
    assert not any(isinstance(e, BargeIn) for e in events)
    with pytest.raises(ValueError, match="differ in length"):
        listener.push(np.zeros(512, np.int16), np.zeros(100, np.int16))


def test_pause_event_carries_the_final_audio_and_is_withdrawn_when_speech_resumes():
    ep = Endpointer(None, trailing_silence_ms=480, early_ms=192)
    frames = [np.full(512, i, np.int16) for i in range(100)]
    probs = [0.9] * 12 + [0.0] * 7 + [0.9] * 12 + [0.0] * 16
    evs = []
    for p, f in zip(probs, frames, strict=False):
        evs += ep.feed_probability(p, f)
    pauses = [e for e in evs if isinstance(e, SpeechPause)]
    ends = [e for e in evs if isinstance(e, SpeechEnd)]
    assert len(pauses) == 2 and len(ends) == 1  # the first pause was followed by more speech
    assert pauses[1].ts == ends[0].ts and np.array_equal(pauses[1].audio, ends[0].audio)
    assert pauses[0].ts < ends[0].ts and len(pauses[0].audio) < len(ends[0].audio)
    # An early pause never shorter than the post-roll, and none at all when it is not before the end.
    assert Endpointer(None, early_ms=10).early_s >= 0.096
    assert Endpointer(None, trailing_silence_ms=300, early_ms=400).early_s is None


@needs_espeak
def test_duplex_benchmark_one_minute_has_no_self_triggers():
    p = subprocess.run([sys.executable, "bench/voice_duplex.py", "--minutes", "1.5", "--seed", "7", "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    import json

    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["self_triggers"] == 0, res
    assert res["turns"] >= 5 and res["kiosk_speech_s"] > 20
    if res["barge_in_turns"]:
        assert res["barge_ins_detected"] >= 1 and res["barge_in_ms_p50"] < 250


@needs_espeak
def test_stage_stops_its_reply_when_the_customer_talks_over_it(tmp_path):
    """Real-time WAV devices, the kiosk's speech mixed into its microphone: the customer asks, the kiosk
    answers at length, the customer interrupts; playback is cut and the interruption is the next turn."""
    from device.audio import WavMicrophone, WavSpeaker
    from runtime.app import build
    from runtime.config import load_config
    from runtime.voice.asr import make_whisper
    from runtime.voice.stage import VoiceStage
    from runtime.voice.tts import PiperTTS

    q1 = _speech("what time do you open on sunday", tmp_path)
    q2 = _speech("can I talk to a person please", tmp_path, "en-us+f3")
    parts = build(load_config(None, {"state_dir": str(tmp_path / "state"), "kb.watch": False}))

    speaker = WavSpeaker(tmp_path / "reply.wav", realtime=True)
    track = np.concatenate([np.zeros(8000, np.int16), q1, np.zeros(16000 * 30, np.int16)])
    mic = WavMicrophone(track, echo_from=speaker, echo_gain=0.6, realtime=True)
    inserted = {}

    async def go():
        tts = PiperTTS()
        await tts.start()
        await parts.kiosk.start()
        stage = VoiceStage(parts.kiosk, mic, speaker, make_whisper(["Sunday"]), tts, Listener(Endpointer(SileroVAD())))
        # A long answer, so there is time to interrupt it: the kiosk's reply to q1 is replaced by a long text.
        real_turn = parts.kiosk.turn

        async def long_turn(sid, text, **kw):
            r = await real_turn(sid, text, **kw)
            if stage.turns == 0:
                import dataclasses

                r = dataclasses.replace(r, text="On Sundays we open at ten in the morning and close at six in the "
                                        "evening. The bakery opens a little earlier, at nine. Bottle return and "
                                        "parcel pickup keep the same hours as the shop. Is there anything else?")
            return r

        parts.kiosk.turn = long_turn

        async def interrupt():
            while not speaker.is_playing:  # noqa: ASYNC110 (the speaker has no event for "started")
                await asyncio.sleep(0.02)
            await asyncio.sleep(3.0)
            pos = mic.chunks_read * mic.chunk
            mic.samples[pos + 1600 : pos + 1600 + len(q2)] += q2  # the customer talks over the kiosk
            inserted["at"] = pos

        task = asyncio.create_task(interrupt())
        try:
            await asyncio.wait_for(stage.run(), 150)
        finally:
            task.cancel()
            await parts.kiosk.stop()
            tts.close()
        return stage

    mic.samples = mic.samples.copy()
    stage = asyncio.run(go())
    assert "at" in inserted
    # Under load the interruption may be heard as two utterances (a pause inside it), and the kiosk may be
    # interrupted again by its second half: at least one barge-in, and the first, long answer was cut.
    assert stage.barge_ins >= 1 and speaker.cuts >= 1, (stage.barge_in_ms, stage.timings)
    assert stage.barge_in_ms[0] < 400  # wall clock, on a shared 2-core machine
    assert len(stage.timings) >= 2 and stage.timings[0]["barged_in"]
    later = stage.timings[1:]
    assert any(t["intent"] == "contact_human_agent" or "person" in t["transcript"].lower() for t in later), later
    assert "sunday" not in " ".join(t["transcript"].lower() for t in later)  # none of the kiosk's words leaked in
    played_s = len(speaker.recorded()) / speaker.rate
    # The long answer (~14 s) was cut about 3 s in; later replies (one, or two when load splits the interruption
    # into two utterances) played in full: at most ~12 characters a second of Piper's speech each.
    later_s = sum(len(t["reply"]) for t in later) / 12
    assert played_s < 3.0 + 1.0 + later_s, (played_s, later_s)


@needs_espeak
def test_flush_never_turns_the_kiosks_own_voice_into_a_turn(tmp_path):
    """The microphone closing (or push-to-talk released) in the middle of speech heard while the kiosk talked,
    before the canceller converged: the utterance is dropped as the kiosk's own, not handed on."""
    speech = _speech("we are open now until ten in the evening", tmp_path)
    ref = np.random.default_rng(4).normal(0, 3000, len(speech)).astype(np.int16)  # playing, uncancellable
    listener = Listener(Endpointer(SileroVAD()))
    events = listener.push(speech[: len(speech) // 2 // 512 * 512], ref[: len(speech) // 2 // 512 * 512], ts=0.0)
    assert listener.endpointer.in_speech and not any(isinstance(e, (SpeechStart, BargeIn)) for e in events)
    assert listener.flush() is None and listener.suppressed == 1
    # The customer's own utterance (nothing playing) does come out of a flush.
    fresh = Listener(Endpointer(SileroVAD()))
    fresh.push(speech[: len(speech) // 2 // 512 * 512], None, ts=0.0)
    end = fresh.flush()
    assert isinstance(end, SpeechEnd) and end.reason == "released"
