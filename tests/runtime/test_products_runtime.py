"""Product recognition on the kiosk side: preprocessing, bad frames, and ``ProductRecognizer`` on a real bundle
(a Lite0 linear probe trained in tmp on augmented copies of the catalogue's iconic pictures)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

REPO = Path(__file__).resolve().parents[2]
KB = REPO / "data" / "kb"


def _tiny_dataset_builder():
    # One builder for both product test modules (tests/ is not a package).
    spec = importlib.util.spec_from_file_location("_products_tiny", REPO / "tests" / "models" / "test_products.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_tiny_dataset


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from export.products import export_product_model
    from models.products.data import load_dataset
    from models.products.train import TrainConfig, fit

    root = tmp_path_factory.mktemp("products")
    data = _tiny_dataset_builder()(root / "dataset")
    catalog, items = load_dataset(data, data / "train.txt")
    cfg = TrainConfig(arch="lite0", size=96, epochs=2, head_epochs=2, batch_size=16, seed=0, time_budget_min=None)
    ckpt = fit(items, catalog, cfg, progress=False)
    out = root / "bundle"
    export_product_model(ckpt, out, negatives_per_kind=20)
    return out


@pytest.fixture(scope="module")
def rec(bundle):
    from runtime.vision.products import ProductRecognizer

    r = ProductRecognizer.from_bundle(bundle, providers=["cpu"])
    yield r
    r.engine.close()


def iconic(name: str) -> np.ndarray:
    return cv2.imread(str(KB / "images" / name))


# --- preprocessing -----------------------------------------------------------------------------------------


def test_preprocess_crops_the_centre_and_scales_rgb():
    from runtime.vision.products import preprocess

    frame = np.zeros((120, 200, 3), np.uint8)
    frame[:, :] = (255, 0, 0)  # blue border (BGR)
    frame[7:113, 47:153] = (0, 0, 255)  # red centre square, a bit larger than 0.875 of the short side
    x = preprocess(frame, {"size": 64, "crop_fraction": 0.875})
    assert x.shape == (3, 64, 64) and x.dtype == np.float32 and x.flags.c_contiguous
    # Only the red centre survives the crop; channel 0 is R after the BGR → RGB swap, scaled (x-127)/128.
    assert np.allclose(x[0], (255 - 127) / 128) and np.allclose(x[2], (0 - 127) / 128)
    gray = np.full((50, 50), 127, np.uint8)
    assert np.allclose(preprocess(gray, {"size": 32}), 0.0)


@pytest.mark.parametrize("frame, message", [
    (None, "got None"),
    ("not an image", "numpy image array"),
    (np.zeros((3, 64, 64), np.uint8), "has shape (3, 64, 64)"),
    (np.zeros((64, 64, 3), np.float32), "dtype float32"),
    (np.zeros((0, 64, 3), np.uint8), "is empty"),
    (np.zeros((20, 300, 3), np.uint8), "needs at least 32"),
])
def test_bad_frames_are_input_errors(frame, message):
    from runtime.errors import InputError
    from runtime.vision.products import preprocess

    with pytest.raises(InputError) as e:
        preprocess(frame, {"size": 64})
    assert message in e.value.message


def test_open_set_scores():
    from runtime.vision.products import coarse_from_fine, open_set_score

    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    p = np.exp(logits / 2) / np.exp(logits / 2).sum(1, keepdims=True)
    assert np.allclose(open_set_score(logits, 2.0, "max_prob"), p.max(1))
    assert np.allclose(open_set_score(logits, 2.0, "neg_energy"), 2 * np.log(np.exp(logits / 2).sum(1)))
    assert np.allclose(coarse_from_fine(p, [1, 0, 1], 2), np.stack([p[:, 1], p[:, 0] + p[:, 2]], 1))
    # Two siblings it cannot tell apart still make a confident coarse answer.
    cp = open_set_score(logits, 2.0, "coarse_prob", fine_to_coarse=[1, 0, 1], n_coarse=2)
    assert np.allclose(cp, np.maximum(p[:, 1], p[:, 0] + p[:, 2])) and (cp >= p.max(1)).all()
    sims = np.array([[0.1, 0.7, -0.2], [0.3, 0.2, 0.25]])
    assert np.allclose(open_set_score(logits, 2.0, "text_sim", text_sims=sims), [0.7, 0.3])


def test_open_set_scores_refuse_what_they_cannot_compute():
    from runtime.errors import BundleError
    from runtime.vision.products import open_set_score

    logits = np.zeros((1, 3))
    with pytest.raises(BundleError, match="image_embedding"):
        open_set_score(logits, 1.0, "text_sim")
    with pytest.raises(BundleError, match="fine → coarse"):
        open_set_score(logits, 1.0, "coarse_prob")
    with pytest.raises(BundleError, match="unknown open-set score"):
        open_set_score(logits, 1.0, "vibes")


# --- the recogniser on a real bundle -----------------------------------------------------------------------


def test_recognises_the_catalogue_pictures(rec):
    with open(KB / "catalog.csv", encoding="utf-8") as f:
        import csv

        rows = list(csv.DictReader(f))
    frames = [iconic(r["image"]) for r in rows]
    preds = rec.predict(frames, top_k=5)
    fine = np.array([p.fine_id for p in preds])
    truth = np.array([int(r["fine_id"]) for r in rows])
    assert (fine == truth).mean() > 0.5, (fine == truth).mean()
    assert np.mean([int(r["fine_id"]) in [g.fine_id for g in p.top_k] for p, r in zip(preds, rows, strict=True)]) > 0.8
    for p in preds:
        probs = [g.prob for g in p.top_k]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(rec.fine_to_coarse[g.fine_id] == g.coarse_id for g in p.top_k)
        assert p.label == rec.fine_labels[p.fine_id] and 0 < p.coarse_prob <= 1 + 1e-6
    # Batch and single-frame inference agree (batching is an implementation detail).
    one = rec.predict_one(frames[5], top_k=5)
    assert one.fine_id == preds[5].fine_id and one.prob == pytest.approx(preds[5].prob, abs=1e-4)
    assert json.loads(json.dumps(one.as_dict()))["top_k"][0]["label"] == one.label


def test_open_set_decision_follows_the_calibrated_threshold(rec, bundle):
    m = json.loads((bundle / "manifest.json").read_text())["models"]["products"]["open_set"]
    assert rec.threshold == pytest.approx(m["threshold"]) and rec.score_kind == m["score"]
    assert 0.0 <= m["in_catalog_rejected"] <= 0.1 and m["negatives_rejected"] is not None
    flat = np.full((240, 320, 3), 128, np.uint8)
    banana = iconic("banana.jpg")
    preds = rec.predict([flat, banana])
    # A grey frame is less like the catalogue than the banana, and each decision is score < threshold.
    assert preds[0].score < preds[1].score
    for p in preds:
        assert p.unknown == (p.score < rec.threshold)
    assert not preds[1].unknown and preds[1].label == "Banana"


def test_a_model_without_alignment_still_works(rec, bundle):
    """Bundles exported before the image ↔ text head: no embedding, no matcher, same predictions."""
    from runtime.errors import BundleError
    from runtime.vision.align import CatalogMatcher

    assert not rec.has_embedding and rec.matcher is None
    p = rec.predict_one(iconic("banana.jpg"))
    assert p.embedding is None and "embedding" not in p.as_dict()
    assert set(rec.run([iconic("banana.jpg")])) == {"fine_logits", "coarse_logits"}
    with pytest.raises(BundleError) as e:
        CatalogMatcher.from_bundle(bundle)
    assert e.value.code == "bundle_no_align" and "--align" in e.value.message


def test_bad_frames_through_the_recognizer(rec):
    from runtime.errors import InputError

    with pytest.raises(InputError, match="frame 1 .*dtype float64"):
        rec.predict([iconic("banana.jpg"), np.zeros((64, 64, 3))])
    with pytest.raises(InputError, match="list of frames"):
        rec.predict(iconic("banana.jpg"))
    with pytest.raises(InputError, match="top_k"):
        rec.predict_one(iconic("banana.jpg"), top_k=0)


def test_bundle_problems_are_bundle_errors(bundle, tmp_path):
    import json

    from runtime.errors import BundleError
    from runtime.vision.products import ProductRecognizer

    # A bundle with no product model (the kiosk bundle with its products entry taken out).
    textonly = tmp_path / "textonly"
    shutil.copytree(REPO / "models" / "bundles" / "kiosk", textonly, ignore=shutil.ignore_patterns("products"))
    man = json.loads((textonly / "manifest.json").read_text())
    man["models"].pop("products", None)
    man["files"] = {f: h for f, h in man["files"].items() if not f.startswith("products/")}
    (textonly / "manifest.json").write_text(json.dumps(man, indent=2))
    with pytest.raises(BundleError) as e:
        ProductRecognizer.from_bundle(textonly, providers=["cpu"])
    assert e.value.code == "bundle_no_products" and "storeclerk train products" in e.value.message
    bad = tmp_path / "tampered"
    shutil.copytree(bundle, bad)
    model = bad / "products" / "model.int8.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        ProductRecognizer.from_bundle(bad, providers=["cpu"])
    assert e.value.code == "bundle_tampered"


def test_adding_products_keeps_the_other_models(bundle, tmp_path):
    """Exporting into an existing bundle replaces only the ``products`` entry and its files."""
    from export.products import export_product_model
    from models.products.train import ProductCheckpoint  # noqa: F401 - the checkpoint type the export takes
    from runtime.bundle import load_bundle, write_manifest

    target = tmp_path / "multi"
    shutil.copytree(bundle, target)
    (target / "other").mkdir()
    (target / "other" / "notes.txt").write_text("kept byte for byte")
    m = json.loads((target / "manifest.json").read_text())
    m["models"]["other"] = {**m["models"]["products"], "variants": {"int8": {
        **m["models"]["products"]["variants"]["int8"], "file": "other/model.int8.onnx"}}}
    shutil.copyfile(target / "products" / "model.int8.onnx", target / "other" / "model.int8.onnx")
    write_manifest(target, m)
    before = load_bundle(target).manifest["files"]

    from models.products.data import load_dataset
    from models.products.train import TrainConfig, fit

    data = tmp_path / "ds"
    _tiny_dataset_builder()(data, n_train=2, side=64)
    catalog, items = load_dataset(data, data / "train.txt")
    ckpt = fit(items, catalog, TrainConfig(arch="compact", size=48, epochs=1, batch_size=16, time_budget_min=None),
               progress=False)
    after = export_product_model(ckpt, target, precisions=("fp32",), negatives_per_kind=5)
    assert set(after["models"]) == {"products", "other"}
    assert after["models"]["products"]["arch"] == "compact"
    for rel in ("other/notes.txt", "other/model.int8.onnx"):
        assert after["files"][rel] == before[rel]
    assert "products/model.int8.onnx" not in after["files"] and "products/model.fp32.onnx" in after["files"]
    load_bundle(target, verify=True)
