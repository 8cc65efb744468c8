"""File-backed audio devices, WAV reading of every format the kiosk may be handed, and the PyAudio error paths."""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
import time
import tracemalloc
import wave

import numpy as np
import pytest

from device.audio import (
    AudioChunk,
    AudioError,
    PyAudioMicrophone,
    PyAudioSpeaker,
    WavMicrophone,
    WavSpeaker,
    describe_devices,
    list_devices,
)
from device.wavio import read_wav, read_wav_info, resample, write_wav


def tone(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant(x: np.ndarray, rate: int) -> float:
    x = np.asarray(x, np.float64)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


def write_raw_wav(path, data: bytes, rate: int, channels: int, bits: int, fmt_tag: int = 1, extensible: bool = False):
    """A WAV written by hand so float and WAVE_FORMAT_EXTENSIBLE files can be made without scipy/soundfile."""
    block = channels * bits // 8
    if extensible:
        guid = struct.pack("<H", fmt_tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits, 0) + guid
    else:
        fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"LIST" + struct.pack("<I", 4) + b"INFO"  # an unrelated chunk the parser must skip
    body += b"data" + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


# ------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("src_rate", [8000, 16000, 22050, 44100, 48000])
def test_pcm16_any_rate_resampled_to_16k(tmp_path, src_rate):
    x = tone(440, src_rate, 1.0)
    p = write_wav(tmp_path / "t.wav", (x * 32767).astype(np.int16), src_rate)
    y = read_wav(p, 16000)
    assert y.dtype == np.int16 and y.ndim == 1
    assert abs(len(y) - 16000) <= 1
    assert abs(dominant(y, 16000) - 440) < 3
    rms = np.sqrt(np.mean((y[800:-800].astype(np.float64) / 32768) ** 2))
    assert abs(rms - 0.5 / np.sqrt(2)) < 0.02  # amplitude preserved


def test_stereo_is_downmixed(tmp_path):
    left, right = tone(440, 44100, 0.5), tone(1000, 44100, 0.5)
    inter = np.stack([left, right], axis=1).ravel()
    p = write_wav(tmp_path / "s.wav", (inter * 32767).astype(np.int16), 44100, channels=2)
    y = read_wav(p, 16000).astype(np.float64)
    spec = np.abs(np.fft.rfft(y))
    f = np.fft.rfftfreq(len(y), 1 / 16000)
    peaks = sorted(f[np.argsort(spec)[-2:]].round())
    assert abs(peaks[0] - 440) <= 3 and abs(peaks[1] - 1000) <= 3


@pytest.mark.parametrize("extensible", [False, True])
def test_float32_wav(tmp_path, extensible):
    x = tone(440, 44100, 0.5, amp=0.8)
    p = write_raw_wav(tmp_path / "f.wav", x.astype("<f4").tobytes(), 44100, 1, 32, fmt_tag=3, extensible=extensible)
    info = read_wav_info(p)
    assert (info.fmt, info.bits, info.rate, info.frames) == (3, 32, 44100, len(x))
    y = read_wav(p, 16000)
    assert abs(dominant(y, 16000) - 440) < 3
    assert 0.75 < np.abs(y).max() / 32767 < 0.85


def test_float_clipping_and_nan_do_not_wrap(tmp_path):
    x = np.array([0.0, 1.7, -3.0, np.nan, np.inf, 0.25] * 100, np.float32)
    p = write_raw_wav(tmp_path / "c.wav", x.astype("<f4").tobytes(), 16000, 1, 32, fmt_tag=3)
    y = read_wav(p, 16000)
    assert list(y[:6]) == [0, 32767, -32767, 0, 32767, round(0.25 * 32767)]


def test_24bit_and_8bit_and_32bit(tmp_path):
    x = tone(440, 16000, 0.5, amp=0.5)
    v24 = np.round(x * (2**23 - 1)).astype(np.int32)
    raw24 = np.stack([v24 & 0xFF, (v24 >> 8) & 0xFF, (v24 >> 16) & 0xFF], axis=1).astype(np.uint8).tobytes()
    p24 = write_raw_wav(tmp_path / "24.wav", raw24, 16000, 1, 24, extensible=True)
    raw8 = np.round(x * 127 + 128).astype(np.uint8).tobytes()
    p8 = write_raw_wav(tmp_path / "8.wav", raw8, 16000, 1, 8)
    raw32 = np.round(x * (2**31 - 1)).astype("<i4").tobytes()
    p32 = write_raw_wav(tmp_path / "32.wav", raw32, 16000, 1, 32)
    ref = np.round(x * 32767)
    for p, tol in [(p24, 2), (p32, 2), (p8, 300)]:
        y = read_wav(p, 16000).astype(np.float64)
        assert len(y) == len(x)
        assert np.abs(y - ref).max() <= tol, p.name


def test_silence_reads_as_zeros(tmp_path):
    p = write_wav(tmp_path / "z.wav", np.zeros(8000, np.int16), 8000)
    y = read_wav(p, 16000)
    assert len(y) == 16000 and not y.any()


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "empty file"),
        (b"RIFF\x10\x00", "truncated header"),
        (b"ID3\x03\x00\x00\x00\x00\x00\x00\x00\x00" + b"\xff" * 100, "not a WAV"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00", "corrupt header"),
        (b"RIFF\x04\x00\x00\x00WAVE", "no 'fmt ' chunk"),
    ],
)
def test_corrupt_files_raise_clear_audio_error(tmp_path, content, match):
    p = tmp_path / "bad.wav"
    p.write_bytes(content)
    with pytest.raises(AudioError, match=match) as ei:
        read_wav(p)
    assert str(p) in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_unsupported_encodings_and_zero_channels(tmp_path):
    p = write_raw_wav(tmp_path / "mulaw.wav", b"\x00" * 100, 8000, 1, 8, fmt_tag=7)
    with pytest.raises(AudioError, match="mu-law"):
        read_wav(p)
    p = write_raw_wav(tmp_path / "z.wav", b"\x00" * 100, 8000, 1, 16)
    raw = bytearray(p.read_bytes())
    raw[22:24] = b"\x00\x00"  # channels = 0
    p.write_bytes(bytes(raw))
    with pytest.raises(AudioError, match="0 channels"):
        read_wav(p)
    with pytest.raises(AudioError, match="cannot open"):
        read_wav(tmp_path / "missing.wav")


