"""Image ↔ text alignment, workstation side: catalogue text views, query files, the contrastive head (training,
folding, saving), the recall metrics, the open-set threshold rule, and an export that adds ``image_embedding``.

The export test trains a tiny product model on augmented copies of the catalogue pictures (as
``test_products.py`` does) and embeds the catalogue with the kiosk bundle's own retrieval encoder; it skips
when that bundle is not in the checkout.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
KB = REPO / "data" / "kb"
KIOSK = REPO / "models" / "bundles" / "kiosk"
QUERIES = REPO / "data" / "eval" / "product_descriptions.csv"


# --- text views and query files ----------------------------------------------------------------------------


def test_catalog_text_views():
    from models.align.texts import read_catalog_texts

    products = read_catalog_texts(KB / "catalog.csv", 81)
    with open(KB / "catalog.csv", newline="", encoding="utf-8") as f:
        rows = {int(r["fine_id"]): r for r in csv.DictReader(f)}
    assert [p.fine_id for p in products] == list(range(81))
    for p in products:
        row = rows[p.fine_id]
        assert p.canonical == row["display_name"] and p.views[0] == p.canonical
        assert f"a photo of {p.canonical}" in p.views
        for alias in row["aliases"].split("|"):
            assert any(v.lower() == alias.strip().lower() for v in p.views)
        assert len({v.lower() for v in p.views}) == len(p.views)  # no duplicate view
        desc = " ".join(row["description"].split())
        other = {p.canonical.lower(), f"a photo of {p.canonical}".lower(), row["coarse_name"].replace("-", " ").lower()}
        other |= {a.strip().lower() for a in row["aliases"].split("|")}
        from_desc = [v for v in p.views if v.lower() not in other]
        assert from_desc and desc.startswith(from_desc[0]) and all(v in desc for v in from_desc), p.views


@pytest.mark.parametrize("edit, message", [
    (lambda rows: [{k: v for k, v in r.items() if k != "aliases"} for r in rows], "missing column"),
    (lambda rows: rows + [dict(rows[0])], "appears twice"),
    (lambda rows: rows[1:], "without gaps"),
    (lambda rows: [{**rows[0], "fine_id": "x"}] + rows[1:], "not an integer"),
])
def test_bad_catalogs_are_data_errors(tmp_path, edit, message):
    from models.align.texts import read_catalog_texts
    from runtime.errors import DataError

    with open(KB / "catalog.csv", newline="", encoding="utf-8") as f:
        rows = edit(list(csv.DictReader(f)))
    bad = tmp_path / "catalog.csv"
    with open(bad, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError, match=message):
        read_catalog_texts(bad)


def test_catalog_size_must_match_the_model():
    from models.align.texts import read_catalog_texts
    from runtime.errors import DataError

    with pytest.raises(DataError, match="knows 80"):
        read_catalog_texts(KB / "catalog.csv", 80)


def test_descriptive_queries_file(tmp_path):
    from models.align.texts import read_catalog_texts, read_queries
    from runtime.errors import DataError

    products = read_catalog_texts(KB / "catalog.csv")
    queries, gold = read_queries(QUERIES, products)
    assert len(queries) >= 50 and len(queries) == len(gold) and all(gold)
    assert len(set(queries)) == len(queries)
    bad = tmp_path / "q.csv"
    bad.write_text("query,product_id\nan oat drink,oatly-oat-milk\nsomething,no-such-product\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"q.csv:3.*no-such-product"):
        read_queries(bad, products)


# --- metrics -----------------------------------------------------------------------------------------------


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def test_recall_metrics_against_a_brute_force_count():
    from models.align.head import recall_i2t, recall_sets, recall_t2i

    rng = np.random.default_rng(0)
    text = _unit(rng.normal(size=(10, 16)))
    y = rng.integers(0, 10, 60)
    img = _unit(text[y] + rng.normal(scale=0.9, size=(60, 16)))
    sims = img @ text.T
    for k in (1, 5):
        want = np.mean([y[i] in np.argsort(-sims[i])[:k] for i in range(60)])
        assert recall_i2t(img, y, text)[f"R@{k}"] == pytest.approx(want)
        present = sorted(set(y.tolist()))
        want_t = np.mean([c in y[np.argsort(-sims[:, c])[:k]] for c in present])
        assert recall_t2i(img, y, text)[f"R@{k}"] == pytest.approx(want_t)
    assert recall_i2t(text, np.arange(10), text)["R@1"] == 1.0
    # A query counts when any of its gold products is in the top k.
    q = _unit(text[[3, 4]] + 0.01)
    assert recall_sets(q @ text.T, [{3}, {9, 4}])["R@1"] == 1.0
    assert recall_sets(q @ text.T, [{5}, {9}])["R@1"] == 0.0


# --- the head ----------------------------------------------------------------------------------------------


def _synthetic(n_classes=12, d_in=40, d_out=16, per_class=30, seed=0):
    """Features whose class is linearly recoverable, and a few text views per class around a class vector."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, d_in)) * 3
    y = np.repeat(np.arange(n_classes), per_class)
    x = (centres[y] + rng.normal(size=(len(y), d_in))).astype(np.float32)
    anchor = _unit(rng.normal(size=(n_classes, d_out)))
    views = np.concatenate([_unit(anchor + rng.normal(scale=0.2, size=anchor.shape)) for _ in range(3)])
    owner = np.tile(np.arange(n_classes), 3)
    return x, y, views.astype(np.float32), owner, anchor


