"""The whole kiosk as a process (`storeclerk run`), over real sockets: durability under kill -9, systemd
notification, clean SIGTERM, hot reload of the knowledge base that keeps the last good one."""

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from runtime.paths import data_dir

CLI = Path(sys.executable).parent / "storeclerk"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, path: str, body: dict, timeout: float = 10) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.load(r)


class Kiosk:
    def __init__(self, state: Path, *extra: str, env: dict | None = None):
        self.port = free_port()
        self.log = open(state.parent / f"kiosk-{self.port}.log", "w")
        self.proc = subprocess.Popen([str(CLI), "run", "--port", str(self.port), "--no-voice", "--no-camera",
                                      "--state-dir", str(state), *extra], stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                get(self.port, "/healthz")
                return
            except OSError:
                assert self.proc.poll() is None, Path(self.log.name).read_text()[-2000:]
                time.sleep(0.2)
        raise AssertionError("kiosk did not answer /healthz within 60 s")

    def stop(self, sig=signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(30)


@pytest.mark.slow
def test_kill_9_loses_no_committed_turn(tmp_path):
    state = tmp_path / "state"
    k = Kiosk(state)
    acked: list[str] = []
    stop = threading.Event()

    def talk(n: int) -> None:
        i = 0
        while not stop.is_set():
            text = f"where is the oat milk number {n}-{i}"
            try:
                post(k.port, "/api/turn", {"session": f"d{n}", "text": text}, timeout=5)
            except (OSError, urllib.error.URLError):
                return  # the kiosk died under us: this turn was never acknowledged
            acked.append(text)
            i += 1

    threads = [threading.Thread(target=talk, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(4)
    k.proc.kill()  # SIGKILL mid-conversation
    k.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) > 10
    # restart on the same state: it opens, and every acknowledged turn is there
    k2 = Kiosk(state)
    try:
        assert get(k2.port, "/healthz")["status"] == "ok"
    finally:
        assert k2.stop() == 0
    db = sqlite3.connect(state / "conversations.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {r[0] for r in db.execute("SELECT text FROM turns WHERE role = 'customer'")}
    missing = [t for t in acked if t not in stored]
    assert not missing, f"{len(missing)} acknowledged turns lost, e.g. {missing[:3]}"


@pytest.mark.slow
def test_sd_notify_ready_and_clean_sigterm(tmp_path):
    sock_path = tmp_path / "notify.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(sock_path))
    srv.settimeout(30)
    k = Kiosk(tmp_path / "state", env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"})
    got = []
    deadline = time.time() + 30
    while time.time() < deadline and not ({"READY=1", "WATCHDOG=1"} <= set(got)):
        got += srv.recv(4096).decode().split("\n")
    assert "READY=1" in got and "WATCHDOG=1" in got
    assert any(line.startswith("STATUS=serving on http://127.0.0.1:") for line in got)
    post(k.port, "/api/turn", {"session": "n1", "text": "hello"})
    assert k.stop(signal.SIGTERM) == 0
    srv.settimeout(5)
    rest = []
    try:
        while "STOPPING=1" not in rest:
            rest += srv.recv(4096).decode().split("\n")
    except TimeoutError:
        pass
    assert "STOPPING=1" in rest
    db = sqlite3.connect(tmp_path / "state" / "conversations.sqlite3")
    assert db.execute("SELECT end_reason FROM sessions WHERE id = 'n1'").fetchone()[0] == "shutdown"


@pytest.mark.slow
def test_broken_kb_keeps_last_good_and_reports_file_and_line(tmp_path):
    kb = tmp_path / "kb"
    shutil.copytree(data_dir() / "kb", kb)
    k = Kiosk(tmp_path / "state", "--kb", str(kb))
    try:
        assert "aisle" in post(k.port, "/api/turn", {"session": "k1", "text": "where can I find the oat milk"})["reply"]
        faq = kb / "faq.yml"
        good = faq.read_text()
        faq.write_text(good + "\n- id: broken\n  title: [unclosed\n")
        r = subprocess.run([str(CLI), "kb", "reload", "--port", str(k.port)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "faq.yml" in r.stderr and "line" in r.stderr
        h = get(k.port, "/healthz")
        assert h["status"] == "degraded" and "faq.yml" in h["kb"]["last_error"]
        # still answering from the last good KB
        assert "aisle" in post(k.port, "/api/turn", {"session": "k1", "text": "where can I find the oat milk"})["reply"]
        faq.write_text(good.replace("usually within two minutes", "usually within a minute or two"))
        r = subprocess.run([str(CLI), "kb", "reload", "--port", str(k.port)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert get(k.port, "/healthz")["kb"]["last_error"] is None
    finally:
        assert k.stop() == 0
