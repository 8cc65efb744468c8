"""systemd integration: ``sd_notify`` (READY, STATUS, WATCHDOG, STOPPING), the watchdog loop, the unit file and
``storeclerk install-service``.

The notify protocol is small enough to speak directly (no libsystemd binding): one AF_UNIX datagram of
newline-separated ``KEY=VALUE`` lines to the socket named by ``$NOTIFY_SOCKET``; a leading ``@`` means a
Linux abstract socket. Outside systemd the variable is unset and every call is a no-op that returns False, so
the kiosk calls these unconditionally.

This module imports nothing from ``runtime`` (DESIGN: ``device`` depends on no other package of ours); its
errors are ``ValueError`` (bad arguments) and ``OSError`` (cannot write the unit), for the CLI to report.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import pwd
import re
import shlex
import socket
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path

from device.fsutil import atomic_write_text

log = logging.getLogger(__name__)

UNIT_NAME = "storeclerk.service"
SERVICE = "storeclerk"
TEMPLATE = Path(__file__).with_name("storeclerk.service")
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
STATE_DIR = Path("/var/lib/storeclerk")  # StateDirectory=storeclerk
CACHE_DIR = Path("/var/cache/storeclerk")  # CacheDirectory=storeclerk
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_HOME_PREFIXES = ("/home/", "/root/", "/run/user/")

# ----------------------------------------------------------------------------------------------- sd_notify


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # e.g. "vsock:..." (systemd 253+ for VMs): not used on a kiosk


def notify(state: str) -> bool:
    """Send ``state`` (``"READY=1"``, ``"WATCHDOG=1"``, ``"STATUS=..."``; several lines allowed) to systemd.
    Returns True if the datagram was sent; False, without raising, when not under systemd or on any error."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target or not isinstance(state, str) or not state:
        return False
    addr = _address(target)
    if addr is None:
        log.debug("NOTIFY_SOCKET=%s is not a Unix socket; notification %r not sent", target, state)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            sock.sendall(state.encode("utf-8", "replace"))
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", target, exc)
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def ready(status: str | None = None) -> bool:
    """The service is up (Type=notify: systemd considers the start complete)."""
    return notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))