def test_head_learns_the_alignment_and_folds_exactly(tmp_path):
    from models.align.head import AlignConfig, fit, folded, image_embeddings, load_head, recall_i2t, save_head

    x, y, views, owner, anchor = _synthetic()
    xv, yv, *_ = _synthetic(seed=1)
    xv = x[::7] + np.random.default_rng(2).normal(size=x[::7].shape).astype(np.float32)
    yv = y[::7]
    cfg = AlignConfig(hidden=32, epochs=40, batch_size=64, lr=3e-3, patience=40, dropout=0.0)
    untrained = recall_i2t(_unit(np.random.default_rng(3).normal(size=(len(yv), 16))), yv, anchor)["R@1"]
    head, history, info = fit(x, y, views, owner, 12, xv, yv, cfg=cfg, progress=False)
    emb = image_embeddings(head, xv)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    got = recall_i2t(emb, yv, anchor)["R@1"]
    assert got > 0.9 and got > untrained + 0.5, (got, untrained)
    assert history[0]["loss"] > history[info["best_epoch"] - 1]["loss"]
    assert 1 <= info["best_epoch"] <= len(history) == 40
    # Folding the standardisation into the first layer changes nothing but the graph.
    with torch.no_grad():
        f = folded(head)(torch.from_numpy(xv)).numpy()
    assert np.allclose(f, emb, atol=1e-5)
    save_head(tmp_path / "h.pt", head, {"training": {"config": {"hidden": 32}}, "text_readout": "mean"})
    again, meta = load_head(tmp_path / "h.pt")
    assert np.allclose(image_embeddings(again, xv), emb, atol=1e-6) and meta["text_readout"] == "mean"


def test_head_training_refuses_bad_inputs(tmp_path):
    from models.align.head import AlignConfig, fit, load_head
    from runtime.errors import ConfigError, DataError

    x, y, views, owner, _ = _synthetic()
    with pytest.raises(DataError, match="without any text view"):
        fit(x, y, views[owner != 3], owner[owner != 3], 12, x, y, cfg=AlignConfig(epochs=1, batch_size=64),
            progress=False)
    with pytest.raises(DataError, match="fewer than one batch"):
        fit(x[:10], y[:10], views, owner, 12, x, y, cfg=AlignConfig(epochs=1, batch_size=64), progress=False)
    with pytest.raises(ConfigError, match="bad alignment config"):
        AlignConfig(epochs=0).check()
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="not a readable torch file"):
        load_head(tmp_path / "junk.pt")
    with pytest.raises(ConfigError, match="not found"):
        load_head(tmp_path / "missing.pt")


