"""Read a Keras 2 HDF5 model (``model_config`` JSON + ``model_weights`` groups) with h5py alone.

Keras is not imported: fer's file was saved by Keras 2.0.5 on TensorFlow, and installing TensorFlow to read
a 0.9 MB file is what the design forbids. The HDF5 layout is stable across Keras 2.x: the root attribute
``model_config`` holds the functional graph, and ``model_weights/<layer>`` lists its arrays in
``weight_names`` order (``<layer>_1/kernel:0`` and the like; the prefix varies, the last part does not).

Only what the converter understands is accepted; anything else is an ``ExportError`` naming the layer and
the option, so a different file fails here rather than converting into a silently wrong net.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from runtime.errors import ExportError

SUPPORTED_LAYERS = ("InputLayer", "Conv2D", "SeparableConv2D", "BatchNormalization", "Activation",
                    "MaxPooling2D", "Add", "GlobalAveragePooling2D", "Dropout")
ACTIVATIONS = ("linear", "relu", "softmax")
# Weight names each layer type must carry, by the last path component Keras gives them.
_WEIGHTS = {
    "Conv2D": ("kernel",),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
    "BatchNormalization": ("moving_mean", "moving_variance"),
}


@dataclass(frozen=True)
class KerasLayer:
    name: str
    kind: str
    config: dict[str, Any]
    inbound: tuple[str, ...]
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def opt(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)


@dataclass(frozen=True)
class KerasModel:
    layers: tuple[KerasLayer, ...]
    input_shape: tuple[int, int, int]  # (H, W, C): channels last, as Keras stores it
    output: str
    keras_version: str
    backend: str

    def layer(self, name: str) -> KerasLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def n_params(self) -> int:
        return int(sum(w.size for layer in self.layers for w in layer.weights.values()))


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes | np.bytes_) else str(value)


def read_keras_h5(source: str | os.PathLike[str] | bytes | BinaryIO) -> KerasModel:
    """A Keras 2 functional model from a path, the file's bytes, or an open binary file."""
    import h5py

    handle = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        h5 = h5py.File(handle, "r")
    except (OSError, ValueError) as exc:
        raise ExportError(f"not a readable HDF5 file: {exc}") from exc
    with h5:
        if "model_config" not in h5.attrs or "model_weights" not in h5:
            raise ExportError("HDF5 file has no Keras 'model_config' attribute or 'model_weights' group: "
                              "not a whole Keras model (a weights-only file has no layer graph)")
        try:
            config = json.loads(_text(h5.attrs["model_config"]))
        except json.JSONDecodeError as exc:
            raise ExportError(f"model_config is not JSON: {exc}") from exc
        if config.get("class_name") not in ("Model", "Functional"):
            raise ExportError(f"model_config describes a {config.get('class_name')!r}; only functional models "
                              "(class Model/Functional) are converted")
        group = h5["model_weights"]
        layers = tuple(_layer(raw, group) for raw in config["config"]["layers"])
        outputs = config["config"].get("output_layers") or []
        if len(outputs) != 1:
            raise ExportError(f"the model has {len(outputs)} outputs; the converter handles exactly one")
        first = layers[0] if layers else None
        if first is None or first.kind != "InputLayer":
            raise ExportError("the model's first layer is not an InputLayer")
        shape = first.opt("batch_input_shape")
        if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) for d in shape[1:])):
            raise ExportError(f"input shape {shape!r} is not (batch, H, W, C) with fixed H, W, C")
        _check_order(layers)
        return KerasModel(layers=layers, input_shape=(shape[1], shape[2], shape[3]), output=outputs[0][0],
                          keras_version=_text(h5.attrs.get("keras_version", "?")),
                          backend=_text(h5.attrs.get("backend", "?")))


def _layer(raw: dict[str, Any], group: Any) -> KerasLayer:
    kind, name, cfg = raw["class_name"], raw["name"], raw.get("config", {})
    if kind not in SUPPORTED_LAYERS:
        raise ExportError(f"layer {name!r}: type {kind} is not supported (the converter knows "
                          f"{', '.join(SUPPORTED_LAYERS)})")
    nodes = raw.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise ExportError(f"layer {name!r} is called {len(nodes)} times (a shared layer); not supported")
    inbound = tuple(n[0] for n in nodes[0]) if nodes else ()
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise ExportError(f"layer {name!r}: data_format {cfg['data_format']!r}; only channels_last is supported")
    if list(cfg.get("dilation_rate", [1, 1])) != [1, 1]:
        raise ExportError(f"layer {name!r}: dilation {cfg['dilation_rate']} is not supported")
    if cfg.get("padding", "valid") not in ("valid", "same"):
        raise ExportError(f"layer {name!r}: padding {cfg['padding']!r} is not supported")
    act = cfg.get("activation", "linear")
    if kind in ("Conv2D", "SeparableConv2D", "Activation") and act not in ACTIVATIONS:
        raise ExportError(f"layer {name!r}: activation {act!r} is not supported ({', '.join(ACTIVATIONS)})")
    if kind == "BatchNormalization" and cfg.get("axis", -1) not in (-1, 3):
        raise ExportError(f"layer {name!r}: BatchNormalization over axis {cfg['axis']}; only the channel axis "
                          "(-1) is supported")
    weights: dict[str, np.ndarray] = {}
    if name in group:
        g = group[name]
        for wname in g.attrs.get("weight_names", []):
            wname = _text(wname)
            short = wname.rsplit("/", 1)[-1].split(":", 1)[0]
            weights[short] = np.asarray(g[wname], dtype=np.float32)
    need = list(_WEIGHTS.get(kind, ()))
    if kind in ("Conv2D", "SeparableConv2D") and cfg.get("use_bias", True):
        need.append("bias")
    if kind == "BatchNormalization":
        need += ["gamma"] * bool(cfg.get("scale", True)) + ["beta"] * bool(cfg.get("center", True))
    missing = [w for w in need if w not in weights]
    if missing:
        raise ExportError(f"layer {name!r} ({kind}) has no weight(s) {missing} in model_weights "
                          f"(found {sorted(weights)})")
    return KerasLayer(name=name, kind=kind, config=cfg, inbound=inbound, weights=weights)


def _check_order(layers: tuple[KerasLayer, ...]) -> None:
    # Keras writes functional layers in a valid evaluation order; both forwards rely on it, so check it.
    seen: set[str] = set()
    for layer in layers:
        unknown = [n for n in layer.inbound if n not in seen]
        if unknown:
            raise ExportError(f"layer {layer.name!r} reads {unknown} before they are defined")
        if layer.kind != "InputLayer" and not layer.inbound:
            raise ExportError(f"layer {layer.name!r} has no input")
        if layer.kind != "Add" and len(layer.inbound) > 1:
            raise ExportError(f"layer {layer.name!r} ({layer.kind}) takes {len(layer.inbound)} inputs; expected 1")
        seen.add(layer.name)