def stopping(status: str | None = None) -> bool:
    """The service is shutting down."""
    return notify("STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))


def status(text: str) -> bool:
    """Free-form status line shown by ``systemctl status``."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog() -> bool:
    """One watchdog keep-alive."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """The watchdog period in seconds (``WatchdogSec=``), or None when the watchdog is off or meant for
    another process (``$WATCHDOG_PID`` set to a different pid)."""
    raw = os.environ.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000


async def watchdog_loop(is_healthy: Callable[[], bool | Awaitable[bool]], interval: float | None = None) -> None:
    """Send WATCHDOG=1 every half watchdog period while ``is_healthy()`` is true; returns at once when there is
    no watchdog. A failing health check counts as unhealthy: systemd then kills and restarts the kiosk after
    ``WatchdogSec``, and so it does when the event loop itself is stuck (this coroutine cannot run).
    ``interval`` overrides ``watchdog_interval()`` (tests). Runs until cancelled."""
    period = watchdog_interval() if interval is None else interval
    if not period or period <= 0:
        return
    was_healthy = True
    while True:
        await asyncio.sleep(period / 2)
        try:
            result = is_healthy()
            if inspect.isawaitable(result):
                result = await result
            healthy = bool(result)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("health check failed; withholding the watchdog keep-alive")
            healthy = False
        if healthy:
            watchdog()
        if healthy != was_healthy:
            if healthy:
                log.info("healthy again; watchdog keep-alives resumed")
                status("serving")
            else:
                log.error("unhealthy: withholding watchdog keep-alives; systemd restarts the kiosk after %.0f s", period)
                status("unhealthy: watchdog keep-alives withheld")
        was_healthy = healthy


# ---------------------------------------------------------------------------------------------- unit file


def _check_text(value: str, what: str) -> str:
    if not value or any(ord(c) < 32 or c == "\x7f" for c in value):
        raise ValueError(f"{what} must be non-empty and contain no control characters or newlines: {value!r}")
    return value


def _unit_value(value: str) -> str:
    """A value for a plain ``Key=`` line: ``%`` is systemd's specifier character."""
    return value.replace("%", "%%")


def _exec_arg(value: str) -> str:
    """One argument of ``ExecStart=``: specifiers and variables escaped, quoted if it has spaces or quotes."""
    v = value.replace("%", "%%").replace("$", "$$")
    if any(c in v for c in " \t\"'\\;"):
        v = '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return v


def _abs(path: str | Path, what: str) -> Path:
    p = Path(_check_text(str(path), what)).expanduser()
    return p if p.is_absolute() else Path.cwd() / p  # not resolve(): a venv's python is a symlink on purpose


def _check_user(user: str) -> str:
    if not isinstance(user, str) or not _USER_RE.fullmatch(user):
        raise ValueError(f"user {user!r} is not a valid system user name (lower case letters, digits, _ and -)")
    if user == "root":
        raise ValueError("the kiosk runs as a dedicated unprivileged user, not root (the default is 'storeclerk')")
    return user


def render_unit(python: str | Path, workdir: str | Path, config: str | Path | None, user: str = SERVICE,
                *, group: str | None = None) -> str:
    """The unit file for these paths and user, from ``device/storeclerk.service``."""
    py, wd = _abs(python, "python"), _abs(workdir, "workdir")
    cfg = _abs(config, "config") if config is not None else None
    user = _check_user(user)
    group = _check_user(group) if group else user
    exec_start = " ".join(_exec_arg(a) for a in [str(py), "-m", "runtime.cli", "run", *(["--config", str(cfg)] if cfg else [])])
    under_home = any(str(p).startswith(_HOME_PREFIXES) for p in (py, wd, cfg) if p is not None)
    return TEMPLATE.read_text(encoding="utf-8").format(
        python=_unit_value(str(py)),
        workdir=_unit_value(str(wd)),
        exec_start=exec_start,
        user=user,
        group=group,
        # The code (or its venv) under /home must stay readable; prefer /opt/storeclerk (docs/operations.md).
        protect_home="read-only" if under_home else "yes",
        state_dir=STATE_DIR,
        cache_dir=CACHE_DIR,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def systemd_is_pid1() -> bool:
    """True when systemd runs this machine (``sd_booted()``): not in most containers or chroots."""
    return os.path.isdir("/run/systemd/system")


def service_commands(user: str = SERVICE) -> list[list[str]]:
    """What an administrator runs after the unit is written (the user is created only if missing)."""
    cmds: list[list[str]] = []
    try:
        pwd.getpwnam(user)
    except KeyError:
        cmds.append(["useradd", "--system", "--user-group", "--home-dir", str(STATE_DIR), "--no-create-home",
                     "--shell", "/usr/sbin/nologin", user])
    cmds += [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", SERVICE]]
    return cmds


def install_service(python: str | Path, workdir: str | Path, config: str | Path | None, user: str = SERVICE,
                    unit_dir: Path = SYSTEM_UNIT_DIR, dry_run: bool = False) -> Path:
    """``storeclerk install-service``: render the unit and write ``unit_dir/storeclerk.service`` (mode 0644,
    atomically); with ``dry_run`` print it and write nothing. Returns the unit's path; prints the commands to
    run next (``service_commands``). It never runs systemctl itself: on a machine where systemd is not PID 1
    (a container, a chroot, an image being built) they could not work, and it says so.

    Raises ``ValueError`` for a bad argument (root, a relative or multi-line path) and ``PermissionError`` /
    ``OSError`` when the unit cannot be written (the system unit folder needs root)."""
    text = render_unit(python, workdir, config, user)
    path = Path(unit_dir) / UNIT_NAME
    if dry_run:
        print(f"# {path} (dry run: nothing written)")
        print(text, end="")
    else:
        if not Path(python).exists():
            raise ValueError(f"python {python} does not exist")
        try:
            atomic_write_text(path, text)
        except PermissionError as exc:
            raise PermissionError(f"cannot write {path}: {exc.strerror}. Run install-service as root (sudo), "
                                  "or pass --unit-dir to write the unit elsewhere.") from exc
        print(f"wrote {path}")
    cmds = service_commands(user)
    if not systemd_is_pid1():
        print("systemd is not running this machine (not PID 1: a container or chroot?), so nothing was started. "
              "On the kiosk itself, run:")
    else:
        print("to enable and start the kiosk, run:")
    for c in cmds:
        print("  sudo " + shlex.join(c))
    return path


__all__ = [
    "install_service",
    "notify",
    "ready",
    "render_unit",
    "service_commands",
    "status",
    "stopping",
    "systemd_is_pid1",
    "watchdog",
    "watchdog_interval",
    "watchdog_loop",
]


if __name__ == "__main__":  # python -m device.systemd: print the unit for this checkout
    print(render_unit(sys.executable, Path(__file__).resolve().parent.parent, None), end="")
