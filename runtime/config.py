"""The kiosk's configuration: embedded defaults, an optional YAML file, and command-line overrides.

The file is checked against ``SCHEMA`` before anything starts; an error names the file and the key
(``kiosk.yml: session.idle_timeout_s: expected a number > 0, got 'soon'``). Unknown keys are errors too: a
typo that silently falls back to a default is the worst kind of configuration bug on a kiosk nobody watches.
"""

from __future__ import annotations

import copy
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from runtime.errors import ConfigError


def _num(lo: float | None = None, hi: float | None = None, integer: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        kind = "an integer" if integer else "a number"
        ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok_type:
            return f"expected {kind}, got {v!r}"
        if lo is not None and v < lo:
            return f"expected {kind} >= {lo}, got {v!r}"
        if hi is not None and v > hi:
            return f"expected {kind} <= {hi}, got {v!r}"
        return None

    return check


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"expected true or false, got {v!r}"



def _opt_path(v: Any) -> str | None:
    return None if v is None or (isinstance(v, str) and v.strip()) else f"expected a path or null, got {v!r}"


def _opt_source(v: Any) -> str | None:
    if v is None or (isinstance(v, str) and v.strip()):
        return None
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return None
    return f"expected a camera source (a device index like 0, /dev/video0, a file, a folder, rtsp://...) or null, got {v!r}"


def _opt_num(lo: float, hi: float) -> Callable[[Any], str | None]:
    check = _num(lo, hi)

    def opt(v: Any) -> str | None:
        return None if v is None else check(v)

    return opt


def _device(v: Any) -> str | None:
    if v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0) or (isinstance(v, str) and v.strip()):
        return None
    return f"expected an audio device name or index (storeclerk doctor lists them), or null, got {v!r}"


def _host(v: Any) -> str | None:
    if not isinstance(v, str) or not v:
        return f"expected an IP address or host name, got {v!r}"
    if v == "localhost":
        return None
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return f"expected an IP address (e.g. 127.0.0.1) or 'localhost', got {v!r}"
    return None


