"""Perception from the camera: barcodes/QR, OCR of order numbers, face presence (and, in ``products``,
product recognition). See docs/vision.md.

    from runtime.vision import decode, resolve, find_order_ids, FacePresence, load_image

Importing this package is cheap: OpenCV, zxing-cpp and rapidocr are imported when first used, and the OCR
engine loads on its first frame.
"""

from runtime.vision.barcode import (
    FORMATS,
    MAX_PAYLOAD_CHARS,
    Code,
    OrderCode,
    ProductCode,
    UnknownCode,
    clean_payload,
    decode,
    resolve,
)
from runtime.vision.expression import ExpressionReader, ExpressionReading
from runtime.vision.face import FaceDetector, FacePresence, FaceReading, PresenceEvent
from runtime.vision.images import MAX_IMAGE_PIXELS, as_bgr, as_gray, load_image
from runtime.vision.ocr import OcrReader, TextLine, find_order_ids, read_text

__all__ = [
    "FORMATS",
    "MAX_IMAGE_PIXELS",
    "MAX_PAYLOAD_CHARS",
    "Code",
    "ExpressionReader",
    "ExpressionReading",
    "FaceDetector",
    "FacePresence",
    "FaceReading",
    "OcrReader",
    "OrderCode",
    "PresenceEvent",
    "ProductCode",
    "TextLine",
    "UnknownCode",
    "as_bgr",
    "as_gray",
    "clean_payload",
    "decode",
    "find_order_ids",
    "load_image",
    "read_text",
    "resolve",
]