def test_data_cut_short_reads_what_is_there(tmp_path):
    p = write_wav(tmp_path / "cut.wav", (tone(440, 16000, 1.0) * 32767).astype(np.int16), 16000)
    p.write_bytes(p.read_bytes()[:-10001])  # a recording that crashed mid-write (odd cut: half a sample)
    y = read_wav(p, 16000)
    assert len(y) == 16000 - 5001


def test_ten_minute_file_memory_is_bounded(tmp_path):
    rate, seconds = 16000, 600
    p = tmp_path / "long.wav"
    with wave.open(str(p), "wb") as w:  # generated as silence, one second at a time
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        second = bytes(2 * rate)
        for _ in range(seconds):
            w.writeframes(second)
    tracemalloc.start()
    try:
        y = read_wav(p, rate)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(y) == rate * seconds
    assert peak < 2.5 * y.nbytes  # the file's bytes + the array, no float copies


def test_resample_lengths_and_errors():
    assert len(resample(np.zeros(441), 44100, 16000)) == 160
    assert len(resample(np.zeros(0), 44100, 16000)) == 0
    assert len(resample(np.ones(10), 16000, 16000)) == 10
    with pytest.raises(ValueError):
        resample(np.zeros(10), 0, 16000)


# ------------------------------------------------------------------------------------------- WAV microphone


