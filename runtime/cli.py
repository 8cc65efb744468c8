"""The ``storeclerk`` command line. Heavy imports (torch, export) happen inside the commands that need them."""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from runtime.errors import StoreclerkError  # noqa: E402

log = logging.getLogger("storeclerk")


def _add_data_args(p: argparse.ArgumentParser, oos: bool = True) -> None:
    p.add_argument("--data", required=True, help="CSV (or Rasa NLU .yml) with labelled utterances")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    if oos:
        p.add_argument("--oos-label", default=None, help="the label that marks out-of-scope rows, e.g. 'oos'")


PASS_THROUGH = ("fusion", "align")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="storeclerk", description="Offline multimodal customer-service kiosk")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="start the kiosk: touchscreen page, HTTP API, dialogue, knowledge base")
    p.add_argument("--config", default=None, help="kiosk config file (YAML); see --print-config for every key")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default 8080)")
    p.add_argument("--model", default=None, help="bundle directory (default: the embedded kiosk bundle)")
    p.add_argument("--kb", default=None, help="knowledge-base directory (default: the demo store in data/kb)")
    p.add_argument("--state-dir", default=None, help="where conversations and orders are stored")
    p.add_argument("--no-voice", action="store_true", help="no microphone or speaker")
    p.add_argument("--camera", default=None, metavar="SOURCE",
                   help="camera: a USB index (0), /dev/videoN, a video file, an image folder, rtsp://..., or a "
                        "GStreamer pipeline ending in appsink (docs/vision.md)")
    p.add_argument("--no-camera", action="store_true", help="no camera")
    p.add_argument("--print-config", action="store_true", help="print the embedded defaults as YAML and exit")

    p = sub.add_parser("kb", help="the store's knowledge base")
    ksub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    k = ksub.add_parser("validate", help="check the KB and dialogue files; errors name file and line")
    k.add_argument("--kb", default=None, help="knowledge-base directory (default: data/kb)")
    k.add_argument("--dialogue", default=None, help="dialogue file (default: data/dialogue/dialogue.yml)")
    k.add_argument("--json", action="store_true")
    k = ksub.add_parser("reload", help="ask the running kiosk to validate and load the KB now")
    k.add_argument("--port", type=int, default=8080)

    p = sub.add_parser("report", help="an HTML report: turns per hour, intents, hand-offs, out-of-scope, latency")
    p.add_argument("--config", default=None)
    p.add_argument("--state-dir", default=None)
    p.add_argument("--days", type=int, default=7, help="period to cover (default: the last 7 days)")
    p.add_argument("--out", default="storeclerk-report.html")

    p = sub.add_parser("wipe", help="delete every stored conversation")
    p.add_argument("--config", default=None)
    p.add_argument("--state-dir", default=None)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--force", action="store_true", help="also delete a damaged store's files (never a non-storeclerk file)")

    p = sub.add_parser("voice-test", help="a WAV through VAD → Whisper → understanding → dialogue → Piper, with latencies")
    p.add_argument("--wav", required=True, help="a recording of one customer question (any rate, mono or stereo)")
    p.add_argument("--out", default=None, help="write the spoken reply here (WAV)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")

    p = sub.add_parser("install-service", help="install the systemd unit (Type=notify, watchdog)")
    p.add_argument("--config", default=None, help="config file the service will use")
    p.add_argument("--user", default="storeclerk")
    p.add_argument("--unit-dir", default="/etc/systemd/system")
    p.add_argument("--dry-run", action="store_true", help="print the unit instead of writing it")

    p = sub.add_parser("chat", help="terminal chat showing intent, confidence, entities, out-of-scope")
    p.add_argument("--model", default=None, help="bundle directory (default: the embedded kiosk bundle)")

    p = sub.add_parser("train", help="train a model and write a bundle")
    tsub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    t = tsub.add_parser("intents", help="fine-tune the intent model on a CSV and export an INT8 bundle")
    _add_data_args(t)
    t.add_argument("--out", required=True, help="bundle directory to write")
    t.add_argument("--epochs", type=int, default=None, help="training epochs (default: by data size)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--precisions", default="int8", help="comma list of fp32,fp16,int8 (default int8)")
    t.add_argument("--keep-checkpoint", default=None, help="also keep the torch checkpoint here (for re-export)")
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--max-in-scope-rejection", type=float, default=0.01,
                   help="out-of-scope threshold: share of in-scope calibration rows it may reject (default 0.01)")

    t = tsub.add_parser("products", help="fine-tune product recognition on Grocery Store photos and export INT8")
    t.add_argument("--data", required=True, help="dataset directory (holds classes.csv; list paths are relative to it)")
    t.add_argument("--list", required=True, help="list file: 'relative/path.jpg, fine_id, coarse_id' per line")
    t.add_argument("--out", required=True, help="bundle directory: the 'products' model is added (or the bundle created)")
    t.add_argument("--arch", choices=("lite0", "compact"), default="lite0",
                   help="lite0: ImageNet EfficientNet-Lite0 (default); compact: small CNN from scratch (ablation)")
    t.add_argument("--epochs", type=int, default=None, help="epochs in all, head-only ones included (default: by arch)")
    t.add_argument("--size", type=int, default=None, help="input resolution (default: lite0 192, compact 160)")
    t.add_argument("--init", default=None, help="initial weights (a product checkpoint or a state dict) instead of ImageNet")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default: by arch)")
    t.add_argument("--head-epochs", type=int, default=2, help="lite0: epochs with the backbone frozen first (default 2)")
    t.add_argument("--holdout", type=float, default=0.1, help="share of each class held out for early stopping (0.1)")
    t.add_argument("--time-budget-min", type=float, default=55.0,
                   help="re-plan the epochs if they would overrun this many minutes (0: never)")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps (smoke runs)")
    t.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    t.add_argument("--precisions", default="int8", help="comma list of fp32,int8 (default int8)")
    t.add_argument("--keep-checkpoint", default=None, help="also keep the torch checkpoint here (python -m export.products)")
    t.add_argument("--max-in-catalog-rejection", type=float, default=0.05,
                   help="open-set threshold: share of held-out catalogue photos it may reject (default 0.05)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    # These two own their options (models/fusion/train.py, models/align/cli.py): everything after the name is theirs.
    for name, what in (("fusion", "the multimodal fusion model (early/late/attention) on composed turns"),
                       ("align", "the image→MiniLM-text projection (CLIP-style) over the product backbone")):
        tsub.add_parser(name, help=f"train {what}; --help for its options", add_help=False)

    p = sub.add_parser("eval", help="evaluate a bundle on labelled data")
    esub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    e = esub.add_parser("intents", help="accuracy, macro-F1, per-class and out-of-scope numbers")
    e.add_argument("--model", default=None, help="bundle directory (default: the embedded kiosk bundle)")
    _add_data_args(e)
    e.add_argument("--json", action="store_true", help="one JSON object on stdout")

    e = esub.add_parser("products", help="fine/coarse accuracy, open-set rate and latency of the product model")
    e.add_argument("--model", default=None, help="bundle directory (default: the embedded kiosk bundle)")
    e.add_argument("--data", required=True, help="dataset directory (holds classes.csv)")
    e.add_argument("--list", required=True, help="list file, e.g. val.txt")
    e.add_argument("--json", action="store_true", help="one JSON object on stdout")

    for name, what in (("fusion", "the fusion variants on the composed test split, every modality subset"),
                       ("align", "image→text and text→image recall@1/@5 on val, descriptive queries")):
        esub.add_parser(name, help=f"evaluate {what}; --help for its options", add_help=False)

    p = sub.add_parser("export", help="workstation stage: torch checkpoint → ONNX → INT8/FP16 → verified bundle")
    xsub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    x = xsub.add_parser("intents", help="export an intent checkpoint (see train --keep-checkpoint)")
    x.add_argument("--checkpoint", required=True)
    x.add_argument("--out", required=True)
    x.add_argument("--precisions", default="int8,fp16")
    x.add_argument("--opset", type=int, default=17)
    x.add_argument("--name", default="intents")
    x.add_argument("--max-in-scope-rejection", type=float, default=0.01)

    p = sub.add_parser("bench", help="benchmarks")
    bsub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    b = bsub.add_parser("text", help="torch fp32 vs ONNX Runtime fp32 vs INT8, batch 1 and 32, accuracy")
    b.add_argument("--json", action="store_true")
    b.add_argument("--checkpoint", default=None, help="intent checkpoint (default: the kiosk one, built if missing)")
    b.add_argument("--repeats", type=int, default=200)

    p = sub.add_parser("doctor", help="check models, bundle hashes, providers, versions")
    p.add_argument("--model", default=None)
    p.add_argument("--camera", default=None, metavar="SOURCE", help="also open this camera source and take a frame")
    p.add_argument("--json", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "what", None) in PASS_THROUGH and args.command in ("train", "eval"):
        args.rest = rest  # their own parsers read these (and print their own --help)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    # Libraries (onnxruntime's quantiser among them) log chatter on the root logger: only warnings from them.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("storeclerk").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from runtime import commands

    handler = getattr(commands, f"cmd_{args.command}_{getattr(args, 'what', '')}".rstrip("_").replace("-", "_"))
    try:
        return int(handler(args) or 0)
    except StoreclerkError as exc:
        print(f"storeclerk: error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
