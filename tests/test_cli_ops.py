"""The operator commands through the real CLI: run's config checks, kb validate, report, wipe, install-service."""

import shutil

from conftest import run_cli

from runtime.paths import data_dir


def test_run_rejects_bad_config_naming_the_key(tmp_path):
    cfg = tmp_path / "kiosk.yml"
    cfg.write_text("session:\n  idle_timeout_s: soon\n")
    r = run_cli("run", "--config", cfg, "--state-dir", tmp_path / "s", timeout=60)
    assert r.returncode == 2
    assert "session.idle_timeout_s" in r.stderr and str(cfg) in r.stderr and "Traceback" not in r.stderr


def test_print_config_is_valid_yaml_config(tmp_path):
    r = run_cli("run", "--print-config", timeout=60)
    assert r.returncode == 0 and "idle_timeout_s" in r.stdout
    cfg = tmp_path / "k.yml"
    cfg.write_text(r.stdout)
    assert run_cli("run", "--config", cfg, "--print-config", timeout=60).returncode == 0


def test_kb_validate_ok_and_broken(tmp_path):
    r = run_cli("kb", "validate", timeout=60)
    assert r.returncode == 0 and "81 products" in r.stdout
    kb = tmp_path / "kb"
    shutil.copytree(data_dir() / "kb", kb)
    import csv

    with open(kb / "catalog.csv", newline="") as f:
        rows = list(csv.reader(f))
    rows[3][rows[0].index("price")] = "-1.00"  # the product on line 4
    with open(kb / "catalog.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    r = run_cli("kb", "validate", "--kb", kb, timeout=60)
    assert r.returncode == 1
    assert "catalog.csv line 4" in r.stderr and "Traceback" not in r.stderr


def test_report_and_wipe(tmp_path):
    from runtime.store import ConversationStore

    state = tmp_path / "state"
    state.mkdir()
    with ConversationStore(state / "conversations.sqlite3", redact=str) as s:
        s.start_session("a")
        s.add_turns("a", [{"role": "customer", "text": "hi", "intent": "greet", "latency_ms": 9.0},
                          {"role": "kiosk", "text": "hello", "intent": "greet"}])
    out = tmp_path / "r.html"
    r = run_cli("report", "--state-dir", state, "--out", out, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "greet" in out.read_text()
    r = run_cli("wipe", "--state-dir", state, timeout=60)  # no terminal, no --yes: refuses
    assert r.returncode == 2 and "--yes" in r.stderr
    r = run_cli("wipe", "--state-dir", state, "--yes", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    with ConversationStore(state / "conversations.sqlite3", redact=str) as s:
        assert s.turns("a") == []


def test_install_service_writes_unit(tmp_path):
    r = run_cli("install-service", "--unit-dir", tmp_path, "--user", "kiosk", timeout=60)
    assert r.returncode == 0, r.stderr
    unit = (tmp_path / "storeclerk.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "User=kiosk" in unit
    r = run_cli("install-service", "--unit-dir", "/proc/nope", timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_voice_test_json_and_bad_audio(tmp_path):
    import json
    import shutil as sh

    import pytest

    if sh.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    import subprocess

    wav = tmp_path / "q.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "how much are the bananas"], check=True)
    r = run_cli("voice-test", "--wav", wav, "--json", "--out", tmp_path / "reply.wav", timeout=300)
    assert r.returncode == 0, r.stderr[-1000:]
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert "banana" in d["transcript"].lower() and d["reply"]
    assert 0 < d["end_of_speech"] <= d["asr_final"] <= d["understanding"] <= d["first_audio"]
    assert (tmp_path / "reply.wav").stat().st_size > 10_000
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage")
    r = run_cli("voice-test", "--wav", bad, "--json", timeout=120)
    assert r.returncode == 2 and "bad_audio" in r.stderr and "Traceback" not in r.stderr
    silent = tmp_path / "silent.wav"
    import numpy as np

    from device.wavio import write_wav

    write_wav(silent, np.zeros(16000, dtype=np.int16), 16000)
    r = run_cli("voice-test", "--wav", silent, timeout=120)
    assert r.returncode == 2 and "no speech" in r.stderr