async def _collect(mic) -> list[AudioChunk]:
    return [c async for c in mic]


def test_wav_microphone_chunks_and_tail_silence(tmp_path):
    x = (tone(440, 16000, 1.0) * 32767).astype(np.int16)
    p = write_wav(tmp_path / "m.wav", x, 16000)
    chunks = asyncio.run(_collect(WavMicrophone(p, tail_silence_ms=500)))
    assert all(c.rate == 16000 and c.samples == 512 for c in chunks)
    assert len(chunks) == int(np.ceil((16000 + 8000) / 512))
    audio = np.concatenate([c.array() for c in chunks])
    assert np.array_equal(audio[:16000], x)
    assert not audio[16000:].any()  # padding + tail are silence
    ts = [c.ts for c in chunks]
    assert np.allclose(np.diff(ts), 0.032)


def test_wav_microphone_resamples_and_accepts_arrays(tmp_path):
    p = write_wav(tmp_path / "m.wav", (tone(300, 44100, 0.5) * 32767).astype(np.int16), 44100)
    chunks = asyncio.run(_collect(WavMicrophone(p, chunk_ms=20)))
    assert chunks[0].samples == 320 and len(chunks) == 25
    arr = asyncio.run(_collect(WavMicrophone(np.zeros(1000, np.int16))))
    assert len(arr) == 2


def test_wav_microphone_realtime_pacing(tmp_path):
    p = write_wav(tmp_path / "m.wav", np.zeros(8000, np.int16), 16000)  # 0.5 s → 16 chunks = 0.512 s

    async def run():
        t0 = time.monotonic()
        seen = []
        async for _c in WavMicrophone(p, realtime=True):
            seen.append(time.monotonic() - t0)
        return seen

    seen = asyncio.run(run())
    assert len(seen) == 16
    assert 0.45 < seen[-1] < 0.9
    assert seen[0] >= 0.025  # the first chunk waits until it has been "captured"


def test_missing_and_corrupt_mic_file_is_audio_error(tmp_path):
    with pytest.raises(AudioError):
        WavMicrophone(tmp_path / "nope.wav")
    (tmp_path / "bad.wav").write_bytes(b"junk" * 10)
    with pytest.raises(AudioError, match="not a WAV"):
        WavMicrophone(tmp_path / "bad.wav")


# ------------------------------------------------------------------------------------------- speaker + echo


def test_wav_speaker_records_to_wav(tmp_path):
    x = (tone(440, 22050, 0.3) * 32767).astype(np.int16)
    y16 = (tone(440, 16000, 0.2) * 32767).astype(np.int16)

    async def run():
        async with WavSpeaker(tmp_path / "out.wav", realtime=False) as spk:
            assert await spk.play(x, 22050)
            assert await spk.play(y16.tobytes(), 16000)  # resampled to the speaker's rate
            assert not spk.is_playing

    asyncio.run(run())
    rec = read_wav(tmp_path / "out.wav", None)
    assert abs(len(rec) - (len(x) + 0.2 * 22050)) <= 2
    assert np.array_equal(rec[: len(x)], x)
    assert abs(dominant(rec[len(x) :], 22050) - 440) < 5


def test_wav_speaker_barge_in_stop_is_fast(tmp_path):
    x = (tone(440, 22050, 2.0) * 32767).astype(np.int16)

    async def run():
        spk = WavSpeaker(tmp_path / "out.wav")
        task = asyncio.ensure_future(spk.play(x))
        await asyncio.sleep(0.3)
        assert spk.is_playing
        took = await spk.stop()
        completed = await task
        spk.close()
        return spk, took, completed

    t0 = time.monotonic()
    spk, took, completed = asyncio.run(run())
    assert time.monotonic() - t0 < 1.0
    assert not completed and spk.cuts == 1 and not spk.is_playing
    assert took < 0.2
    played = len(read_wav(tmp_path / "out.wav", None)) / 22050
    assert 0.25 < played < 0.45  # what had actually been played before the cut, within a chunk or two


