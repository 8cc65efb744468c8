"""Vision benchmarks at the kiosk's camera size (640x480): barcode/QR decode rate, OCR latency, face cascade time.

    python bench/vision_bench.py [--frames 240] [--ocr-runs 10] [--threads 2] [--json out.json]

Frames are built here from the catalog's product photos (data/kb/images) with codes pasted in at varying
angle, scale, blur and noise, half of them without any code (the common case: nobody is holding anything
up). Decode rate is 1 / median time per frame over every frame, after a warm-up; medians, so a busy shared
machine's outliers do not decide the number. The budget (DESIGN.md §6) is >= 30 frames/s for barcodes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import zxingcpp  # noqa: E402

from runtime.vision import FaceDetector, OcrReader, decode, load_image  # noqa: E402

KB = REPO / "data" / "kb"


def paste(bg: np.ndarray, code: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = code.shape
    s = float(rng.uniform(0.8, 1.4))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-25, 25)), s)
    nw = nh = int(1.5 * max(w, h) * s)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    patch = cv2.warpAffine(code, m, (nw, nh), borderValue=255)
    mask = cv2.warpAffine(np.full_like(code, 255), m, (nw, nh), flags=cv2.INTER_NEAREST) > 0
    x, y = int(rng.integers(0, 640 - nw)), int(rng.integers(0, 480 - nh))
    out = bg.copy()
    out[y : y + nh, x : x + nw][mask] = patch[mask][:, None]
    out = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(0.3, 1.0)))
    return np.clip(out + rng.normal(0, 5, out.shape), 0, 255).astype(np.uint8)


def frames(n: int) -> tuple[list[np.ndarray], list[str | None]]:
    rng = np.random.default_rng(0)
    with open(KB / "catalog.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(KB / "orders.csv", newline="", encoding="utf-8") as f:
        orders = [r["order_id"] for r in csv.DictReader(f)]
    imgs, truth = [], []
    for i in range(n):
        row = rows[i % len(rows)]
        bg = cv2.resize(load_image(KB / "images" / row["image"]), (640, 480))
        if i % 2:
            imgs.append(bg)
            truth.append(None)
            continue
        if i % 4 == 0:
            content, fmt, scale = row["ean13"], zxingcpp.BarcodeFormat.EAN13, 2
        else:
            content, fmt, scale = f"Order #{orders[i % len(orders)]}", zxingcpp.BarcodeFormat.QRCode, 4
        code = np.asarray(zxingcpp.write_barcode_to_image(zxingcpp.create_barcode(content, fmt), scale=scale))
        imgs.append(paste(bg, code, rng))
        truth.append(content)
    return imgs, truth


def time_each(fn, items, warmup: int = 5) -> list[float]:
    for it in items[:warmup]:
        fn(it)
    out = []
    for it in items:
        t0 = time.perf_counter()
        fn(it)
        out.append(time.perf_counter() - t0)
    return out


def ms(xs: list[float]) -> float:
    return round(1000 * statistics.median(xs), 2)


def p90(xs: list[float]) -> float:
    return round(1000 * sorted(xs)[int(0.9 * (len(xs) - 1))], 2)


def receipt(order_id: str) -> np.ndarray:
    img = np.full((480, 640, 3), (70, 90, 80), np.uint8)
    cv2.rectangle(img, (60, 10), (580, 470), (238, 240, 242), -1)
    for i, t in enumerate(["FRESH MARKET", "Store 0042  Tel 415-555-0132", "2026-11-20  14:32", f"Order # {order_id}",
                           "1 x Tropicana Apple Juice   2.49", "3 x Banana   1.29", "TOTAL EUR   6.27"]):
        cv2.putText(img, t, (80, 60 + 58 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.75, (25, 25, 25), 2, cv2.LINE_AA)
    return img


def phone(order_id: str) -> np.ndarray:
    img = np.full((480, 640, 3), (32, 30, 28), np.uint8)
    cv2.putText(img, "Your order", (180, 170), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (200, 200, 200), 2, cv2.LINE_AA)
    cv2.putText(img, order_id, (180, 225), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2, cv2.LINE_AA)
    return img


def drawn_face() -> np.ndarray:
    img = np.full((480, 640), 120, np.uint8)
    cv2.ellipse(img, (320, 240), (80, 105), 0, 0, 360, 200, -1)
    for dx in (-35, 35):
        cv2.ellipse(img, (320 + dx, 205), (30, 8), 0, 0, 360, 70, -1)
        cv2.ellipse(img, (320 + dx, 225), (20, 10), 0, 0, 360, 40, -1)
    cv2.rectangle(img, (312, 230), (328, 270), 215, -1)
    cv2.ellipse(img, (320, 275), (20, 6), 0, 0, 360, 120, -1)
    cv2.ellipse(img, (320, 300), (35, 10), 0, 0, 360, 60, -1)
    return cv2.cvtColor(cv2.GaussianBlur(img, (0, 0), 3), cv2.COLOR_GRAY2BGR)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=240, help="barcode frames (>= 200)")
    ap.add_argument("--ocr-runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="OpenCV/ONNX Runtime threads (default: theirs)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        cv2.setNumThreads(args.threads)

    imgs, truth = frames(max(200, args.frames))
    decoded = [decode(im) for im in imgs]
    found = sum(1 for d, t in zip(decoded, truth, strict=True) if t is not None and any(c.text == t for c in d))
    false_reads = sum(1 for d, t in zip(decoded, truth, strict=True) if t is None and d)
    t_all = time_each(decode, imgs)
    t_code = [t for t, tr in zip(t_all, truth, strict=True) if tr is not None]
    t_none = [t for t, tr in zip(t_all, truth, strict=True) if tr is None]
    t_fast = time_each(lambda im: decode(im, try_harder=False), imgs)

    ocr = OcrReader(threads=args.threads)
    t0 = time.perf_counter()
    ocr.load()
    ocr_load = time.perf_counter() - t0
    oid = "00004587345"
    ocr_ok = {"receipt": ocr.find_order_ids(receipt(oid)) == [oid], "phone": ocr.find_order_ids(phone(oid)) == [oid]}
    t_receipt = time_each(ocr.read_text, [receipt(oid)] * args.ocr_runs, warmup=1)
    t_phone = time_each(ocr.read_text, [phone(oid)] * args.ocr_runs, warmup=1)

    det = FaceDetector().load()
    t_face = time_each(det.detect, [drawn_face()] * 60)
    t_noface = time_each(det.detect, imgs[1::2][:60])

    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu, load {os.getloadavg()[0]:.1f}",
        "opencv": cv2.__version__, "zxing_cpp": getattr(zxingcpp, "__version__", "3.x"),
        "barcode": {
            "frames": len(imgs), "with_code": len(t_code), "found": found, "false_reads": false_reads,
            "median_ms": ms(t_all), "p90_ms": p90(t_all), "fps": round(1 / statistics.median(t_all), 1),
            "median_ms_with_code": ms(t_code), "median_ms_without": ms(t_none),
            "fast_median_ms": ms(t_fast), "fast_fps": round(1 / statistics.median(t_fast), 1),
        },
        "ocr": {"load_s": round(ocr_load, 2), "receipt_median_ms": ms(t_receipt), "phone_median_ms": ms(t_phone),
                "found_order_id": ocr_ok},
        "face": {"with_face_median_ms": ms(t_face), "without_median_ms": ms(t_noface),
                 "found_drawn_face": len(det.detect(drawn_face())) == 1},
    }
    b, o, f = res["barcode"], res["ocr"], res["face"]
    rows = [
        ("barcode/QR decode, 640x480 (all frames)", f"{b['median_ms']} ms", f"{b['fps']} fps (target >= 30)"),
        ("  frames with a code / without", f"{b['median_ms_with_code']} / {b['median_ms_without']} ms",
         f"found {b['found']}/{b['with_code']}, false reads {b['false_reads']}"),
        ("  try_harder=False", f"{b['fast_median_ms']} ms", f"{b['fast_fps']} fps"),
        ("OCR load", f"{o['load_s']} s", ""),
        ("OCR receipt (7 lines), 640x480", f"{o['receipt_median_ms']} ms", f"order id found: {ocr_ok['receipt']}"),
        ("OCR phone screen (2 lines), 640x480", f"{o['phone_median_ms']} ms", f"order id found: {ocr_ok['phone']}"),
        ("face cascade, with a face / without", f"{f['with_face_median_ms']} / {f['without_median_ms']} ms",
         f"drawn face found: {f['found_drawn_face']}"),
    ]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    print(f"vision bench ({res['machine']}; opencv {res['opencv']})")
    for a, bb, c in rows:
        print(f"  {a:<{w0}}  {bb:>{w1}}  {c}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
