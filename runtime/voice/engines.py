"""Choosing a speech recognition engine, and the streaming interface for live captions.

Every engine is a ``runtime.voice.asr.Recognizer`` (``transcribe`` a finished utterance). Engines that decode
incrementally (Vosk, pocketsphinx) also have ``stream()``, whose ``accept`` returns the text so far, so the
screen can caption the customer while they speak; Whisper decodes whole utterances only.

| engine         | use it for                                                                  |
|----------------|-----------------------------------------------------------------------------|
| whisper        | English final transcripts (default; best accuracy, no streaming)            |
| pocketsphinx   | live captions, yes/no and number answers (grammars), fallback without Whisper |
| vosk           | other languages, or operators who provision a Vosk model (streams, phrase lists) |
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

import numpy as np

from runtime.errors import ConfigError
from runtime.voice.asr import Recognizer, Transcript

log = logging.getLogger("storeclerk.asr")

ENGINES = ("whisper", "vosk", "pocketsphinx")


@runtime_checkable
class RecognizerStream(Protocol):
    def accept(self, pcm16: np.ndarray) -> str: ...  # feed audio; returns the current partial text ("" if none)

    def finish(self) -> Transcript: ...  # final transcript of everything fed


@runtime_checkable
class StreamingRecognizer(Protocol):
    name: str

    def transcribe(self, pcm16: np.ndarray, rate: int = ...) -> Transcript: ...

    def stream(self) -> RecognizerStream: ...


def _check_choice(engine: str, grammar: str | None, phrases: list[str] | None) -> str:
    key = str(engine or "").strip().lower()
    if key not in ENGINES:
        raise ConfigError(f"unknown speech recognition engine {engine!r} (voice.asr.engine): choose one of "
                          f"{', '.join(ENGINES)}")
    if grammar is not None and key != "pocketsphinx":
        raise ConfigError(f"grammar {grammar[:40]!r} needs the pocketsphinx engine; {key} does not take grammars")
    if grammar is not None and phrases:
        raise ConfigError("pocketsphinx takes a grammar or a phrase list (domain language model), not both")
    return key


def make_recognizer(engine: str, *, vosk_model: str | None = None, phrases: list[str] | None = None,
                    grammar: str | None = None, prompt: str = "", threads: int = 2) -> Recognizer:
    """Build the recognizer ``engine`` names. ``phrases`` (product names, intent phrases) bias each engine
    its own way: Whisper's initial prompt, Vosk's phrase list, pocketsphinx's domain language model.
    ``grammar`` ("yesno", "numbers" or a JSGF string) is pocketsphinx-only."""
    key = _check_choice(engine, grammar, phrases)
    if key == "whisper":
        from runtime.voice import asr

        if not prompt and phrases:
            prompt = asr.store_prompt(phrases)
        try:
            return asr.WhisperRecognizer(prompt=prompt, threads=threads)
        except ConfigError:
            raise
        except Exception as e:  # missing faster-whisper, a CTranslate2 load failure, ...
            raise ConfigError(f"Whisper could not be loaded: {type(e).__name__}: {e}") from e
    if key == "vosk":
        if not vosk_model:
            raise ConfigError("the vosk engine needs a model directory (voice.asr.vosk_model); no English Vosk "
                              "model ships with the kiosk, see docs/asr-engines.md for provisioning one")
        from runtime.voice.vosk_asr import VoskRecognizer

        return VoskRecognizer(vosk_model, phrases)
    from runtime.voice.sphinx_asr import SphinxRecognizer

    if grammar is not None:
        return SphinxRecognizer(grammar=grammar)
    if phrases:
        return SphinxRecognizer.for_domain(phrases)
    return SphinxRecognizer()


def fallback_recognizer(engine: str = "whisper", **kwargs) -> Recognizer:
    """``make_recognizer(engine, ...)``, or pocketsphinx when that engine cannot be loaded (Whisper's package
    missing or broken, a Vosk model not provisioned yet), so the kiosk keeps listening. The reason is logged
    as a warning. A wrong setting (unknown engine name, a grammar for an engine without grammars) is still an
    error: a typo in the config should be fixed, not hidden."""
    key = _check_choice(engine, kwargs.get("grammar"), kwargs.get("phrases"))
    try:
        return make_recognizer(key, **kwargs)
    except ConfigError as e:
        if key == "pocketsphinx":
            raise
        log.warning("speech recognition: %s cannot be loaded (%s); falling back to pocketsphinx", key, e)
        reason = e
    try:
        return make_recognizer("pocketsphinx", phrases=kwargs.get("phrases"))
    except ConfigError as e:
        raise ConfigError(f"no speech recognizer could be loaded: {key}: {reason}; pocketsphinx: {e}") from e