# --- the open-set threshold --------------------------------------------------------------------------------


def test_open_set_threshold_from_the_negatives_is_capped_by_the_held_out_quantile():
    from models.products.openset import fit_rule

    rng = np.random.default_rng(0)
    kinds = ["patch", "flat"] * 100
    in_s = {"max_prob": rng.uniform(0.6, 1.0, 300), "text_sim": rng.uniform(0.5, 0.9, 300)}
    neg_s = {"max_prob": rng.uniform(0.0, 0.5, 200), "text_sim": rng.uniform(0.0, 0.6, 200)}
    fit_half = np.zeros(200, bool)
    for k in set(kinds):
        fit_half[np.flatnonzero(np.array(kinds) == k)[::2]] = True
    # The negatives need less than the held-out cap: their 90 % quantile sets the threshold.
    r = fit_rule(in_s, neg_s, kinds, 0.05, min_negatives_rejected=0.9, score="max_prob")
    assert r["threshold_set_by"] == "negatives" and r["score_chosen_by"] == "given"
    assert r["threshold"] == pytest.approx(np.quantile(neg_s["max_prob"][fit_half], 0.9))
    assert r["threshold"] < r["held_out_quantile_threshold"]
    # Overlapping scores: the cap (5 % of held-out photos) binds.
    r = fit_rule(in_s, neg_s, kinds, 0.05, min_negatives_rejected=0.95, score="text_sim")
    assert r["threshold_set_by"] == "held-out quantile"
    assert r["threshold"] == pytest.approx(np.quantile(in_s["text_sim"], 0.05))
    old = fit_rule(in_s, neg_s, kinds, 0.05)
    assert old["threshold"] == pytest.approx(np.quantile(in_s[old["score"]], 0.05))
    with pytest.raises(ValueError, match="not among"):
        fit_rule(in_s, neg_s, kinds, 0.05, score="neg_energy")
    with pytest.raises(ValueError, match="min_negatives_rejected"):
        fit_rule(in_s, neg_s, kinds, 0.05, min_negatives_rejected=0.3)


# --- export with image_embedding ---------------------------------------------------------------------------


def _text_bundle(tmp: Path) -> Path:
    """The kiosk bundle reduced to its retrieval encoder (a smaller copy to export into)."""
    from runtime.bundle import write_manifest

    if not (KIOSK / "manifest.json").is_file():
        pytest.skip(f"{KIOSK} is not in this checkout")
    man = json.loads((KIOSK / "manifest.json").read_text())
    if "retrieval" not in man.get("models", {}):
        pytest.skip("the kiosk bundle has no retrieval encoder")
    out = tmp / "bundle"
    out.mkdir()
    shutil.copytree(KIOSK / "retrieval", out / "retrieval")
    man["models"] = {"retrieval": man["models"]["retrieval"]}
    write_manifest(out, {k: v for k, v in man.items() if k != "files"})
    return out


