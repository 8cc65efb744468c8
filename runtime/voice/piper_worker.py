"""The Piper side of the TTS pipe: a separate process (piper-tts is GPL-3.0, so it never loads into the kiosk).

Run as ``python -m runtime.voice.piper_worker --model VOICE.onnx [--config VOICE.onnx.json]``. This module is
the only one that imports ``piper``; ``runtime.voice.tts`` talks to it over stdin/stdout only.

Protocol (all integers little-endian):
- kiosk → worker, on stdin: ``u32 length`` + UTF-8 JSON, one of
  ``{"id": N, "text": "..."}`` (synthesize), ``{"cancel": [N, ...]}`` (skip requests not started yet).
  EOF on stdin makes the worker exit.
- worker → kiosk, on stdout: frames ``u8 kind`` + ``u32 id`` + ``u32 length`` + payload, where kind is
  ``R`` ready (payload JSON ``{"sample_rate": int, "load_s": float}``, id 0), ``A`` a chunk of raw int16 mono
  PCM, ``L`` the last chunk of request N (PCM; the request is complete), ``E`` end of request N without audio,
  ``X`` request N failed (payload UTF-8 message). Each request ends with exactly one ``L``, ``E`` or ``X``.
Anything else the process prints goes to stderr (fd 1 is moved away before piper is imported).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import struct
import sys
import threading
import time

HEADER = struct.Struct("<BII")
LENGTH = struct.Struct("<I")


def _frame(kind: bytes, req_id: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind[0], req_id, len(payload)) + payload


def _read_exact(stream, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (0: its default)")
    args = parser.parse_args(argv)

    # Keep the protocol channel private: stray prints (ours or a library's) must not corrupt it.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stdin = sys.stdin.buffer

    t0 = time.perf_counter()
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    config_path = args.config or f"{args.model}.json"
    with open(config_path, encoding="utf-8") as f:
        config = PiperConfig.from_dict(json.load(f))
    opts = onnxruntime.SessionOptions()
    if args.threads:
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(args.model, sess_options=opts, providers=["CPUExecutionProvider"])
    voice = PiperVoice(session=session, config=config)
    rate = int(voice.config.sample_rate)
    # Warm up so the first real request does not pay for graph initialisation.
    for _ in voice.synthesize("Hello."):
        pass
    ready = {"sample_rate": rate, "load_s": round(time.perf_counter() - t0, 3)}
    out.write(_frame(b"R", 0, json.dumps(ready).encode()))

    requests: queue.Queue = queue.Queue()
    cancelled: set[int] = set()
    lock = threading.Lock()

    def reader() -> None:
        while True:
            head = _read_exact(stdin, LENGTH.size)
            if head is None:
                break
            body = _read_exact(stdin, LENGTH.unpack(head)[0])
            if body is None:
                break
            msg = json.loads(body)
            if "cancel" in msg:
                with lock:
                    cancelled.update(int(i) for i in msg["cancel"])
            else:
                requests.put(msg)
        requests.put(None)

    threading.Thread(target=reader, daemon=True).start()
    while True:
        msg = requests.get()
        if msg is None:
            return 0
        req_id = int(msg["id"])
        with lock:
            skip = req_id in cancelled
            cancelled.discard(req_id)
        if skip:
            out.write(_frame(b"E", req_id))
            continue
        text = str(msg.get("text", ""))
        try:
            # Mark the last chunk ("L") so the kiosk knows a sentence is complete the moment its audio arrives,
            # even if this process dies right after. Piper yields one chunk per non-empty phoneme sentence.
            expected = sum(1 for ph in voice.phonemize(text) if ph)
            sent = 0
            for chunk in voice.synthesize(text):
                sent += 1
                out.write(_frame(b"L" if sent == expected else b"A", req_id, chunk.audio_int16_bytes))
        except (BrokenPipeError, ConnectionResetError):
            return 0
        except Exception as exc:  # report, keep serving: one bad sentence must not kill the voice
            out.write(_frame(b"X", req_id, f"{type(exc).__name__}: {exc}".encode()))
            continue
        if sent != expected or expected == 0:
            out.write(_frame(b"E", req_id))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BrokenPipeError, KeyboardInterrupt):
        sys.exit(0)
