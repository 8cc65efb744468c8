"""Barcodes and QR codes in camera frames (zxing-cpp), and what they mean to the store.

    codes = decode(frame)                          # [Code(format="EAN-13", text="2142000000005", position=...)]
    hit = resolve(codes[0], kb, orders)            # ProductCode(product=...) | OrderCode(order_id=...) | UnknownCode(reason=...)

Only the formats a grocery kiosk meets are searched (EAN-13, EAN-8, UPC-A on products; QR, Code 128 and
Data Matrix on receipts and phone screens): fewer formats is both faster and fewer false reads.

A payload is data a stranger printed. It is never executed, evaluated, opened as a URL or used as a path:
``decode`` caps it (``MAX_PAYLOAD_CHARS``), strips control and invisible formatting characters (terminal
escapes, NULs, bidi overrides that make text display differently from what it is) and flags binary
payloads; ``resolve`` only ever compares it with catalog EANs and passes it to
``runtime.orders.normalize_id``, which accepts nothing but a 6-15 digit order number.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from runtime.orders import normalize_id
from runtime.vision.images import as_gray

__all__ = [
    "FORMATS",
    "MAX_PAYLOAD_CHARS",
    "Code",
    "OrderCode",
    "ProductCode",
    "UnknownCode",
    "clean_payload",
    "decode",
    "resolve",
]

MAX_PAYLOAD_CHARS = 256  # an order QR needs ~30; a QR can carry ~3 KB, none of which the kiosk has use for

# zxing-cpp format name -> the name used in events, logs and the API
FORMATS = {
    "EAN13": "EAN-13",
    "EAN8": "EAN-8",
    "UPCA": "UPC-A",
    "QRCode": "QR",
    "Code128": "Code128",
    "DataMatrix": "DataMatrix",
}
# formats whose payload is free text that may carry an order number (receipts print them as Code 128 too)
_TEXT_FORMATS = frozenset({"QR", "Code128", "DataMatrix"})
_RETAIL_FORMATS = frozenset({"EAN-13", "UPC-A", "EAN-8"})


@dataclass(frozen=True)
class Code:
    """One decoded code. ``text`` is the cleaned payload, ``position`` its four corners (top-left,
    top-right, bottom-right, bottom-left) in frame pixels. ``binary``: zxing found non-text bytes;
    ``truncated``: the payload was longer than ``MAX_PAYLOAD_CHARS``."""

    format: str
    text: str
    position: tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]
    binary: bool = False
    truncated: bool = False

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Axis-aligned (x, y, w, h) around the corners."""
        xs = [p[0] for p in self.position]
        ys = [p[1] for p in self.position]
        return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


@dataclass(frozen=True)
class ProductCode:
    code: Code
    product: Any  # runtime.kb.Product
    kind: str = "product"


@dataclass(frozen=True)
class OrderCode:
    """``order`` is what ``order_lookup`` returned (None when it found nothing or none was given): the
    dialogue can still say "I can't find order 123456" with the id."""

    code: Code
    order_id: str
    order: Any = None  # runtime.orders.Order | None
    kind: str = "order"


@dataclass(frozen=True)
class UnknownCode:
    """A code the store has no meaning for; ``reason`` is short and fit for logs (never shown raw)."""

    code: Code
    reason: str
    kind: str = "unknown"


_STRIP_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


def clean_payload(raw: str | bytes, max_chars: int = MAX_PAYLOAD_CHARS) -> tuple[str, bool]:
    """``(text, truncated)``: ``raw`` decoded (bytes as UTF-8, bad bytes replaced), NFC-normalised, control,
    format, private-use and unassigned characters removed, whitespace runs collapsed to one space, and cut
    to ``max_chars``."""
    truncated = False
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw)
        if len(raw) > 4 * max_chars:  # 4 bytes: the longest UTF-8 character, so no kept character is cut off
            raw, truncated = raw[: 4 * max_chars], True
        raw = raw.decode("utf-8", errors="replace")
    elif len(raw) > 4 * max_chars:
        raw, truncated = raw[: 4 * max_chars], True  # bounded work below, whatever was handed in
    text = unicodedata.normalize("NFC", raw)
    text = "".join(" " if ch in "\t\n\r\v\f" else ch for ch in text if ch in "\t\n\r\v\f"
                   or unicodedata.category(ch) not in _STRIP_CATEGORIES)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > max_chars:
        text, truncated = text[:max_chars], True
    return text, truncated


_reader_opts: dict[str, Any] | None = None


