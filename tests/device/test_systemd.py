"""systemd glue: sd_notify over real AF_UNIX datagram sockets (path and abstract), the watchdog, the unit file."""

from __future__ import annotations

import asyncio
import configparser
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from device import systemd

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sd_notify is Linux-only")


class Listener:
    """A bound datagram socket standing in for systemd's notify socket."""

    def __init__(self, abstract: bool):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.settimeout(2.0)
        self.dir = None
        if abstract:
            name = f"storeclerk-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            self.dir = tempfile.mkdtemp(prefix="sd-", dir="/tmp")  # sun_path is limited to 108 bytes
            self.env = os.path.join(self.dir, "notify")
            self.sock.bind(self.env)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(2.0)
        return out

    def close(self):
        self.sock.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(params=["path", "abstract"])
def listener(request, monkeypatch):
    lst = Listener(abstract=request.param == "abstract")
    monkeypatch.setenv("NOTIFY_SOCKET", lst.env)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield lst
    lst.close()


# ------------------------------------------------------------------------------------------------- notify


def test_no_socket_is_a_noop(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.ready() is False and systemd.watchdog() is False and systemd.stopping() is False


def test_ready_watchdog_stopping_status(listener):
    assert systemd.ready() is True
    assert listener.recv() == "READY=1"
    assert systemd.ready("serving on port 8080")
    assert listener.recv() == "READY=1\nSTATUS=serving on port 8080"
    assert systemd.watchdog()
    assert listener.recv() == "WATCHDOG=1"
    assert systemd.status("two\nlines")  # one line: a newline would start a new KEY=VALUE
    assert listener.recv() == "STATUS=two lines"
    assert systemd.stopping()
    assert listener.recv() == "STOPPING=1"


def test_unreachable_or_unsupported_socket_returns_false(monkeypatch, tmp_path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@")
    assert systemd.notify("") is False


# ------------------------------------------------------------------------------------------------ watchdog


def test_watchdog_interval(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert systemd.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "soon", ""):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert systemd.watchdog_interval() is None


async def _run_for(coro, seconds: float):
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(seconds)
    assert not task.done(), task.exception() if task.done() else None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_watchdog_loop_pings_while_healthy(listener, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: a keep-alive every 0.1 s
    asyncio.run(_run_for(systemd.watchdog_loop(lambda: True), 0.55))
    got = listener.drain()
    assert got.count("WATCHDOG=1") >= 2 and set(got) == {"WATCHDOG=1"}


def test_watchdog_loop_withholds_while_unhealthy(listener, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    state = {"ok": True}
    checks = []

    def healthy():
        checks.append(state["ok"])
        return state["ok"]

    async def scenario():
        task = asyncio.ensure_future(systemd.watchdog_loop(healthy))
        await asyncio.sleep(0.25)
        first = listener.drain()
        state["ok"] = False
        await asyncio.sleep(0.05)  # let a check that was already scheduled pass
        listener.drain()
        await asyncio.sleep(0.4)
        during = listener.drain()
        task.cancel()
        return first, during

    first, during = asyncio.run(scenario())
    assert "WATCHDOG=1" in first
    assert "WATCHDOG=1" not in during
    assert checks.count(False) >= 2


def test_watchdog_loop_health_check_errors_count_as_unhealthy(listener):
    def broken():
        raise RuntimeError("stage crashed")

    async def is_ok_async():
        return True

    asyncio.run(_run_for(systemd.watchdog_loop(broken, interval=0.1), 0.3))
    got = listener.drain()
    assert "WATCHDOG=1" not in got and any(m.startswith("STATUS=unhealthy") for m in got)
    asyncio.run(_run_for(systemd.watchdog_loop(is_ok_async, interval=0.1), 0.2))
    assert "WATCHDOG=1" in listener.drain()


def test_watchdog_loop_without_watchdog_returns(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    asyncio.run(asyncio.wait_for(systemd.watchdog_loop(lambda: True), 1.0))


# ------------------------------------------------------------------------------------------------ the unit


def parse_unit(text: str) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser(strict=False, interpolation=None, delimiters=("=",), comment_prefixes=("#",))
    cp.optionxform = str
    cp.read_string(text)
    return cp


def test_render_unit():
    text = systemd.render_unit("/opt/storeclerk/.venv/bin/python", "/opt/storeclerk", "/etc/storeclerk/kiosk.yml")
    assert "{" not in text and "}" not in text
    u = parse_unit(text)
    assert u.sections() == ["Unit", "Service", "Install"]
    s = u["Service"]
    expected = {
        "Type": "notify",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "User": "storeclerk",
        "Group": "storeclerk",
        "StateDirectory": "storeclerk",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "KillSignal": "SIGTERM",
        "WorkingDirectory": "/opt/storeclerk",
        "ExecStart": "/opt/storeclerk/.venv/bin/python -m runtime.cli run --config /etc/storeclerk/kiosk.yml",
    }
    for key, value in expected.items():
        assert s[key] == value, key
    assert "/var/lib/storeclerk" in s["ReadWritePaths"].split()
    assert int(s["TimeoutStopSec"]) > 0
    assert "PrivateDevices" not in s and "ProtectClock" not in s  # they would cut off camera, mic and GPU
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_render_without_config_and_with_awkward_paths():
    text = systemd.render_unit("/srv/my kiosk/.venv/bin/python", "/srv/my kiosk", None, "kiosk")
    s = parse_unit(text)["Service"]
    assert s["ExecStart"] == '"/srv/my kiosk/.venv/bin/python" -m runtime.cli run'
    assert s["User"] == "kiosk" and s["WorkingDirectory"] == "/srv/my kiosk"
    s = parse_unit(systemd.render_unit("/opt/100%/py", "/opt/$HOME", "/etc/c.yml"))["Service"]
    assert s["ExecStart"].startswith("/opt/100%%/py ") and s["WorkingDirectory"] == "/opt/$HOME"


def test_code_under_home_stays_readable():
    s = parse_unit(systemd.render_unit("/home/pi/storeclerk/.venv/bin/python", "/home/pi/storeclerk", None))["Service"]
    assert s["ProtectHome"] == "read-only"


@pytest.mark.parametrize("user", ["root", "Bad User", "", "x" * 40, "a;b"])
def test_bad_user_refused(user):
    with pytest.raises(ValueError):
        systemd.render_unit("/usr/bin/python3", "/opt/storeclerk", None, user)


def test_multiline_path_refused():
    with pytest.raises(ValueError, match="control"):
        systemd.render_unit("/usr/bin/python3", "/opt/x\nExecStartPre=/bin/rm -rf /", None)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_accepts_the_unit(tmp_path):
    unit = tmp_path / systemd.UNIT_NAME
    unit.write_text(systemd.render_unit(sys.executable, Path(__file__).resolve().parents[2], tmp_path / "kiosk.yml"))
    p = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "Unknown key" not in p.stderr and "Invalid" not in p.stderr, p.stderr


def test_install_service_writes_the_unit(tmp_path, capsys, monkeypatch):
    def no_systemctl(*a, **k):
        raise AssertionError("install_service must not run commands")

    monkeypatch.setattr(subprocess, "run", no_systemctl)
    monkeypatch.setattr(subprocess, "Popen", no_systemctl)
    unit_dir = tmp_path / "units"
    path = systemd.install_service(sys.executable, "/opt/storeclerk", "/etc/storeclerk/kiosk.yml", "storeclerk",
                                   unit_dir=unit_dir)
    assert path == unit_dir / "storeclerk.service" and path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in unit_dir.iterdir()] == ["storeclerk.service"]  # no temporary file left
    s = parse_unit(path.read_text())["Service"]
    assert s["ExecStart"].endswith("run --config /etc/storeclerk/kiosk.yml")
    out = capsys.readouterr().out
    assert f"wrote {path}" in out
    assert "systemctl daemon-reload" in out and "systemctl enable --now storeclerk" in out
    if not systemd.systemd_is_pid1():
        assert "not PID 1" in out
    again = systemd.install_service(sys.executable, "/opt/storeclerk", None, unit_dir=unit_dir)  # overwrite
    assert "--config" not in parse_unit(again.read_text())["Service"]["ExecStart"]


def test_install_service_dry_run_writes_nothing(tmp_path, capsys):
    unit_dir = tmp_path / "units"
    path = systemd.install_service("/opt/sc/.venv/bin/python", "/opt/sc", "/etc/sc.yml", unit_dir=unit_dir, dry_run=True)
    assert path == unit_dir / "storeclerk.service" and not unit_dir.exists()
    out = capsys.readouterr().out
    assert "Type=notify" in out and "dry run" in out and "systemctl enable --now storeclerk" in out


def test_service_commands_create_a_missing_user():
    cmds = systemd.service_commands("storeclerk-test-nobody")
    assert cmds[0][0] == "useradd" and cmds[0][-1] == "storeclerk-test-nobody"
    assert cmds[-1] == ["systemctl", "enable", "--now", "storeclerk"]
    assert systemd.service_commands("root")[0] == ["systemctl", "daemon-reload"]  # root exists everywhere


def test_unwritable_unit_dir_says_what_to_do(tmp_path):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    with pytest.raises(OSError):
        systemd.install_service(sys.executable, "/opt/sc", None, unit_dir=blocked / "units")


def test_device_does_not_import_runtime():
    code = "import sys, device.systemd; bad = [m for m in sys.modules if m == 'runtime' or m.startswith('runtime.')]; print(bad)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stderr
