"""Checking what reaches the vision models: frames from a camera, images from disk or from the API.

    img = load_image("photo.jpg")      # BGR uint8; InputError if missing, not an image, corrupt or > 40 MP
    bgr = as_bgr(frame)                # ndarray / Frame -> contiguous BGR uint8 (H, W, 3); InputError if unusable
    gray = as_gray(frame)

Every detector calls ``as_bgr``/``as_gray`` first, so a None, a float array, a (3, H, W) tensor or a
zero-sized crop fails with a message naming the problem instead of an OpenCV assertion from deep inside.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from device.camera import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, read_image_file
from runtime.errors import InputError

__all__ = ["MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "as_bgr", "as_gray", "load_image"]


def load_image(path: str | os.PathLike[str], *, max_pixels: int = MAX_IMAGE_PIXELS,
               max_bytes: int = MAX_IMAGE_BYTES) -> np.ndarray:
    """A JPEG, PNG or BMP file as BGR uint8 (H, W, 3). The size in the header is checked before decoding,
    so an image over ``max_pixels`` is refused without allocating it."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"image {p} not found")
    if not p.is_file():
        raise InputError(f"image {p} is not a file")
    try:
        return read_image_file(p, max_pixels=max_pixels, max_bytes=max_bytes)
    except ValueError as exc:
        raise InputError(f"cannot use image {p}: {exc}") from exc
    except OSError as exc:
        raise InputError(f"cannot read image {p}: {exc.strerror or exc}") from exc


def as_bgr(frame: Any, *, name: str = "frame", max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """``frame`` (an ndarray or anything with an ``.image`` ndarray, such as ``device.camera.Frame``) as a
    C-contiguous BGR uint8 (H, W, 3) array. Gray (H, W)/(H, W, 1) and BGRA (H, W, 4) are converted, 16-bit
    is scaled down; anything else raises ``InputError``. A frame that already is contiguous BGR uint8 is
    returned as is, not copied (camera frames are read-only for that reason)."""
    import cv2

    img = _array(frame, name, max_pixels)
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(img)


def as_gray(frame: Any, *, name: str = "frame", max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """``frame`` as a C-contiguous uint8 (H, W) array (same rules as :func:`as_bgr`)."""
    import cv2

    img = _array(frame, name, max_pixels)
    if img.ndim == 2 or img.shape[2] == 1:
        return np.ascontiguousarray(img.reshape(img.shape[:2]))
    return cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY)


def _array(frame: Any, name: str, max_pixels: int) -> np.ndarray:
    if frame is None:
        raise InputError(f"no {name}: got None instead of an image")
    img = getattr(frame, "image", frame)
    if not isinstance(img, np.ndarray):
        raise InputError(f"the {name} must be a numpy image array, not {type(img).__name__}")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise InputError(f"the {name} has shape {img.shape}; expected (H, W) gray, (H, W, 3) BGR or (H, W, 4) BGRA")
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        raise InputError(f"the {name} is empty ({w}x{h} pixels)")
    if h * w > max_pixels:
        raise InputError(f"the {name} is {w}x{h} = {w * h / 1e6:.0f} MP, more than the {max_pixels / 1e6:.0f} MP allowed")
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    raise InputError(f"the {name} has dtype {img.dtype}; expected uint8 (8-bit BGR as OpenCV reads it)")
