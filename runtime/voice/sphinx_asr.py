"""pocketsphinx (CMU Sphinx 5): streaming recognition with the US-English model that ships in the package.

Its generic language model is weak on kiosk speech (DESIGN §5: 63-92% WER on synthetic voices), but it
decodes incrementally at a fraction of real time, so it serves three jobs Whisper cannot:

- live captions while the customer is still speaking (``stream()`` returns partial text per chunk);
- short answers through a grammar: "yesno" and "numbers" (digit strings such as order numbers) are built in,
  any JSGF string works. A grammar can only produce its own phrases, which makes it far more accurate than a
  free language model for a question with a closed set of answers;
- a fallback recognizer when Whisper cannot be loaded, optionally with a domain language model built from
  the kiosk's own sentences (see ``runtime.voice.domain_lm``).

One decoder runs one utterance at a time; a recognizer refuses a second concurrent utterance rather than
mixing two customers' audio in one search.
"""

from __future__ import annotations

import logging
import re
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from runtime.errors import ConfigError, InputError
from runtime.voice.asr import RATE, Transcript, check_pcm16

log = logging.getLogger("storeclerk.asr")

YESNO_JSGF = """#JSGF V1.0;
grammar yesno;
<yes> = yes | yeah | yep | yup | sure | correct | right | okay | of course | yes please | that's right ;
<no> = no | nope | nah | no thanks | no thank you | not really | wrong ;
public <answer> = <yes> | <no> ;
"""

# "oh" is how most people say 0 inside a number ("three oh nine").
NUMBERS_JSGF = """#JSGF V1.0;
grammar numbers;
<digit> = zero | oh | one | two | three | four | five | six | seven | eight | nine ;
public <number> = <digit>+ ;
"""

GRAMMARS = {"yesno": YESNO_JSGF, "numbers": NUMBERS_JSGF}
YES_WORDS = frozenset("yes yeah yep yup sure correct right okay course that's".split())
_DIGIT_WORDS = {"zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9"}
# Segments that are not words: sentence marks, silence and pocketsphinx's filler/noise models.
_NOT_WORDS = ("<s>", "</s>", "<sil>")


def spoken_digits(text: str) -> str:
    """'three oh nine one' -> '3091': the digit string a "numbers" grammar transcript stands for."""
    return "".join(_DIGIT_WORDS[w] for w in text.split() if w in _DIGIT_WORDS)


def is_yes(text: str) -> bool | None:
    """True/False for a "yesno" grammar transcript, None when nothing was recognised."""
    words = text.lower().split()
    if not words:
        return None
    return not any(w in ("no", "nope", "nah", "not", "wrong") for w in words) and any(w in YES_WORDS for w in words)


def model_dir() -> Path:
    try:
        import pocketsphinx
    except ImportError:
        raise ConfigError("pocketsphinx is not installed: pip install pocketsphinx") from None
    d = Path(pocketsphinx.get_model_path()) / "en-us"
    if not (d / "en-us").is_dir() or not (d / "cmudict-en-us.dict").exists():
        raise ConfigError(f"pocketsphinx's US-English model is incomplete at {d}; reinstall pocketsphinx")
    return d


def _jsgf_words(text: str) -> set[str]:
    """The words (terminals) of a JSGF grammar's rule bodies, lower-cased."""
    words = set()
    for m in re.finditer(r"=(.*?);", text, flags=re.S):
        body = re.sub(r"<[^>]*>|\{[^}]*\}|/[^/]*/|\"[^\"]*\"", " ", m.group(1))
        words.update(w.lower() for w in re.findall(r"[^\s()\[\]|*+]+", body))
    return words


def _check_audio(pcm16: np.ndarray, rate: int) -> bytes:
    return check_pcm16(pcm16, rate, "pocketsphinx").tobytes()


