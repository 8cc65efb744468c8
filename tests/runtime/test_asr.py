"""Whisper tiny.en through faster-whisper on real synthetic speech (espeak-ng), and on silence and noise."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from device.wavio import read_wav
from runtime.voice.asr import WhisperRecognizer, store_prompt


@pytest.fixture(scope="module")
def asr():
    return WhisperRecognizer(prompt=store_prompt(["Oat milk (Oatly)", "Banana", "Granny Smith apple"]))


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_transcribes_espeak_speech(asr, tmp_path):
    wav = tmp_path / "q.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "how much are the bananas"], check=True)
    t = asr.transcribe(read_wav(wav, 16000))
    assert "banana" in t.text.lower(), t.text
    assert 0 < t.confidence <= 1 and t.decode_ms > 0


def test_silence_and_noise_give_no_words(asr):
    assert asr.transcribe(np.zeros(16000 * 2, dtype=np.int16)).text == ""
    rng = np.random.default_rng(0)
    noise = (rng.normal(0, 300, 16000 * 2)).astype(np.int16)  # low hiss, no speech
    assert len(asr.transcribe(noise).text.split()) <= 1
    assert asr.transcribe(np.zeros(100, dtype=np.int16)).text == ""  # too short to be speech


def test_wrong_rate_is_a_clear_error(asr):
    with pytest.raises(ValueError, match="16000 Hz"):
        asr.transcribe(np.zeros(8000, dtype=np.int16), rate=8000)


def test_store_prompt_dedupes_and_caps():
    p = store_prompt(["Banana", "banana", "Kiwi"] + [f"Product {i}" for i in range(500)], limit_chars=80)
    assert p.count("Banana") == 1 and "banana" not in p.replace("Banana", "") and len(p) < 120


def test_no_torch_in_the_recognizer_process():
    code = ("import sys, numpy as np; from runtime.voice.asr import WhisperRecognizer; "
            "WhisperRecognizer().transcribe(np.zeros(16000, dtype=np.int16)); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("False"), out.stderr[-500:]
