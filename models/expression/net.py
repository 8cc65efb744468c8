"""A torch module that runs a :class:`KerasModel`'s layer list, with its weights, in NCHW.

Layout and semantics that differ between Keras (TensorFlow backend) and torch, and how each is bridged:

- Conv kernels: Keras HWIO ``(kh, kw, in, out)`` → torch OIHW: ``transpose(3, 2, 0, 1)``.
- Depthwise kernels: Keras ``(kh, kw, in, mult)`` → torch ``(in * mult, 1, kh, kw)`` with ``groups=in``.
  Keras numbers the depthwise outputs ``c * mult + m``, which is the order the reshape gives.
- Pointwise kernels ``(1, 1, in * mult, out)`` → ``(out, in * mult, 1, 1)``.
- BatchNorm: Keras ``epsilon`` is torch ``eps``; Keras ``momentum`` (weight of the old running value) is
  torch ``1 - momentum`` (weight of the new one). Only eval mode matters here, where neither momentum is used.
- 'same' padding: TensorFlow pads ``total = max((ceil(n / s) - 1) * s + k - n, 0)`` pixels, ``total // 2``
  before and the rest *after*. With stride 2 that is often asymmetric (fer's 60 → 30 pool pads (0, 1)), which
  torch's symmetric ``padding=`` cannot express: max-pools use ``ceil_mode`` for the extra cell after (see
  ``_ceil_pool``), other layers get an explicit ``F.pad`` first.
- Max-pool padding: TensorFlow ignores padded cells (they never win the max), i.e. pads with -inf; zero
  padding would clip negative BatchNorm outputs to 0 at the border.
- Channels-last global average pooling and softmax over the last axis become means over (H, W) and softmax
  over the channel axis.

Spatial sizes are tracked while building (the Keras input shape is fixed), so every pad is a constant.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.expression.keras import KerasLayer, KerasModel
from runtime.errors import ExportError


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _Pad(nn.Module):
    def __init__(self, pads: tuple[int, int, int, int], value: float):
        super().__init__()
        self.pads, self.value = pads, value  # (left, right, top, bottom), F.pad's order

    def forward(self, x):
        return F.pad(x, self.pads, value=self.value)


class _Act(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        if self.kind == "relu":
            return torch.relu(x)
        if self.kind == "softmax":
            return torch.softmax(x, dim=1)
        return x


class _GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def _padding(layer: KerasLayer, hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int]):
    """(module padding, explicit pre-pad or None, output H, W)."""
    if layer.opt("padding", "valid") == "valid":
        out = tuple((n - k) // s + 1 for n, k, s in zip(hw, kernel, stride, strict=True))
        return (0, 0), None, out
    (top, bottom), (left, right) = (tf_same_pads(n, k, s) for n, k, s in zip(hw, kernel, stride, strict=True))
    out = tuple(math.ceil(n / s) for n, s in zip(hw, stride, strict=True))
    if top == bottom and left == right:
        return (top, left), None, out
    return (0, 0), (left, right, top, bottom), out


def _ceil_pool(kernel, stride, before, hw, out) -> nn.Module | None:
    """TensorFlow's asymmetric 'same' max-pool as one torch pool, when one exists: ``ceil_mode`` keeps a last
    window that hangs over the bottom/right edge, and a pool ignores the cells it hangs over, which is exactly
    TensorFlow's extra -inf row/column after. It exports as one ONNX MaxPool (``ceil_mode=1``) instead of a
    Pad subgraph. None when the sizes do not work out (then an explicit -inf pad is used)."""
    if any(b > k // 2 for b, k in zip(before, kernel, strict=True)):
        return None
    got = tuple(math.ceil((n + 2 * b - k) / s) + 1 for n, b, k, s in zip(hw, before, kernel, stride, strict=True))
    # torch drops a ceil-mode window that would start in the right padding; TF never creates one.
    starts_inside = all((o - 1) * s - b < n for o, s, b, n in zip(out, stride, before, hw, strict=True))
    if got != tuple(out) or not starts_inside:
        return None
    return nn.MaxPool2d(kernel, stride, padding=before, ceil_mode=True)


class KerasGraphNet(nn.Module):
    """``forward(x)``: x is (N, C, H, W) float32 as the Keras model expects it, channels first; returns the
    model's output (fer: softmax probabilities, (N, 7)). ``logits(x)`` returns the input of a final softmax
    Activation (for calibration and fusion, which want unsquashed scores)."""

    def __init__(self, km: KerasModel):
        super().__init__()
        self.km = km
        h, w, c = km.input_shape
        self.input_shape = (c, h, w)
        shapes: dict[str, tuple[int, ...]] = {}
        self.blocks = nn.ModuleDict()
        self.order: list[tuple[str, str, tuple[str, ...]]] = []
        for layer in km.layers:
            if layer.kind == "InputLayer":
                shapes[layer.name] = (c, h, w)
            else:
                src = [shapes[n] for n in layer.inbound]
                module, shapes[layer.name] = self._build(layer, src)
                self.blocks[self._key(layer.name)] = module
            self.order.append((layer.name, layer.kind, layer.inbound))
        self.output_shape = shapes[km.output]
        last = km.layer(km.output)
        self._logits_from = last.inbound[0] if last.kind == "Activation" and last.opt("activation") == "softmax" \
            else None

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "_")  # ModuleDict keys may not contain dots

    def _build(self, layer: KerasLayer, src: list[tuple[int, ...]]) -> tuple[nn.Module, tuple[int, ...]]:
        kind, shape = layer.kind, src[0]
        if kind == "Add":
            if any(s != shape for s in src):
                raise ExportError(f"layer {layer.name!r} adds tensors of shapes {src}")
            return nn.Identity(), shape
        if kind in ("Activation", "Dropout"):
            return _Act(layer.opt("activation", "linear") if kind == "Activation" else "linear"), shape
        if kind == "GlobalAveragePooling2D":
            return _GlobalAvgPool(), shape[:1]
        if len(shape) != 3:
            raise ExportError(f"layer {layer.name!r} ({kind}) needs a (C, H, W) input, got {shape}")
        ch, hw = shape[0], shape[1:]
        if kind == "BatchNormalization":
            bn = nn.BatchNorm2d(ch, eps=float(layer.opt("epsilon", 1e-3)),
                                momentum=1.0 - float(layer.opt("momentum", 0.99)))
            wt = layer.weights
            with torch.no_grad():
                bn.weight.copy_(torch.from_numpy(wt["gamma"]) if "gamma" in wt else torch.ones(ch))
                bn.bias.copy_(torch.from_numpy(wt["beta"]) if "beta" in wt else torch.zeros(ch))
                bn.running_mean.copy_(torch.from_numpy(wt["moving_mean"]))
                bn.running_var.copy_(torch.from_numpy(wt["moving_variance"]))
            return bn, shape
        if kind == "MaxPooling2D":
            kernel = _pair(layer.opt("pool_size", 2))
            stride = _pair(layer.opt("strides") or kernel)
            padding, pre, out = _padding(layer, hw, kernel, stride)
            if pre is not None:
                pool = _ceil_pool(kernel, stride, (pre[2], pre[0]), hw, out)
                if pool is not None:
                    return pool, (ch, *out)
            pool = nn.MaxPool2d(kernel, stride, padding=padding)  # torch's own padding already acts as -inf
            mods = ([_Pad(pre, float("-inf"))] if pre else []) + [pool]
            return nn.Sequential(*mods), (ch, *out)
        if kind in ("Conv2D", "SeparableConv2D"):
            kernel, stride = _pair(layer.opt("kernel_size")), _pair(layer.opt("strides", 1))
            padding, pre, out = _padding(layer, hw, kernel, stride)
            bias = bool(layer.opt("use_bias", True))
            filters = int(layer.opt("filters"))
            mods: list[nn.Module] = [_Pad(pre, 0.0)] if pre else []
            wt = layer.weights
            if kind == "Conv2D":
                k = wt["kernel"]
                if k.shape != (*kernel, ch, filters):
                    raise ExportError(f"layer {layer.name!r}: kernel {k.shape} does not match "
                                      f"{(*kernel, ch, filters)}")
                conv = nn.Conv2d(ch, filters, kernel, stride, padding=padding, bias=bias)
                with torch.no_grad():
                    conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1))))
                    if bias:
                        conv.bias.copy_(torch.from_numpy(wt["bias"]))
                mods.append(conv)
            else:
                mult = int(layer.opt("depth_multiplier", 1))
                dk, pk = wt["depthwise_kernel"], wt["pointwise_kernel"]
                if dk.shape != (*kernel, ch, mult) or pk.shape != (1, 1, ch * mult, filters):
                    raise ExportError(f"layer {layer.name!r}: kernels {dk.shape}/{pk.shape} do not match "
                                      f"{(*kernel, ch, mult)}/{(1, 1, ch * mult, filters)}")
                depth = nn.Conv2d(ch, ch * mult, kernel, stride, padding=padding, groups=ch, bias=False)
                point = nn.Conv2d(ch * mult, filters, 1, bias=bias)
                with torch.no_grad():
                    dw = dk.transpose(2, 3, 0, 1).reshape(ch * mult, 1, *kernel)
                    depth.weight.copy_(torch.from_numpy(np.ascontiguousarray(dw)))
                    point.weight.copy_(torch.from_numpy(np.ascontiguousarray(pk.transpose(3, 2, 0, 1))))
                    if bias:
                        point.bias.copy_(torch.from_numpy(wt["bias"]))
                mods += [depth, point]
            mods.append(_Act(layer.opt("activation", "linear")))
            return nn.Sequential(*mods), (filters, *out)
        raise ExportError(f"layer {layer.name!r}: no torch translation for {kind}")

    def _run(self, x: torch.Tensor, stop: str | None) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"expected input (N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        values: dict[str, torch.Tensor] = {}
        for name, kind, inbound in self.order:
            if kind == "InputLayer":
                values[name] = x
            elif kind == "Add":
                out = values[inbound[0]]
                for other in inbound[1:]:
                    out = out + values[other]
                values[name] = out
            else:
                values[name] = self.blocks[self._key(name)](values[inbound[0]])
            if name == stop:
                return values[name]
        return values[self.km.output]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, None)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self._logits_from is None:
            raise ExportError("the model does not end in a softmax Activation: it has no separate logits")
        return self._run(x, self._logits_from)


class WithLogits(nn.Module):
    """(logits, probabilities) from one pass: the exported graph's two outputs."""

    def __init__(self, net: KerasGraphNet):
        super().__init__()
        self.net = net

    def forward(self, face):
        logits = self.net.logits(face)
        return logits, torch.softmax(logits, dim=1)