class SphinxRecognizer:
    """pocketsphinx with one of: the generic model (default), a grammar (``grammar="yesno"``, ``"numbers"`` or
    a JSGF string) or an n-gram model file (``lm=path``, e.g. from ``build_domain_lm``)."""

    def __init__(self, *, grammar: str | None = None, lm: str | Path | None = None,
                 hmm: str | Path | None = None, dictionary: str | Path | None = None) -> None:
        import pocketsphinx

        if grammar is not None and lm is not None:
            raise ConfigError("pocketsphinx: give a grammar or a language model, not both")
        d = model_dir()
        hmm = Path(hmm) if hmm else d / "en-us"
        dictionary = Path(dictionary) if dictionary else d / "cmudict-en-us.dict"
        for what, p in (("acoustic model", hmm), ("dictionary", dictionary)):
            if not p.exists():
                raise ConfigError(f"pocketsphinx {what} not found: {p}")
        if lm is not None and not Path(lm).is_file():
            raise ConfigError(f"pocketsphinx language model not found: {lm}")
        # Grammar-only decoders skip the 30 MB generic model: it would be loaded and never searched.
        lm_arg = str(lm) if lm is not None else (None if grammar is not None else str(d / "en-us.lm.bin"))
        t0 = time.perf_counter()
        try:
            config = pocketsphinx.Config(hmm=str(hmm), dict=str(dictionary), lm=lm_arg, loglevel="FATAL")
            self.decoder = pocketsphinx.Decoder(config)
        except (RuntimeError, ValueError) as e:
            raise ConfigError(f"pocketsphinx could not load (hmm={hmm}, dict={dictionary}, lm={lm_arg}): {e}") from e
        self.dictionary = dictionary
        self._busy = threading.Lock()
        self._lm_name = "pocketsphinx-en-us" + ("/domain" if lm is not None else "")
        self.name = self._lm_name if lm_arg else "pocketsphinx-en-us/none"
        if grammar is not None:
            self.use_grammar(grammar)
        self.load_s = time.perf_counter() - t0

    @classmethod
    def for_domain(cls, sentences: Iterable[str] | None = None, *, lm_path: str | Path | None = None,
                   order: int = 3) -> SphinxRecognizer:
        """A recognizer whose language model is built from ``sentences`` (default: the kiosk's intent
        sentences and catalog names). Without ``lm_path`` the model lives in a temporary file only while
        pocketsphinx reads it (it keeps the model in memory)."""
        from runtime.voice.domain_lm import build_domain_lm, kiosk_sentences

        sentences = list(kiosk_sentences() if sentences is None else sentences)
        source = model_dir() / "cmudict-en-us.dict"
        if lm_path is not None:
            built = build_domain_lm(lm_path, sentences, order=order, dictionary=source)
            return cls(lm=built.path, dictionary=built.dict_path)
        with tempfile.TemporaryDirectory(prefix="storeclerk-lm-") as tmp:
            built = build_domain_lm(Path(tmp) / "domain.arpa", sentences, order=order, dictionary=source)
            return cls(lm=built.path, dictionary=built.dict_path)

    def use_grammar(self, grammar: str) -> None:
        """Switch to a grammar search: a built-in name ("yesno", "numbers") or a JSGF string (e.g. for the one
        question the kiosk is asking; ``use_language_model()`` switches back)."""
        self._idle("switch grammars")
        name = grammar if grammar in GRAMMARS else "jsgf"
        text = GRAMMARS.get(grammar, grammar)
        if not text.lstrip().startswith("#JSGF"):
            raise ConfigError(f"unknown grammar {grammar[:40]!r}: use one of {sorted(GRAMMARS)} or a JSGF string "
                              "starting with '#JSGF V1.0;'")
        # pocketsphinx says only "Failed to parse JSGF" for a word it cannot pronounce: name those words.
        unknown = sorted({w for w in _jsgf_words(text) if not self.knows(w)})
        if unknown:
            raise ConfigError(f"JSGF grammar uses words missing from the pronunciation dictionary "
                              f"{self.dictionary.name}: {', '.join(unknown[:12])}")
        try:
            self.decoder.add_jsgf_string(name, text)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"invalid JSGF grammar ({e}): it needs a '#JSGF V1.0;' header, a 'grammar NAME;' "
                              "line and at least one 'public <rule> = ...;'") from e
        self.decoder.activate_search(name)
        self.name = f"pocketsphinx-en-us/{name}"

    def use_language_model(self) -> None:
        """Back to the n-gram model this recognizer was loaded with (generic or domain)."""
        self._idle("switch to the language model")
        if self.decoder.get_lm("_default") is None:
            raise ConfigError("this pocketsphinx recognizer was loaded with a grammar only and has no language model")
        self.decoder.activate_search("_default")
        self.name = self._lm_name

    def _idle(self, what: str) -> None:
        if self._busy.locked():
            raise InputError(f"cannot {what} while an utterance is being decoded; finish the stream first")

    def knows(self, word: str) -> bool:
        return self.decoder.lookup_word(word.lower()) is not None

    def _start(self) -> None:
        if not self._busy.acquire(blocking=False):
            raise InputError("this pocketsphinx recognizer is already decoding an utterance; finish that stream "
                             "first or use a second recognizer")
        try:
            self.decoder.start_utt()
        except Exception:
            self._busy.release()
            raise

    def _end(self, t_decode: float) -> Transcript:
        try:
            self.decoder.end_utt()
            hyp = self.decoder.hyp()
            probs = [min(s.prob, 1.0) for s in (self.decoder.seg() or []) if s.word not in _NOT_WORDS
                     and not s.word.startswith(("[", "+"))]
        finally:
            self._busy.release()
        text = hyp.hypstr.strip() if hyp is not None else ""
        # Word posteriors from the decoder's lattice: uncalibrated against Whisper's token probabilities, but
        # low when the search was torn between alternatives.
        conf = float(np.mean(probs)) if text and probs else 0.0
        return Transcript(text, conf, True, t_decode * 1000)

    def transcribe(self, pcm16: np.ndarray, rate: int = RATE) -> Transcript:
        data = _check_audio(pcm16, rate)
        if not data:
            raise InputError("no audio samples to transcribe (empty array)")
        if len(data) < 2 * RATE // 10:  # under 0.1 s: nothing a person said
            return Transcript("", 0.0)
        t0 = time.perf_counter()
        self._start()
        try:
            self.decoder.process_raw(data, False, True)
        except Exception:
            self.decoder.end_utt()
            self._busy.release()
            raise
        return self._end(time.perf_counter() - t0)

    def stream(self) -> SphinxStream:
        return SphinxStream(self)


class SphinxStream:
    """One utterance decoded as it arrives: ``accept`` returns the best hypothesis so far."""

    def __init__(self, rec: SphinxRecognizer) -> None:
        self._rec = rec
        rec._start()
        self._open = True
        self._decode_s = 0.0

    def accept(self, pcm16: np.ndarray) -> str:
        if not self._open:
            raise InputError("this stream is finished; open a new one with recognizer.stream()")
        data = _check_audio(pcm16, RATE)
        if not data:
            return self._partial()
        t0 = time.perf_counter()
        self._rec.decoder.process_raw(data, False, False)
        self._decode_s += time.perf_counter() - t0
        return self._partial()

    def _partial(self) -> str:
        hyp = self._rec.decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""

    def finish(self) -> Transcript:
        if not self._open:
            raise InputError("this stream is already finished")
        self._open = False
        t0 = time.perf_counter()
        return self._rec._end(self._decode_s + time.perf_counter() - t0)

    def __del__(self) -> None:
        # A stream dropped without finish() must not leave the decoder locked forever.
        if getattr(self, "_open", False):
            try:
                self._open = False
                self._rec.decoder.end_utt()
            finally:
                self._rec._busy.release()