def _zxing() -> tuple[Any, dict[str, Any]]:
    global _reader_opts
    import zxingcpp

    if _reader_opts is None:
        fmt = zxingcpp.BarcodeFormat
        _reader_opts = {
            "formats": tuple(getattr(fmt, name) for name in FORMATS),
            # Plain: the payload's own characters; HRI would spell control bytes as "<NUL>", hiding them from clean_payload
            "text_mode": zxingcpp.TextMode.Plain,
        }
    return zxingcpp, _reader_opts


def decode(frame: Any, *, try_harder: bool = True) -> list[Code]:
    """Every supported code in ``frame`` (BGR/gray uint8 array or a camera ``Frame``), each once.

    ``try_harder`` (default) also searches rotated, downscaled and inverted (light-on-dark, as on a phone in
    dark mode) versions: ~5-8 ms at 640x480 here, ~2 ms without. Raises ``InputError`` for an unusable frame.
    """
    gray = as_gray(frame)
    zxingcpp, opts = _zxing()
    found = zxingcpp.read_barcodes(gray, try_rotate=try_harder, try_downscale=try_harder, try_invert=try_harder, **opts)
    out: list[Code] = []
    seen: set[tuple[str, str]] = set()
    for bc in found:
        name = FORMATS.get(bc.format.name)
        if name is None:  # zxing only returns what was asked for; a newer one might map names differently
            continue
        binary = bc.content_type == zxingcpp.ContentType.Binary
        text, truncated = clean_payload(bytes(bc.bytes) if binary else bc.text)
        if (name, text) in seen:
            continue
        seen.add((name, text))
        p = bc.position
        corners = tuple((int(pt.x), int(pt.y)) for pt in (p.top_left, p.top_right, p.bottom_right, p.bottom_left))
        out.append(Code(name, text, corners, binary=binary, truncated=truncated))  # type: ignore[arg-type]
    return out


def _ean_index(kb_products: Any) -> Callable[[str], Any]:
    if kb_products is None:
        return lambda _ean: None
    by_ean = getattr(kb_products, "by_ean", None)
    if callable(by_ean):  # a runtime.kb.KnowledgeBase
        return by_ean
    if isinstance(kb_products, dict):
        return kb_products.get
    if isinstance(kb_products, Iterable):
        index = {str(getattr(p, "ean13", "")): p for p in kb_products}
        return index.get
    raise TypeError(f"kb_products must be a KnowledgeBase, a dict by EAN-13 or Products, not {type(kb_products).__name__}")


def _order_getter(order_lookup: Any) -> Callable[[str], Any] | None:
    if order_lookup is None:
        return None
    get = getattr(order_lookup, "get", None)  # a runtime.orders.OrderSource
    if callable(get) and not isinstance(order_lookup, dict):
        return get
    if isinstance(order_lookup, dict):
        return order_lookup.get
    if callable(order_lookup):
        return order_lookup
    raise TypeError(f"order_lookup must be an OrderSource or a callable, not {type(order_lookup).__name__}")


def resolve(code: Code, kb_products: Any = None, order_lookup: Any = None) -> ProductCode | OrderCode | UnknownCode:
    """What ``code`` means here.

    * EAN-13 / UPC-A (12 digits, read as EAN-13 with a leading 0) / EAN-8: the catalog product with that
      ``ean13``, from ``kb_products`` (a ``KnowledgeBase``, a dict keyed by EAN-13, or an iterable of
      ``Product``), else unknown ``not in catalog``.
    * QR, Code 128, Data Matrix: the order number in the payload (``runtime.orders.normalize_id``: only
      6-15 digits, optionally after "Order #"), looked up with ``order_lookup`` (an ``OrderSource``, or a
      callable id -> Order | None) when given; else unknown.
    * anything else (binary, truncated, URLs, text with no order number): ``UnknownCode`` with the reason.
    """
    if code.binary:
        return UnknownCode(code, "binary payload")
    if code.truncated:
        return UnknownCode(code, "payload too long")
    if code.format in _RETAIL_FORMATS:
        digits = code.text
        if not digits.isdigit() or len(digits) not in (8, 12, 13):
            return UnknownCode(code, "malformed retail code")
        lookup = _ean_index(kb_products)
        product = lookup(digits)
        if product is None and len(digits) == 12:
            product = lookup("0" + digits)
        return ProductCode(code, product) if product is not None else UnknownCode(code, "not in catalog")
    if code.format in _TEXT_FORMATS:
        order_id = normalize_id(code.text)
        if order_id is None:
            return UnknownCode(code, "no order number")
        get = _order_getter(order_lookup)
        return OrderCode(code, order_id, get(order_id) if get is not None else None)
    return UnknownCode(code, "unsupported format")