def test_stop_when_idle_returns_zero():
    assert asyncio.run(WavSpeaker().stop()) == 0.0


def test_echo_from_speaker_reaches_the_microphone(tmp_path):
    spk = WavSpeaker(rate=22050, realtime=False)
    mic = WavMicrophone(np.zeros(16000, np.int16), echo_from=spk, echo_gain=0.5, echo_delay_ms=100)
    x = (tone(1000, 22050, 0.3, amp=0.8) * 32767).astype(np.int16)

    async def run():
        out = []
        async for c in mic:
            out.append(c.array())
            if len(out) == 4:  # the kiosk starts talking 128 ms into the customer's silence
                await spk.play(x, 22050)
        return np.concatenate(out)

    audio = asyncio.run(run()).astype(np.float64)
    start = 4 * 512 + 1600  # after the play, plus the echo path's 100 ms delay
    assert not audio[:start].any()
    seg = audio[start : start + int(0.3 * 16000)]
    assert abs(dominant(seg, 16000) - 1000) < 5
    assert 0.35 < np.abs(seg).max() / 32767 < 0.45  # 0.8 × gain 0.5
    assert not audio[start + int(0.3 * 16000) + 50 :].any()


def test_echo_with_realtime_devices(tmp_path):
    spk = WavSpeaker(rate=16000)
    mic = WavMicrophone(np.zeros(8000, np.int16), realtime=True, echo_from=spk, echo_gain=1.0, echo_delay_ms=0)
    x = (tone(500, 16000, 0.2, amp=0.5) * 32767).astype(np.int16)

    async def run():
        play = asyncio.ensure_future(spk.play(x))
        chunks = await _collect(mic)
        await play
        return np.concatenate([c.array() for c in chunks])

    audio = asyncio.run(run())
    energy = np.abs(audio.astype(np.float64)).sum() / (np.abs(x.astype(np.float64)).sum())
    assert 0.9 < energy < 1.1  # all of the played audio was heard once


# ------------------------------------------------------------------------------------------- espeak-ng


