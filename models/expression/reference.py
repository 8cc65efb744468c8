"""An independent numpy forward of a :class:`KerasModel`, to check the torch conversion against.

It works the way TensorFlow does, not the way the torch module does: channels last, kernels used in their
stored HWIO / depthwise layouts without any transposing, float64, windows taken with ``sliding_window_view``
and contracted with ``einsum``, 'same' padding applied as TensorFlow documents it (extra pixel after), and
max-pool padding with -inf. A layout mistake in ``net.py`` (a transposed kernel, a pad on the wrong side, the
wrong BatchNorm epsilon) therefore shows up as a difference instead of being reproduced. It is slow (a few
ms a face) and meant for export-time checks only.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from models.expression.keras import KerasLayer, KerasModel
from runtime.errors import ExportError


def _pads(n: int, k: int, s: int, mode: str) -> tuple[int, int]:
    if mode == "valid":
        return 0, 0
    need = max((math.ceil(n / s) - 1) * s + k - n, 0)  # tf.nn 'SAME': the odd pixel goes after
    return need // 2, need - need // 2


def _windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], mode: str,
             fill: float) -> np.ndarray:
    """(N, Ho, Wo, C, kh, kw) views of x (N, H, W, C)."""
    (top, bottom), (left, right) = (_pads(x.shape[i + 1], kernel[i], stride[i], mode) for i in range(2))
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=fill)
    return sliding_window_view(xp, kernel, axis=(1, 2))[:, :: stride[0], :: stride[1]]


def _act(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "relu":
        return np.maximum(x, 0.0)
    if kind == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return x


def _two(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (v[0], v[1])


def _layer(layer: KerasLayer, xs: list[np.ndarray]) -> np.ndarray:
    kind, cfg, w = layer.kind, layer.config, {k: v.astype(np.float64) for k, v in layer.weights.items()}
    x = xs[0]
    if kind == "Add":
        return np.sum(xs, axis=0)
    if kind == "Activation":
        return _act(x, cfg["activation"])
    if kind == "Dropout":
        return x
    if kind == "GlobalAveragePooling2D":
        return x.mean(axis=(1, 2))
    if kind == "BatchNormalization":
        gamma = w.get("gamma", 1.0)
        beta = w.get("beta", 0.0)
        return (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + cfg.get("epsilon", 1e-3)) * gamma + beta
    if kind == "MaxPooling2D":
        kernel = _two(cfg["pool_size"])
        stride = _two(cfg.get("strides") or kernel)
        return _windows(x, kernel, stride, cfg.get("padding", "valid"), -np.inf).max(axis=(-2, -1))
    if kind == "Conv2D":
        win = _windows(x, _two(cfg["kernel_size"]), _two(cfg.get("strides", 1)), cfg.get("padding", "valid"), 0.0)
        out = np.einsum("nhwcij,ijco->nhwo", win, w["kernel"], optimize=True)
    elif kind == "SeparableConv2D":
        win = _windows(x, _two(cfg["kernel_size"]), _two(cfg.get("strides", 1)), cfg.get("padding", "valid"), 0.0)
        depth = np.einsum("nhwcij,ijcm->nhwcm", win, w["depthwise_kernel"], optimize=True)
        depth = depth.reshape(*depth.shape[:3], -1)
        out = np.einsum("nhwc,co->nhwo", depth, w["pointwise_kernel"][0, 0], optimize=True)
    else:
        raise ExportError(f"reference forward: no numpy version of {kind}")
    if "bias" in w:
        out = out + w["bias"]
    return _act(out, cfg.get("activation", "linear"))


def reference_forward(km: KerasModel, x: np.ndarray, *, until: str | None = None) -> np.ndarray:
    """Output (or layer ``until``'s output) for x of shape (N, H, W, C), channels last, float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4 or x.shape[1:] != km.input_shape:
        raise ValueError(f"expected (N, {', '.join(map(str, km.input_shape))}) channels-last input, got {x.shape}")
    values: dict[str, np.ndarray] = {}
    for layer in km.layers:
        values[layer.name] = x if layer.kind == "InputLayer" else _layer(layer, [values[n] for n in layer.inbound])
        if layer.name == until:
            return values[layer.name]
    return values[km.output]