def test_export_adds_image_embedding_and_catalog_vectors(tmp_path):
    import importlib.util

    from export.products import EMBEDDING, export_product_model
    from models.align.cli import _embedder
    from models.align.head import AlignConfig, fit, save_head
    from models.align.texts import embed_views, read_catalog_texts
    from models.products.data import load_dataset, load_item_image
    from models.products.train import TrainConfig
    from models.products.train import fit as fit_products
    from runtime.bundle import load_bundle
    from runtime.vision.align import CatalogMatcher
    from runtime.vision.products import ProductRecognizer, preprocess

    bundle = _text_bundle(tmp_path)
    spec = importlib.util.spec_from_file_location("_products_tiny", REPO / "tests" / "models" / "test_products.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    data = mod.build_tiny_dataset(tmp_path / "ds", n_train=3, side=64)
    catalog, items = load_dataset(data, data / "train.txt")
    ckpt = fit_products(items, catalog, TrainConfig(arch="compact", size=48, epochs=1, batch_size=16,
                                                    time_budget_min=None), progress=False)
    model = ckpt.model()
    held = {str(i.path) for i in ckpt.heldout}
    train_items = [i for i in items if str(i.path) not in held]

    def feats(its):
        x = np.stack([preprocess(load_item_image(i), ckpt.preprocess) for i in its])
        with torch.no_grad():
            return model.features(torch.from_numpy(x)).numpy()

    emb, prov = _embedder(str(bundle))
    products = read_catalog_texts(KB / "catalog.csv", 81)
    bank = embed_views(products, emb.embed)
    head, _, info = fit(feats(train_items), np.array([i.fine for i in train_items]), bank.vectors, bank.owner, 81,
                        feats(ckpt.heldout), np.array([i.fine for i in ckpt.heldout]),
                        cfg=AlignConfig(hidden=64, epochs=3, batch_size=32), progress=False)
    save_head(tmp_path / "head.pt", head, {"training": {**info}, "text_readout": "mean", "text_encoder": prov,
                                          "catalog": str(KB / "catalog.csv")})
    manifest = export_product_model(ckpt, bundle, precisions=("fp32",), negatives_per_kind=5,
                                    align=tmp_path / "head.pt")
    entry = manifest["models"]["products"]
    assert [o["name"] for o in entry["outputs"]] == ["fine_logits", "coarse_logits", EMBEDDING]
    assert entry["align"]["file"] in manifest["files"] and entry["align"]["text_readout"] == "mean"
    assert entry["align"]["parity"]["fp32"]["mean_cosine"] > 0.9999
    assert entry["open_set"]["score"] == "text_sim" and entry["open_set"]["threshold_set_by"] in (
        "negatives", "held-out quantile")
    assert set(manifest["models"]) == {"retrieval", "products"}
    load_bundle(bundle, verify=True)

    rec = ProductRecognizer.from_bundle(bundle, providers=["cpu"])
    try:
        frames = [load_item_image(i) for i in ckpt.heldout[:4]]
        preds = rec.predict(frames)
        assert rec.has_embedding and rec.matcher is not None
        for p in preds:
            assert p.embedding.shape == (384,) and np.linalg.norm(p.embedding) == pytest.approx(1.0, abs=1e-4)
            # The open-set score is the embedding's best cosine to the catalogue text, as the manifest says.
            assert p.score == pytest.approx(float((rec.matcher.text_vectors @ p.embedding).max()), abs=1e-4)
            assert p.unknown == (p.score < rec.threshold)
        # The head was trained against these very text vectors: exported ones match the training bank.
        m = CatalogMatcher.from_bundle(bundle)
        assert np.allclose(m.text_sets()["mean"], bank.mean_views, atol=1e-5)
        assert m.image_vectors.shape == (81, 384)
    finally:
        rec.engine.close()


def test_export_refuses_a_head_trained_for_another_text_encoder(tmp_path):
    from export.products import _load_alignment
    from models.align.head import AlignHead, save_head
    from runtime.bundle import load_bundle
    from runtime.errors import ExportError

    bundle = _text_bundle(tmp_path)
    save_head(tmp_path / "head.pt", AlignHead(8, 384, 0), {"training": {"config": {"hidden": 0}},
                                                         "text_encoder": {"sha256": "0" * 64}})
    with pytest.raises(ExportError, match="trained against text encoder 000000000000"):
        _load_alignment(tmp_path / "head.pt", load_bundle(bundle), None, 81, lambda m: None)
    with pytest.raises(ExportError, match="needs the bundle's 'retrieval'"):
        _load_alignment(tmp_path / "head.pt", None, None, 81, lambda m: None)
