"""Deictic questions with a product in view ("is this gluten-free?", "how much is it?"), through the whole kiosk.

For each photo of the Grocery Store **val** split (photos the product model never trained on), the photo goes
through the kiosk's vision stage as camera frames (Perception → VisionStage.handle: the real product model, its
open-set rule, the steadiness rule), then questions from ``data/eval/deictic_questions.csv`` (written for this
benchmark, never used in training) are asked as typed turns in the same session. Each answer is scored:

* **right**: the answer's product card is the photo's product;
* **wrong**: it is another product (the harmful case);
* **declined**: no product answer ("I don't recognize this product…", a clarification): the customer is asked
  to scan the barcode or name it — slower, not wrong.

When the kiosk is unsure of a recognized product it asks "Is this X?" first; the simulated customer answers
truthfully ("yes" when X is the photo's product), and the answer that follows is scored (``asked_to_confirm``
counts these extra taps).

Two conditions: ``recognized`` (the photo alone) and ``barcode`` (the same photo with the product's EAN-13
pasted on, as when the customer turns the pack to the camera). Prints a summary table, writes JSON.

    python bench/deictic_eval.py [--data ../shared/data/grocery/dataset] [--per-photo 3] [--out bench/results/deictic.json]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED = Path(os.environ.get("STORECLERK_SHARED_DATA", REPO.parent / "shared" / "data"))


def load_questions(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["question"], r["asks"]) for r in csv.DictReader(f)]


def with_barcode(image, ean13: str):
    import cv2
    import numpy as np
    import zxingcpp

    code = np.asarray(zxingcpp.write_barcode_to_image(zxingcpp.create_barcode(ean13, zxingcpp.BarcodeFormat.EAN13), scale=2))
    shot = cv2.resize(image, (640, 480))
    h, w = code.shape
    shot[300:300 + h, 40:40 + w] = code[:, :, None]
    return shot


async def evaluate(parts, photos, questions, per_photo: int, seed: int, condition: str, progress) -> list[dict]:
    from runtime.vision.perception import Perception
    from runtime.vision.products import ProductRecognizer
    from runtime.vision.stage import VisionStage

    kiosk = parts.kiosk
    kb = parts.services.kb
    recognizer = ProductRecognizer(kiosk.classifier.engine)
    rng = random.Random(seed)
    rows = []
    for i, (image, truth) in enumerate(photos):
        sid = f"{condition[:3]}-{i}"
        await kiosk.start_session(sid)
        per = Perception(kb, parts.services.orders, recognizer=recognizer, product_every_s=0.0)
        stage = VisionStage(kiosk, SimpleNamespace(health=SimpleNamespace(state="ok", source="bench", reconnects=0,
                                                                          last_error=None)), per)
        stage.attach(sid)
        frame = with_barcode(image, kb.product(truth).ean13) if condition == "barcode" else image
        for _ in range(2):  # held steady for two model runs, as the kiosk requires
            await stage.handle(per.step(SimpleNamespace(image=frame, ts=time.monotonic())))
        seen = kiosk.sessions.get(sid).in_view
        for q, asks in rng.sample(questions, per_photo):
            reply = await kiosk.turn(sid, q)
            confirmed = None
            st = kiosk.sessions.get(sid)
            if st is not None and st.pending and st.pending.get("kind") == "confirm_product":
                # "Is this X?": the simulated customer answers truthfully, then the kiosk answers (or asks to scan)
                confirmed = st.pending["product"] == truth
                reply = await kiosk.turn(sid, "yes" if confirmed else "no")
            products = [c.get("id") for c in reply.cards if c.get("type") == "product"]
            outcome = "declined" if not products else "right" if products[0] == truth else "wrong"
            rows.append({"condition": condition, "truth": truth, "seen": getattr(seen, "value", None),
                         "seen_kind": getattr(seen, "kind", None), "question": q, "asks": asks, "intent": reply.intent,
                         "outcome": outcome, "answered": products[0] if products else None, "confirmed": confirmed})
        await kiosk.end_session(sid, "done")
        progress(1)
    return rows


def summarize(rows: list[dict]) -> dict:
    out: dict = {}
    by = defaultdict(list)
    for r in rows:
        by[r["condition"]].append(r)
    for cond, rs in by.items():
        c = Counter(r["outcome"] for r in rs)
        n = len(rs)
        answered = c["right"] + c["wrong"]
        per_kind = {}
        for kind in sorted({r["asks"] for r in rs}):
            k = [r for r in rs if r["asks"] == kind]
            kc = Counter(r["outcome"] for r in k)
            per_kind[kind] = {"n": len(k), "right": kc["right"] / len(k), "wrong": kc["wrong"] / len(k)}
        seen = Counter(r["seen_kind"] for r in rs)
        right_seen = sum(1 for r in rs if r["seen"] == r["truth"])
        out[cond] = {"n": n, "right": c["right"] / n, "wrong": c["wrong"] / n, "declined": c["declined"] / n,
                     "right_when_answered": c["right"] / answered if answered else None,
                     "view_right": right_seen / n, "view_unknown": seen["unknown"] / n, "per_question_kind": per_kind,
                     "text_misses": sum(1 for r in rs if r["seen"] == r["truth"] and r["outcome"] != "right") / n,
                     "asked_to_confirm": sum(1 for r in rs if r.get("confirmed") is not None) / n}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED / "grocery" / "dataset")
    ap.add_argument("--list", default="val.txt")
    ap.add_argument("--questions", type=Path, default=REPO / "data" / "eval" / "deictic_questions.csv",
                    help="question file (question,asks), relative to the repository or absolute")
    ap.add_argument("--per-photo", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0, help="photos to use (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "deictic.json")
    args = ap.parse_args(argv)

    import cv2
    from tqdm import tqdm

    from runtime.app import build
    from runtime.config import load_config

    lines = [ln.split(",") for ln in (args.data / args.list).read_text().splitlines() if ln.strip()]
    if args.limit:
        lines = random.Random(args.seed).sample(lines, min(args.limit, len(lines)))
    questions = load_questions(args.questions)
    with tempfile.TemporaryDirectory() as state:
        overrides = {"state_dir": state, "kb.watch": False}
        if args.bundle:
            overrides["bundle"] = args.bundle
        parts = build(load_config(None, overrides))
        by_fine = {p.fine_id: p.id for p in parts.services.kb.products}
        photos = []
        for rel, fine, _ in lines:
            img = cv2.imread(str(args.data / rel.strip()))
            if img is None:
                raise SystemExit(f"cannot read {args.data / rel.strip()}")
            photos.append((img, by_fine[int(fine)]))

        async def go():
            await parts.kiosk.start()
            rows = []
            try:
                for cond in ("recognized", "barcode"):
                    with tqdm(total=len(photos), desc=f"deictic ({cond})", unit="photo") as bar:
                        rows += await evaluate(parts, photos, questions, args.per_photo, args.seed, cond, bar.update)
            finally:
                await parts.kiosk.stop()
            return rows

        rows = asyncio.run(go())
    summary = summarize(rows)
    qfile = str(args.questions.resolve().relative_to(REPO))
    result = {"photos": len(photos), "questions_per_photo": args.per_photo, "question_file": qfile,
              "split": args.list, "summary": summary, "wrong_examples": [r for r in rows if r["outcome"] == "wrong"][:20],
              "declined_examples": [r for r in rows if r["outcome"] == "declined" and r["seen"] == r["truth"]][:20]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\n{'condition':<11} {'n':>5} {'right':>7} {'wrong':>7} {'declined':>9} {'right|answered':>15} {'view right':>11}")
    for cond, s in summary.items():
        rwa = f"{s['right_when_answered']:.1%}" if s["right_when_answered"] is not None else "-"
        print(f"{cond:<11} {s['n']:>5} {s['right']:>7.1%} {s['wrong']:>7.1%} {s['declined']:>9.1%} {rwa:>15} {s['view_right']:>11.1%}")
    print(f"(written to {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
