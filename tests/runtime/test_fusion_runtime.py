"""The fusion model on the kiosk side (runtime/fusion.py), torch-free: a hand-built ONNX graph with known
answers in a real bundle (masks, input checks, feature order, source checks), and — when a bundle with a
trained fusion model is at hand — the trained model on sentences the kiosk's own encoder embeds."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from runtime.bundle import FORMAT, FORMAT_VERSION, load_bundle, write_manifest  # noqa: E402
from runtime.errors import BundleError, InputError  # noqa: E402
from runtime.fusion import FACE_CLASSES, FusionModel, load_optional, scatter_top_k, truncate_probs  # noqa: E402
from runtime.voice.prosody import FEATURES  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
N_INT, N_IMG = 5, 81
LABELS = ["greet", "product_info", "product_price", "complaint", "oos"]
PRODUCT_IDS = [f"p{i}" for i in range(N_IMG)]


def _fusion_graph(path: Path) -> None:
    """intent = text[:5] · 10; refers = 20·Σ(masked image) − 10; frustration = 20·(masked audio[0]) − 10."""
    dims = {"text": 384, "image": N_IMG, "face": 7, "audio": 8}
    inits = [numpy_helper.from_array(np.array([1, 1, 1], np.int64), "split3")]
    nodes = [helper.make_node("Split", ["mask", "split3"], ["m_image", "m_face", "m_audio"], axis=1)]
    for m in ("image", "face", "audio"):
        nodes.append(helper.make_node("Mul", [m, f"m_{m}"], [f"{m}_x"]))
    w_t = np.zeros((384, N_INT), np.float32)
    w_t[np.arange(N_INT), np.arange(N_INT)] = 10.0
    w_i = np.full((N_IMG, 1), 20.0, np.float32)
    w_a = np.zeros((8, 1), np.float32)
    w_a[0, 0] = 20.0
    w_f = np.zeros((7, 1), np.float32)
    inits += [numpy_helper.from_array(a, n) for a, n in ((w_t, "w_t"), (w_i, "w_i"), (w_a, "w_a"), (w_f, "w_f"),
                                                       (np.array([-10.0], np.float32), "b"))]
    nodes += [helper.make_node("MatMul", ["text", "w_t"], ["intent_logits"]),
              helper.make_node("MatMul", ["image_x", "w_i"], ["r0"]),
              helper.make_node("Add", ["r0", "b"], ["refers_logit"]),
              helper.make_node("MatMul", ["audio_x", "w_a"], ["f0"]),
              helper.make_node("MatMul", ["face_x", "w_f"], ["f1"]),  # the face wired in, weight 0
              helper.make_node("Add", ["f0", "f1"], ["f2"]),
              helper.make_node("Add", ["f2", "b"], ["frustration_logit"])]
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", d]) for n, d in (*dims.items(), ("mask", 3))]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", d])
            for n, d in (("intent_logits", N_INT), ("refers_logit", 1), ("frustration_logit", 1))]
    g = helper.make_graph(nodes, "fusion", ins, outs, inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _identity(path: Path) -> None:
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("x", "y")]
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "intent", [vi[0]], [vi[1]])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


def make_bundle(root: Path, *, with_fusion: bool = True, audio_features=FEATURES, sources: str = "match") -> Path:
    (root / "intent").mkdir(parents=True)
    _identity(root / "intent" / "model.fp32.onnx")
    models = {"intent": {"task": "text-intent", "variants": {"fp32": {"file": "intent/model.fp32.onnx", "precision": "fp32",
                                                                     "opset": 17}},
                         "default_variant": "fp32", "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
                         "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 4]}], "labels": LABELS}}
    if with_fusion:
        (root / "fusion").mkdir()
        _fusion_graph(root / "fusion" / "model.fp32.onnx")
        from runtime.bundle import sha256_file

        sha = sha256_file(root / "intent" / "model.fp32.onnx")
        if sources == "changed":
            sha = "0" * 64
        models["fusion"] = {
            "task": "multimodal-fusion",
            "variants": {"fp32": {"file": "fusion/model.fp32.onnx", "precision": "fp32", "opset": 17}},
            "default_variant": "fp32",
            "inputs": [{"name": "text", "dtype": "float32", "shape": ["batch", 384]},
                       {"name": "image", "dtype": "float32", "shape": ["batch", N_IMG]},
                       {"name": "face", "dtype": "float32", "shape": ["batch", 7]},
                       {"name": "audio", "dtype": "float32", "shape": ["batch", 8]},
                       {"name": "mask", "dtype": "float32", "shape": ["batch", 3]}],
            "outputs": [{"name": "intent_logits", "dtype": "float32", "shape": ["batch", N_INT]},
                        {"name": "refers_logit", "dtype": "float32", "shape": ["batch", 1]},
                        {"name": "frustration_logit", "dtype": "float32", "shape": ["batch", 1]}],
            "labels": {"intent": LABELS},
            "features": {"image": {"labels": [f"P{i}" for i in range(N_IMG)], "product_ids": PRODUCT_IDS, "top_k": 3},
                         "face": {"classes": list(FACE_CLASSES)}, "audio": {"features": list(audio_features)}},
            "decision": {"temperature": 1.0, "refers_threshold": 0.5, "frustration_threshold": 0.5},
            "sources": {"text": {"model": "intent", "files": {"intent/model.fp32.onnx": sha}}},
        }
    write_manifest(root, {"format": FORMAT, "format_version": FORMAT_VERSION, "name": "t", "models": models})
    return root


@pytest.fixture(scope="module")
def fusion(tmp_path_factory):
    m = FusionModel.from_bundle(make_bundle(tmp_path_factory.mktemp("fb") / "b"), providers=["cpu"])
    yield m
    m.engine.close()


def text_for(k: int) -> np.ndarray:
    v = np.zeros(384, np.float32)
    v[k] = 3.0  # not unit length: predict normalises
    return v


def test_text_alone(fusion):
    p = fusion.predict(text_for(2))
    assert p.intent == "product_price"
    assert p.confidence > 0.99
    assert p.refers_to_view < 0.01 and p.frustration < 0.01
    assert p.present == ()
    assert [a for a, _ in p.alternatives][:1] != ["product_price"]


def test_image_refers_only_when_present(fusion):
    img = fusion.image_vector(product="p7")
    assert img[7] == 1.0 and img.sum() == 1.0
    assert fusion.predict(text_for(1), image=img).refers_to_view > 0.99
    assert fusion.predict(text_for(1), image=None).refers_to_view < 0.01
    # An all-zero vector given as present is still present: the mask, not the values, says so.
    assert fusion.predict(text_for(1), image=np.zeros(N_IMG)).present == ("image",)


def test_audio_pairs_in_any_order(fusion):
    vec = np.zeros(8, np.float32)
    vec[0] = 0.9
    pairs = tuple(reversed(list(zip(FEATURES, vec.tolist(), strict=True))))
    a, b = fusion.predict(text_for(3), audio=pairs), fusion.predict(text_for(3), audio=vec)
    assert a.frustration == pytest.approx(b.frustration) and a.frustrated
    assert fusion.predict(text_for(3), audio=()).frustration < 0.01  # a typed turn: no audio
    with pytest.raises(InputError, match="lacks prosody features"):
        fusion.predict(text_for(3), audio=pairs[:-1])


def test_face_vector_checked(fusion):
    face = np.full(7, 1 / 7, np.float32)
    assert fusion.predict(text_for(0), face=face).present == ("face",)
    with pytest.raises(InputError, match="probabilities"):
        fusion.predict(text_for(0), face=np.full(7, 0.5))


@pytest.mark.parametrize("kwargs,match", [
    ({"text_emb": np.zeros(384)}, "all zeros"),
    ({"text_emb": np.ones(100)}, r"shape \(384,\)"),
    ({"text_emb": np.full(384, np.nan)}, "NaN"),
    ({"text_emb": "hello"}, "numbers|shape"),
    ({"text_emb": np.ones(384), "image": np.ones(N_IMG)}, "probabilities"),
    ({"text_emb": np.ones(384), "image": -np.ones(N_IMG) / N_IMG}, "probabilities"),
    ({"text_emb": np.ones(384), "audio": np.array([np.inf] + [0.0] * 7)}, "NaN or infinity"),
    ({"text_emb": np.ones(384), "audio": np.zeros(7)}, r"shape \(8,\)"),
])
def test_bad_inputs_are_clear_errors(fusion, kwargs, match):
    with pytest.raises(InputError, match=match):
        fusion.predict(**kwargs)


def test_image_vector_forms(fusion):
    v = fusion.image_vector(top_k=[(4, 0.1), (2, 0.6), (9, 0.2), (11, 0.05)])
    assert np.flatnonzero(v).tolist() == [2, 4, 9] and v[2] == pytest.approx(0.6)
    probs = np.random.default_rng(0).dirichlet(np.ones(N_IMG))
    t = fusion.image_vector(probs=probs)
    assert (t > 0).sum() == 3 and set(np.flatnonzero(t)) == set(np.argsort(-probs)[:3])
    with pytest.raises(InputError, match="exactly one"):
        fusion.image_vector(product="p1", top_k=[(1, 1.0)])
    with pytest.raises(InputError, match="not one the fusion model knows"):
        fusion.image_vector(product="bread")
    with pytest.raises(InputError, match="outside"):
        fusion.image_vector(top_k=[(N_IMG, 0.5)])


def test_truncate_and_scatter_agree():
    p = np.random.default_rng(1).dirichlet(np.ones(N_IMG), size=4).astype(np.float32)
    t = truncate_probs(p)
    for row in range(4):
        pairs = [(int(i), float(p[row, i])) for i in np.argsort(-p[row])[:5]]
        assert np.allclose(scatter_top_k(pairs, N_IMG), t[row])


def test_load_optional(tmp_path, caplog):
    from runtime.engine import Engine

    with Engine(make_bundle(tmp_path / "none", with_fusion=False), providers=["cpu"]) as e:
        assert load_optional(e) is None
    with caplog.at_level(logging.WARNING, logger="storeclerk.fusion"):
        with Engine(make_bundle(tmp_path / "changed", sources="changed"), providers=["cpu"]) as e:
            assert load_optional(e) is None
    assert "changed since the fusion model was trained" in caplog.text
    with Engine(make_bundle(tmp_path / "order", audio_features=tuple(reversed(FEATURES))), providers=["cpu"]) as e:
        assert load_optional(e) is None
        with pytest.raises(BundleError, match="prosody features"):
            FusionModel(e)
    with Engine(make_bundle(tmp_path / "ok"), providers=["cpu"]) as e:
        assert isinstance(load_optional(e), FusionModel)


def test_missing_model_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match="no 'fusion' model"):
        FusionModel.from_bundle(make_bundle(tmp_path / "b", with_fusion=False), providers=["cpu"])


def test_manifest_with_wrong_label_count(tmp_path):
    root = make_bundle(tmp_path / "b")
    m = json.loads((root / "manifest.json").read_text())
    m["models"]["fusion"]["labels"]["intent"] = LABELS[:-1]
    write_manifest(root, m)
    with pytest.raises(BundleError, match="intent labels"):
        FusionModel.from_bundle(root, providers=["cpu"])


# --- the trained model, where a bundle has one -----------------------------------------------------------------

TRAINED = Path(os.environ.get("STORECLERK_FUSION_BUNDLE", REPO / "models" / "bundles" / "kiosk"))


def _trained_bundle() -> Path | None:
    try:
        b = load_bundle(TRAINED, verify=False)
    except Exception:  # noqa: BLE001 - no bundle at all: nothing to test here
        return None
    return TRAINED if "fusion" in b.models and "intent" in b.models else None


@pytest.mark.skipif(_trained_bundle() is None, reason="no bundle with a trained fusion model")
def test_trained_model_resolves_this():
    from runtime.engine import Engine
    from runtime.intents import IntentClassifier

    with Engine(TRAINED, providers=["cpu"]) as e:
        fusion = FusionModel(e)
        clf = IntentClassifier(e)
        texts = ["is this one gluten free?", "how much does this cost", "are the bananas ripe",
                 "where are the toilets"]
        emb = clf.embed(texts)
        held = fusion.image_vector(product=fusion.product_ids[45])
        deictic = [fusion.predict(emb[i], image=held) for i in range(2)]
        assert [p.intent for p in deictic] == ["product_info", "product_price"]
        assert all(p.refers_to_view > 0.5 for p in deictic)
        assert fusion.predict(emb[0]).refers_to_view < 0.5  # nothing in view
        assert fusion.predict(emb[2], image=held).refers_to_view < 0.5  # names another product
        assert fusion.predict(emb[3], image=held).refers_to_view < 0.5
        calm = fusion.predict(emb[3], face=np.eye(7, dtype=np.float32)[FACE_CLASSES.index("happy")])
        angry = fusion.predict(emb[3], face=np.eye(7, dtype=np.float32)[FACE_CLASSES.index("angry")])
        assert angry.frustration > calm.frustration
