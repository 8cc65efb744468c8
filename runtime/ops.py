"""Operator commands: ``run``, ``kb validate``/``kb reload``, ``report``, ``wipe``, ``install-service``."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from runtime.config import load_config, render_defaults
from runtime.errors import ConfigError


def _config(args, **extra):
    overrides = {k: v for k, v in extra.items() if v is not None}
    if getattr(args, "state_dir", None):
        overrides["state_dir"] = args.state_dir
    return load_config(getattr(args, "config", None), overrides)


def cmd_run(args) -> int:
    if args.print_config:
        print(render_defaults(), end="")
        return 0
    overrides = {"server.host": args.host, "server.port": args.port, "bundle": args.model, "kb_dir": args.kb}
    if args.no_voice:
        overrides["voice.enabled"] = False
    if args.no_camera:
        overrides["camera.enabled"] = False
    elif getattr(args, "camera", None) is not None:
        overrides["camera.source"] = args.camera
    cfg = _config(args, **overrides)
    from runtime.app import serve

    return serve(cfg)


def cmd_kb_validate(args) -> int:
    """The KB files and the dialogue file against them (the same checks as start-up and hot reload)."""
    from runtime.app import check_dialogue_against_kb
    from runtime.dialogue import load_dialogue
    from runtime.kb.commands import print_report, validate_report
    from runtime.paths import data_dir

    kb_dir = Path(args.kb or data_dir() / "kb")
    dlg = Path(args.dialogue or data_dir() / "dialogue" / "dialogue.yml")
    spec, dialogue_error = None, None
    try:
        spec = load_dialogue(dlg)
    except ConfigError as exc:
        dialogue_error = exc.message
    rep = validate_report(kb_dir, (lambda kb: check_dialogue_against_kb(spec, kb)) if spec is not None else None)
    rep["dialogue"] = str(dlg)
    if dialogue_error:
        rep["ok"] = False
        rep["errors"].append(dialogue_error)
    return print_report(rep, args.json)


def cmd_kb_reload(args) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{args.port}/admin/kb_reload", b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
    except OSError as exc:
        raise ConfigError(f"no kiosk answering on 127.0.0.1:{args.port} ({exc}); is it running?") from None
    if body.get("reloaded"):
        print(f"reloaded: {body.get('products')} products, {body.get('faqs')} FAQ entries")
        return 0
    print(f"not reloaded; the kiosk keeps its last good knowledge base: {body.get('error') or body}", file=sys.stderr)
    return 1


def cmd_report(args) -> int:
    from runtime.report import run_report

    cfg = _config(args)
    return run_report(cfg.state_dir() / "conversations.sqlite3", Path(args.out), args.days)


def cmd_wipe(args) -> int:
    from runtime.store import run_wipe

    cfg = _config(args)
    db = cfg.state_dir() / "conversations.sqlite3"
    if not db.exists():
        print(f"nothing to wipe: {db} does not exist")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError("refusing to wipe without confirmation: pass --yes")
        if input(f"Delete every stored conversation in {db}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    return run_wipe(db, force=args.force)


def cmd_voice_test(args) -> int:
    from runtime.voice.pipeline import voice_test

    res = voice_test(args.wav, args.out)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"heard: {res['transcript']!r} → {res['intent']} ({res['confidence']:.2f})")
        print(f"reply: {res['reply']}")
        print(f"from the end of speech: endpoint {res['end_of_speech']} ms, transcript {res['asr_final']} ms, "
              f"understood {res['understanding']} ms, first audio {res['first_audio']} ms")
        if res.get("out"):
            print(f"spoken reply written to {res['out']}")
    return 0


def cmd_install_service(args) -> int:
    from device.systemd import install_service

    workdir = Path(__file__).resolve().parent.parent
    cfg = Path(args.config).resolve() if args.config else None
    try:
        install_service(sys.executable, workdir, cfg, args.user, unit_dir=Path(args.unit_dir), dry_run=args.dry_run)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot install the service: {exc} (run as root, or use --dry-run / --unit-dir)") from None
    return 0