def test_espeak_utterance_through_wav_microphone(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    wav = tmp_path / "x.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "where is the oat milk"], check=True, capture_output=True, timeout=30)
    info = read_wav_info(wav)
    assert info.rate == 22050 and info.channels == 1
    chunks = asyncio.run(_collect(WavMicrophone(wav, tail_silence_ms=600)))
    audio = np.concatenate([c.array() for c in chunks]).astype(np.float64)
    assert abs(len(audio) / 16000 - (info.duration + 0.6)) < 0.05
    energy = np.array([np.sqrt(np.mean(c.array().astype(np.float64) ** 2)) for c in chunks])
    voiced = energy > 500
    assert voiced.sum() * 0.032 > 0.5  # there is speech...
    assert not voiced[-18:].any()  # ...and silence at the end, for endpointing


# ------------------------------------------------------------------------------------------- PyAudio


class FakePyAudio:
    """Stands in for pyaudio.PyAudio: two devices, a stream whose callback the test drives."""

    DEVICES = [
        {"index": 0, "name": "HDA Intel PCH: ALC3246 Analog (hw:0,0)", "maxInputChannels": 2, "maxOutputChannels": 2,
         "defaultSampleRate": 44100.0},
        {"index": 1, "name": "USB PnP Sound Device: Audio (hw:1,0)", "maxInputChannels": 1, "maxOutputChannels": 0,
         "defaultSampleRate": 48000.0},
    ]

    def __init__(self, rates=(16000, 44100, 48000)):
        self.rates = rates
        self.streams = []

    def get_device_count(self):
        return len(self.DEVICES)

    def get_device_info_by_index(self, i):
        return self.DEVICES[i]

    def get_default_input_device_info(self):
        return self.DEVICES[0]

    def get_default_output_device_info(self):
        return self.DEVICES[0]

    def is_format_supported(self, rate, **kw):
        if rate not in self.rates:
            raise ValueError("Invalid sample rate")
        return True

    def open(self, **kw):
        s = type("Stream", (), {"kw": kw, "stop_stream": lambda self: None, "close": lambda self: None})()
        self.streams.append(s)
        return s

    def terminate(self):
        pass


def test_pyaudio_no_devices_here_gives_empty_list_and_clear_errors():
    devices = list_devices()
    if devices:
        pytest.skip(f"this machine has audio devices: {devices}")
    assert "no audio devices" in describe_devices()

    async def open_mic(dev):
        async with PyAudioMicrophone(dev):
            pass

    with pytest.raises(AudioError, match="no default input audio device.*available: none"):
        asyncio.run(open_mic(None))
    with pytest.raises(AudioError, match="no input device named 'USB Mic'"):
        asyncio.run(open_mic("USB Mic"))
    with pytest.raises(AudioError, match="index 3 does not exist"):
        asyncio.run(open_mic(3))
    with pytest.raises(AudioError, match="output"):
        PyAudioSpeaker().open()


def test_pyaudio_device_resolution_by_name_and_index():
    devs = list_devices(_pa_factory=FakePyAudio)
    assert [d["name"][:3] for d in devs] == ["HDA", "USB"]
    assert devs[1] == {"index": 1, "name": devs[1]["name"], "inputs": 1, "outputs": 0, "default_rate": 48000.0}
    assert "USB PnP" in describe_devices(devs)

    async def opened(dev, **kw):
        mic = PyAudioMicrophone(dev, _pa_factory=lambda: FakePyAudio(**kw))
        mic.open()
        mic.close()
        return mic

    assert asyncio.run(opened("usb")).info["index"] == 1
    assert asyncio.run(opened("1")).info["index"] == 1
    assert asyncio.run(opened(None)).info["index"] == 0
    m = asyncio.run(opened("usb", rates=(48000,)))
    assert m.device_rate == 48000  # falls back to the device's rate and resamples
    with pytest.raises(AudioError, match=r"no input device named 'webcam'.*0: 'HDA.*1: 'USB"):
        asyncio.run(opened("webcam"))
    with pytest.raises(AudioError, match="has no output channels"):
        PyAudioSpeaker(1, _pa_factory=FakePyAudio).open()


def test_pyaudio_mic_queue_drops_oldest_and_resamples():
    async def run(rates):
        fake = FakePyAudio(rates=rates)
        mic = PyAudioMicrophone("usb", queue_size=4, _pa_factory=lambda: fake)
        mic.open()
        cb = fake.streams[0].kw["stream_callback"]
        frames = fake.streams[0].kw["frames_per_buffer"]
        for i in range(10):  # ten blocks arrive before the consumer reads anything
            cb((np.full(frames, i, np.int16)).tobytes(), frames, {}, 0)
        await asyncio.sleep(0.01)
        got = []
        async for c in mic:
            got.append(c)
            if mic._queue.empty():
                break
        mic.close()
        return mic, frames, got

    mic, frames, got = asyncio.run(run((16000,)))
    assert frames == 512 and mic.dropped == 6 and len(got) == 4
    assert [int(c.array()[0]) for c in got] == [6, 7, 8, 9]  # the newest survive
    mic, frames, got = asyncio.run(run((48000,)))
    assert frames == 1536 and all(c.samples == 512 and c.rate == 16000 for c in got)


def test_pyaudio_mic_close_wakes_a_waiting_consumer():
    async def run():
        mic = PyAudioMicrophone(0, _pa_factory=FakePyAudio)
        got = []

        async def consume():
            async for c in mic:
                got.append(c)

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.02)  # opened, waiting on an empty queue
        mic.close()
        await asyncio.wait_for(task, 1.0)
        return got

    assert asyncio.run(run()) == []
