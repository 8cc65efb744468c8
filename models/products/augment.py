"""Training augmentation with OpenCV/numpy (no torchvision: on x86_64 it drags in a multi-GB CUDA torch).

Each sample's randomness comes from its own generator seeded by (seed, epoch, index), so a run is
reproducible whatever the batch order or number of workers. Images are RGB uint8 throughout; the
network-side scaling is ``runtime.vision.products.normalize``, shared with the kiosk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    # Photos in the dataset are taken at arm's length and products fill most of the frame; crops much
    # smaller than a third of the image often lose the product entirely.
    scale: tuple[float, float] = (0.30, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    rotate_deg: float = 12.0
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue_deg: float = 6.0  # small: colour is what tells a red from a yellow pepper


def rng_for(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, index])


def random_resized_crop(img: np.ndarray, size: int, rng: np.random.Generator, scale: tuple[float, float],
                        ratio: tuple[float, float]) -> np.ndarray:
    """A crop covering ``scale`` of the area with aspect ``ratio``, resized to ``size``² (Inception-style)."""
    import cv2

    h, w = img.shape[:2]
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            break
    else:  # fall back to the central square
        cw = ch = min(h, w)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
    crop = img[y0 : y0 + ch, x0 : x0 + cw]
    interp = cv2.INTER_AREA if min(cw, ch) > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def rotate(img: np.ndarray, deg: float) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    # Reflected borders instead of black corners: black wedges would be a cue no kiosk frame has.
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def color_jitter(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    import cv2

    x = img.astype(np.float32)
    b = 1.0 + rng.uniform(-cfg.brightness, cfg.brightness)
    c = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
    mean = x.mean()
    x = (x * b - mean) * c + mean
    s = 1.0 + rng.uniform(-cfg.saturation, cfg.saturation)
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = gray[..., None] + (x - gray[..., None]) * s
    x = np.clip(x, 0, 255).astype(np.uint8)
    if cfg.hue_deg:
        hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
        # OpenCV's 8-bit hue runs 0..179 (2 degrees a step).
        shift = int(round(rng.uniform(-cfg.hue_deg, cfg.hue_deg) / 2))
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 180).astype(np.uint8)
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return x


def augment(img: np.ndarray, size: int, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """RGB uint8 (H, W, 3) → RGB uint8 (size, size, 3): rotation, random resized crop, flip, colour jitter."""
    if cfg.rotate_deg:
        img = rotate(img, rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
    out = random_resized_crop(img, size, rng, cfg.scale, cfg.ratio)
    if rng.random() < cfg.hflip:
        out = out[:, ::-1]
    return np.ascontiguousarray(color_jitter(out, rng, cfg))
