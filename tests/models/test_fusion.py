"""Fusion model, workstation side: the composition's label rules and reproducibility, the three variants'
mask semantics, a small training run that must learn a known cross-modal rule, and the export into a bundle
that runtime.fusion then loads (fp32 and INT8 parity)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.fusion import compose as C  # noqa: E402
from models.fusion.nets import KINDS, FusionNet  # noqa: E402
from models.fusion.train import SUBSETS, TrainConfig, fit, metrics, offer, save_data, torch_outputs  # noqa: E402
from runtime.errors import DataError  # noqa: E402
from runtime.fusion import FACE_CLASSES, INPUTS, OPTIONAL  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
DIMS = {"text": 384, "image": 81, "face": 7, "audio": 8}


# --- composition -----------------------------------------------------------------------------------------------


def tiny_pools(n_photos: int = 200, seed: int = 0) -> C.Pools:
    rng = np.random.default_rng(seed)
    t = C.read_templates()["train"]
    ph = C.read_phrases()
    return C.Pools({"greet": ["hi", "hello there"], "complaint": ["this is bad service", "I want to complain"],
                    "product_info": ["is it vegan", "tell me about the bread"]}, t,
                   ph[("train", "frustrated")], ph[("train", "polite")], rng.integers(0, 81, n_photos), 10,
                   np.array([0, 1] * 20), rng.integers(2, 15, 40), C.product_names()[0], C.read_referents()["train"])


def test_compose_is_reproducible_and_seed_dependent():
    p = tiny_pools()
    a, b, c = C.compose(p, 300, 5), C.compose(p, 300, 5), C.compose(p, 300, 6)
    key = lambda ts: [(t.text, t.intent, t.image, t.image_index, t.audio_index, t.frustrated) for t in ts]  # noqa: E731
    assert key(a) == key(b)
    assert key(a) != key(c)
    assert all(np.array_equal(x.face, y.face) for x, y in zip(a, b, strict=True) if x.face is not None)


def test_label_rules():
    p = tiny_pools()
    turns = C.compose(p, 3000, 1)
    for t in turns:
        if t.kind == "deictic":
            assert t.refers == int(t.image in ("photo", "barcode")), t
            assert "{" not in t.text
        elif t.kind == "named":
            assert t.refers == 0 and "{" not in t.text
        elif t.intent in C.PRODUCT_INTENTS:
            assert t.refers == -1
        else:
            assert t.refers == 0
        if t.image == "photo":
            assert t.product == p.photo_labels[t.image_index]
        if t.face is not None:
            assert t.face.sum() == pytest.approx(1.0, abs=1e-5) and (t.face >= 0).all()
            top = FACE_CLASSES[int(t.face.argmax())]
            assert (top in C.CUE_FACES) == t.cues["face"]
        if t.audio_index >= 0:
            assert p.prosody_arousal[t.audio_index] == t.cues["audio"]
    frus = np.array([t.frustrated for t in turns])
    # No single cue decides the label: each fires on some calm turns and misses some frustrated ones.
    for cue in ("text", "face", "audio"):
        fired = np.array([bool(t.cues[cue]) for t in turns])
        seen = np.array([t.cues[cue] is not None and (cue != "face" or t.face is not None) for t in turns])
        assert 0.0 < fired[seen & (frus == 0)].mean() < 0.25
        assert 0.3 < fired[seen & (frus == 1)].mean() < 0.8
    complaint = np.array([t.intent == "complaint" for t in turns])
    assert frus[complaint].mean() > frus[~complaint].mean() + 0.2


def test_templates_split_and_errors(tmp_path):
    t = C.read_templates()
    train, test = {x.text for x in t["train"]}, {x.text for x in t["test"]}
    assert train and test and not train & test
    assert any(x.deictic_ok and x.named_ok for x in t["test"])  # the same question, pointed and named
    assert not set(C.read_referents()["train"]) >= set(C.read_referents()["test"])
    bad = tmp_path / "q.csv"
    bad.write_text("split,intent,template\ntrain,greet,is this vegan\n")
    with pytest.raises(DataError, match="product intent"):
        C.read_templates(bad)


@pytest.mark.skipif(not (SHARED / "bitext" / "customer_support_train.csv").exists(), reason="shared data not here")
def test_utterance_pools_keep_the_test_split_out():
    pools = C.utterance_pools(SHARED)
    norm = lambda s: C._norm(s)  # noqa: E731
    test = {norm(x) for rows in pools["test"].values() for x in rows}
    train = {norm(x) for rows in pools["train"].values() for x in rows}
    dev = {norm(x) for rows in pools["dev"].values() for x in rows}
    assert not test & train and not test & dev and not train & dev
    from models.kiosk_bundle import bitext_split

    _, held = bitext_split(SHARED, seed=0)
    assert not {norm(e.text) for e in held} & train  # the intent bundle's Bitext hold-out never trains fusion


# --- the variants ----------------------------------------------------------------------------------------------


def batch(n: int = 6, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, DIMS["text"], generator=g), torch.rand(n, 81, generator=g), torch.rand(n, 7, generator=g),
            torch.rand(n, 8, generator=g), (torch.rand(n, 3, generator=g) > 0.5).float()]


@pytest.mark.parametrize("kind", KINDS)
def test_masked_modalities_cannot_leak(kind):
    torch.manual_seed(0)
    net = FusionNet(kind, 40, DIMS).eval()
    x = batch()
    out = net(*x)
    assert [tuple(o.shape) for o in out] == [(6, 40), (6, 1), (6, 1)]
    garbage = [x[0]] + [v + 100 * (1 - x[4][:, j : j + 1]) for j, v in enumerate(x[1:4])] + [x[4]]
    for a, b in zip(out, net(*garbage), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # …while a present modality does change the output (or the test above would pass vacuously).
    x2 = list(x)
    x2[4] = torch.ones_like(x[4])
    changed = net(*x2)
    assert not torch.allclose(out[2], changed[2])
    # Rows do not see each other (attention runs over modalities, never over the batch).
    single = net(*[v[:1] for v in x])
    assert torch.allclose(single[0], out[0][:1], atol=1e-5)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown fusion variant"):
        FusionNet("middle", 3)


# --- training on a known rule ----------------------------------------------------------------------------------


def synthetic(n: int, seed: int) -> dict:
    """intent = which of 4 text prototypes; refers = intent 1 (a 'deictic' sentence) *and* an image present;
    frustrated = 1 when either the audio's first feature or the face's 'angry' is high."""
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(99).normal(size=(4, 384)).astype(np.float32)
    y = rng.integers(0, 4, n)
    text = protos[y] + 0.3 * rng.normal(size=(n, 384)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    mask = (rng.random((n, 3)) < 0.6).astype(np.float32)
    image = rng.dirichlet(np.ones(81) * 0.1, n).astype(np.float32) * mask[:, :1]
    frus = rng.random(n) < 0.4
    face = rng.dirichlet(np.ones(7), n).astype(np.float32)
    face[frus, 0] += 2.0
    face /= face.sum(1, keepdims=True)
    audio = rng.random((n, 8)).astype(np.float32) * 0.5
    audio[frus, 0] += 0.6
    seen = (mask[:, 1] + mask[:, 2]) > 0
    refers = ((y == 1) & (mask[:, 0] == 1)).astype(np.int64)
    products = image.argmax(1)
    return {"text": text, "image": image, "face": face * mask[:, 1:2], "audio": audio * mask[:, 2:3], "mask": mask,
            "y_intent": y.astype(np.int64), "y_refers": refers, "y_frustrated": (frus & seen).astype(np.int64),
            "kind": np.where(y == 1, 0, 2).astype(np.int64), "image_src": mask[:, 0].astype(np.int64),
            "product": np.where(mask[:, 0] == 1, products, -1).astype(np.int64),
            "cue_text": np.zeros(n, bool), "cue_face": frus, "cue_audio": frus, "texts": np.array(["x"] * n)}


@pytest.fixture(scope="module")
def trained():
    data = {"train": synthetic(1500, 0), "dev": synthetic(400, 1), "test": synthetic(400, 2),
            "meta": {"labels": ["a", "product_info", "c", "d"]}}
    model, info = fit("early", data, TrainConfig(epochs=12, batch_size=64, lr=3e-3), progress=False)
    return model, info, data


def test_training_learns_the_cross_modal_rule(trained):
    model, info, data = trained
    full = SUBSETS["all (with face)"]
    m = metrics(data["test"], torch_outputs(model, offer(data["test"], full)[0]), full)
    assert m["intent_accuracy"] > 0.95
    assert m["refers_accuracy"] > 0.95  # needs text *and* image
    assert m["deictic_resolved"] > 0.9
    assert m["frustration_f1"] > 0.85
    text_only = metrics(data["test"], torch_outputs(model, offer(data["test"], ())[0]), ())
    assert text_only["deictic_resolved"] is None
    assert text_only["frustration_f1"] < m["frustration_f1"] - 0.2  # the cues really are in the other modalities
    assert info["best_epoch"] >= 1 and len(info["history"]) == 12


def test_offer_withholds_and_relabels():
    d = synthetic(50, 3)
    feed, y_ref = offer(d, ("audio",))
    assert (feed["mask"][:, :2] == 0).all() and (feed["image"] == 0).all() and (feed["face"] == 0).all()
    assert (y_ref == 0).all()
    feed, y_ref = offer(d, ("image", "face", "audio"))
    assert np.array_equal(y_ref, d["y_refers"])


# --- export → bundle → runtime ---------------------------------------------------------------------------------


def _dummy_models(root: Path, tag: str = "") -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from runtime.bundle import FORMAT, FORMAT_VERSION, write_manifest

    models = {}
    for name in ("intent", "products"):
        (root / name).mkdir(parents=True)
        vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("x", "y")]
        m = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], name + tag, [vi[0]], [vi[1]]),
                              opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.save(m, str(root / name / "model.int8.onnx"))
        models[name] = {"task": "t", "variants": {"int8": {"file": f"{name}/model.int8.onnx", "precision": "int8",
                                                           "opset": 17}},
                        "default_variant": "int8", "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
                        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 4]}]}
    write_manifest(root, {"format": FORMAT, "format_version": FORMAT_VERSION, "name": "t", "models": models})


def test_export_into_a_bundle_and_run_it(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from export.fusion import export_fusion_model
    from models.fusion.features import sources
    from models.fusion.train import save_checkpoint
    from runtime.bundle import load_bundle
    from runtime.fusion import FusionModel

    model, info, data = trained
    bundle = tmp_path / "bundle"
    _dummy_models(bundle)
    before = json.loads((bundle / "manifest.json").read_text())["files"]
    meta = {"labels": data["meta"]["labels"], "image_labels": [f"P{i}" for i in range(81)],
            "product_ids": [f"p{i}" for i in range(81)], "sources": sources(load_bundle(bundle)), "seed": 0}
    work = tmp_path / "work"
    work.mkdir()
    save_data(work / "data.npz", data, meta)
    save_checkpoint(work / "early.pt", model, info, meta)
    manifest = export_fusion_model(work / "early.pt", bundle, precisions=("fp32", "int8"))
    e = manifest["models"]["fusion"]
    assert e["parity"]["fp32"]["passed"] and e["parity"]["int8"]["passed"]
    assert e["features"]["audio"]["features"] == list(__import__("runtime.voice.prosody", fromlist=["F"]).FEATURES)
    assert e["variants"]["int8"]["quantization"]["format"] == "QDQ"
    assert {k: v for k, v in manifest["files"].items() if not k.startswith("fusion/")} == before  # others untouched
    assert e["metrics"]["test"]["all (with face)"]["intent_accuracy"] > 0.9

    fm = FusionModel.from_bundle(bundle, providers=["cpu"])
    try:
        t = data["test"]
        ref = torch_outputs(model, {k: t[k][:20] for k in INPUTS})
        for i in range(20):
            present = {m: (t[m][i] if t["mask"][i, j] else None) for j, m in enumerate(OPTIONAL)}
            p = fm.predict(t["text"][i], **present)
            assert p.intent == fm.labels[int(ref[0][i].argmax())]
            assert (p.refers_to_view >= 0.5) == (ref[1][i, 0] > 0) or abs(ref[1][i, 0]) < 0.3
    finally:
        fm.engine.close()

    # A bundle whose intent model changed is refused: its embeddings are not the ones the model learned.
    import shutil

    other = tmp_path / "other"
    _dummy_models(other, tag="-retrained")
    from runtime.errors import ExportError

    with pytest.raises(ExportError, match="not the one the fusion features"):
        export_fusion_model(work / "early.pt", other)
    shutil.rmtree(other)
