"""Kiosk runtime benchmarks: a text turn in process, ``POST /api/turn`` under 20 concurrent clients, and the
kiosk process's memory. Prints one JSON object (``--json``) and writes ``bench/results/runtime.json``.

    python bench/kiosk_bench.py [--turns 400] [--clients 20] [--requests 30] [--json]

The in-process number is ``Kiosk.turn`` end to end (understanding, dialogue, KB/order look-ups, the
conversation store's two synchronous commits), measured in a child process so its memory is the kiosk's own.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CLI = Path(sys.executable).parent / "storeclerk"

# A mix of what customers ask (not an evaluation set: only load for the timing).
TURNS = [
    "where can I find the oat milk", "and how much is it?", "is it vegan?", "what time do you close today",
    "do you take apple pay", "I want to return a jumper I bought last week", "where is my order 113542617735902",
    "hello", "thanks a lot", "do you have lactose free yoghurt", "how much are the bananas", "something cheaper?",
    "what goes with the muesli", "can I talk to someone", "what is the meaning of life", "do you have parking",
    "where are the tomatoes", "can I get a receipt for my order", "how long does delivery take", "bye",
    "is the orange juice organic", "price of red grapefruit", "I forgot my password", "where do you keep the garlic",
]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))], 3)


def rss_mb(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    return {"rss_mb": out.get("VmRSS"), "peak_rss_mb": out.get("VmHWM")}


def in_process(n_turns: int) -> dict:
    """Runs inside the child: build the kiosk, warm it up, time ``n_turns`` turns one after another."""
    from runtime.app import build
    from runtime.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        parts = build(load_config(None, {"state_dir": tmp, "kb.watch": False}))
        load_s = time.perf_counter() - t0
        kiosk = parts.kiosk

        async def go() -> tuple[list[float], dict]:
            await kiosk.start()
            for i in range(20):  # warm-up: first runs allocate ORT arenas and SQLite pages
                await kiosk.turn(f"warm{i % 3}", TURNS[i % len(TURNS)])
            times = []
            for i in range(n_turns):
                sid = f"b{i // 8}"  # eight turns a session, like a real conversation
                t = time.perf_counter()
                await kiosk.turn(sid, TURNS[i % len(TURNS)])
                times.append((time.perf_counter() - t) * 1000)
            stages = kiosk.metrics.percentiles("storeclerk_stage_seconds")
            await kiosk.stop()
            return times, stages

        times, stages = asyncio.run(go())
        mem = rss_mb(os.getpid())
    return {"turn_ms_p50": pct(times, 0.5), "turn_ms_p90": pct(times, 0.9), "turn_ms_p99": pct(times, 0.99),
            "turns": len(times), "build_s": round(load_s, 2), "stage_ms": stages, **mem,
            "torch_imported": "torch" in sys.modules}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_load(clients: int, requests: int, think_s: float = 0.0) -> dict:
    """``clients`` keep-alive clients, each sending ``requests`` turns; ``think_s`` is the pause between a reply
    and the client's next turn (0: closed loop, i.e. the kiosk's saturation throughput)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        proc = subprocess.Popen([str(CLI), "run", "--port", str(port), "--no-voice", "--no-camera", "--state-dir", tmp],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        try:
            t0 = time.perf_counter()
            for _ in range(600):
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    c.request("GET", "/healthz")
                    if c.getresponse().status == 200:
                        break
                except OSError:
                    time.sleep(0.1)
            else:
                raise RuntimeError("kiosk did not come up: " + proc.stderr.read().decode()[-500:])
            ready_s = time.perf_counter() - t0
            idle_mem = rss_mb(proc.pid)
            lat: list[float] = []
            errors: list[str] = []
            lock = threading.Lock()
            barrier = threading.Barrier(clients)

            def client(k: int) -> None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                mine = []
                barrier.wait()
                for i in range(requests):
                    body = json.dumps({"session": f"c{k}", "text": TURNS[(k + i) % len(TURNS)]})
                    t = time.perf_counter()
                    conn.request("POST", "/api/turn", body, {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    data = r.read()
                    mine.append((time.perf_counter() - t) * 1000)
                    if think_s:
                        time.sleep(think_s * (0.5 + (i * 7919 + k * 104729) % 1000 / 1000))  # 0.5–1.5× think_s
                    if r.status != 200:
                        with lock:
                            errors.append(f"{r.status}: {data[:100]!r}")
                with lock:
                    lat.extend(mine)

            threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
            t1 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t1
            loaded_mem = rss_mb(proc.pid)
        finally:
            proc.terminate()
            try:
                rc = proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "killed"
    return {"clients": clients, "think_s": think_s, "requests": len(lat), "errors": len(errors), "error_samples": errors[:3],
            "rtt_ms_p50": pct(lat, 0.5), "rtt_ms_p90": pct(lat, 0.9), "rtt_ms_p99": pct(lat, 0.99),
            "throughput_rps": round(len(lat) / wall, 1), "ready_s": round(ready_s, 2),
            "kiosk_rss_mb_idle": idle_mem["rss_mb"], "kiosk_rss_mb_after_load": loaded_mem["rss_mb"],
            "kiosk_peak_rss_mb": loaded_mem["peak_rss_mb"], "sigterm_exit": rc}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=400)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=30, help="requests per client")
    ap.add_argument("--think", type=float, default=0.5, help="seconds a client pauses between turns (mean)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(in_process(args.turns)))
        return 0
    print("[bench] kiosk: in-process turns …", file=sys.stderr, flush=True)
    out = subprocess.run([sys.executable, __file__, "--child", "--turns", str(args.turns)], capture_output=True, text=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=REPO)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return 1
    res = {"in_process": json.loads(out.stdout.strip().splitlines()[-1])}
    print(f"[bench] kiosk: HTTP, {args.clients} concurrent clients …", file=sys.stderr, flush=True)
    res["http"] = http_load(args.clients, args.requests, args.think)
    print(f"[bench] kiosk: HTTP, {args.clients} clients, closed loop (saturation) …", file=sys.stderr, flush=True)
    res["http_saturation"] = http_load(args.clients, args.requests, 0.0)
    res["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                      "python": platform.python_version()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "runtime.json").write_text(json.dumps(res, indent=2))
    if args.json:
        print(json.dumps(res))
    else:
        ip, h = res["in_process"], res["http"]
        print(f"text turn in process: p50 {ip['turn_ms_p50']} ms, p99 {ip['turn_ms_p99']} ms over {ip['turns']} turns")
        print(f"POST /api/turn, {h['clients']} clients: p50 {h['rtt_ms_p50']} ms, p99 {h['rtt_ms_p99']} ms, "
              f"{h['throughput_rps']} req/s, errors {h['errors']}")
        print(f"kiosk RSS: idle {h['kiosk_rss_mb_idle']} MB, after load {h['kiosk_rss_mb_after_load']} MB "
              f"(peak {h['kiosk_peak_rss_mb']} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