def _choice(*options: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in options else f"expected one of {', '.join(options)}, got {v!r}"

    return check


def _notifiers(v: Any) -> str | None:
    if not isinstance(v, list):
        return f"expected a list of notifiers, got {v!r}"
    for i, n in enumerate(v):
        if not isinstance(n, Mapping) or n.get("type") not in ("log", "screen", "webhook"):
            return f"item {i}: expected {{type: log|screen|webhook}}, got {n!r}"
        extra = set(n) - {"type", "url", "timeout_s"}
        if extra:
            return f"item {i}: unknown key(s) {', '.join(sorted(extra))}"
        if n["type"] == "webhook":
            url = n.get("url")
            p = urlparse(url) if isinstance(url, str) else None
            if p is None or p.scheme not in ("http", "https") or not p.hostname:
                return f"item {i}: a webhook needs url: http://host:port/path, got {url!r}"
    return None


# key -> (default, check). Nested sections are dicts of the same.
SCHEMA: dict[str, Any] = {
    "server": {
        "host": ("127.0.0.1", _host),
        "port": (8080, _num(0, 65535, integer=True)),
        "max_body_bytes": (16384, _num(256, 10_000_000, integer=True)),
    },
    "bundle": (None, _opt_path),
    "kb_dir": (None, _opt_path),
    "dialogue": (None, _opt_path),
    "state_dir": (None, _opt_path),
    "store_name": (None, _opt_path),
    "session": {
        "idle_timeout_s": (90.0, _num(1, 86400)),
        "max_sessions": (64, _num(1, 100_000, integer=True)),
    },
    "store": {
        "retention_days": (30, _num(1, 3650, integer=True)),
        "store_media": (False, _bool),
    },
    "kb": {
        "watch": (True, _bool),
        "poll_s": (2.0, _num(0.1, 3600)),
    },
    "handoff": {
        "notifiers": ([{"type": "log"}, {"type": "screen"}], _notifiers),
    },
    "loop": {
        "queue_size": (64, _num(1, 100_000, integer=True)),
        "stage_timeout_s": (5.0, _num(0.01, 600)),
    },
    "voice": {
        "enabled": (True, _bool),
        "mode": ("open", _choice("open", "ptt")),  # open: always listening; ptt: only while the button is held
        "microphone": (None, _device),  # PortAudio device name (substring) or index; null: the default
        "speaker": (None, _device),
        "asr": {
            "engine": ("whisper", _choice("whisper", "vosk", "pocketsphinx")),
            "vosk_model": (None, _opt_path),  # a Vosk model directory the operator provisioned (docs/asr-engines.md)
        },
        "captions": (True, _bool),  # live captions from pocketsphinx while the customer talks
        "trailing_silence_ms": (500, _num(100, 3000, integer=True)),
        # start decoding after this much silence, before the end of speech is certain (null: don't)
        "early_decode_ms": (200, _opt_num(100, 3000)),
        "barge_in": (True, _bool),
    },
    "camera": {
        "enabled": (True, _bool),
        # null: no camera. "0" or "/dev/video0" (USB), a video file, an image folder, rtsp://..., or a GStreamer
        # pipeline ending in appsink (the Jetson CSI camera; docs/vision.md). `storeclerk run --camera SOURCE`.
        "source": (None, _opt_source),
        "fps": (10.0, _num(0.5, 60)),
        "products": (True, _bool),  # recognize products held up (needs the bundle's product model)
        "product_every_s": (0.5, _num(0.05, 60)),
        "recognized_cards": (True, _bool),  # show the card of a product recognized without a barcode
        "faces": (True, _bool),  # face presence: wake the page, count visits (no identity, nothing stored)
        "ocr": (True, _bool),  # read an order number off a receipt while the kiosk asks for one
        "view_ttl_s": (20.0, _num(1, 600)),  # how long a sighting stays "this one"
        "repeat_after_s": (3.0, _num(0.5, 600)),  # the same code is answered again only after this long out of view
    },
    "log_level": ("INFO", _choice("DEBUG", "INFO", "WARNING", "ERROR")),
}


def _defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (_defaults(v) if isinstance(v, dict) else copy.deepcopy(v[0])) for k, v in schema.items()}


def _merge(schema: Mapping[str, Any], base: dict[str, Any], over: Any, where: str, prefix: str = "") -> None:
    if not isinstance(over, Mapping):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'the file'}: expected a mapping of keys, got {type(over).__name__}")
    for key, value in over.items():
        path = f"{prefix}{key}"
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(f"{where}: {path}: unknown key (known here: {known})")
        spec = schema[key]
        if isinstance(spec, dict):
            _merge(spec, base[key], value, where, path + ".")
            continue
        problem = spec[1](value)
        if problem:
            raise ConfigError(f"{where}: {path}: {problem}")
        base[key] = value


@dataclass(frozen=True)
class KioskConfig:
    data: Mapping[str, Any]
    source: str = "embedded defaults"

    def get(self, dotted: str) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            node = node[part]
        return node

    def state_dir(self) -> Path:
        """Where the conversation store and order DB live: config, then systemd's $STATE_DIRECTORY, then
        $XDG_STATE_HOME/storeclerk (~/.local/state/storeclerk)."""
        if self.data.get("state_dir"):
            return Path(self.data["state_dir"]).expanduser()
        if os.environ.get("STATE_DIRECTORY"):
            return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "storeclerk"


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> KioskConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides`` (dotted keys from the CLI)."""
    data = _defaults(SCHEMA)
    source = "embedded defaults"
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {p}: {exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{p}:{at}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
        if loaded is not None:
            _merge(SCHEMA, data, loaded, str(p))
        source = str(p)
    for dotted, value in (overrides or {}).items():
        node: dict[str, Any] = {}
        cur = node
        parts = dotted.split(".")
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = value
        _merge(SCHEMA, data, node, "command line")
    return KioskConfig(data, source)


def render_defaults() -> str:
    """The embedded defaults as a commented YAML file (``storeclerk run --print-config``)."""
    return "# storeclerk kiosk configuration (every key is optional; these are the defaults)\n" + yaml.safe_dump(
        _defaults(SCHEMA), sort_keys=False
    )
