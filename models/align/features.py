"""Pooled backbone features of the product model, computed once and cached under ``build/``.

The alignment head trains on the frozen backbone, so every photo's 1280-d pooled feature is a constant: one
forward pass per photo (≈ 3,300 photos, a few CPU minutes) instead of one per epoch. The cache is keyed by
the checkpoint's sha256 and the data directory, and is recomputed when either changes.

Sets: ``train`` (the checkpoint's training photos, i.e. train.txt minus its held-out part), ``heldout`` (the
checkpoint's held-out photos: never trained on by the backbone, so the honest early-stopping split),
``train_aug`` (one augmented view of each training photo, the same augmentation as the backbone's training),
``val`` (val.txt), ``iconic`` (the dataset's one studio picture per product), ``negatives`` (the open-set
stand-ins of ``models/products/openset.py``, cut from held-out photos, never of the catalogue as a whole).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.products.data import Item, load_dataset
from runtime.errors import DataError

log = logging.getLogger("storeclerk.align")

CACHE_VERSION = 2
SETS = ("train", "train_aug", "heldout", "val", "iconic", "negatives")


def sha256_of(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def iconic_items(data_dir: Path) -> list[Item]:
    """One iconic picture per fine class, from ``classes.csv``'s fifth column (a path under the data dir)."""
    path = data_dir / "classes.csv"
    if not path.is_file():
        raise DataError(f"{path} not found: the iconic pictures are listed in the dataset's classes.csv")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 5 or not row[4].strip():
            raise DataError(f"{path}:{n}: no iconic image path (column 5)")
        p = data_dir / row[4].strip().lstrip("/")
        if not p.is_file():
            raise DataError(f"{path}:{n}: iconic image {p} not found")
        out.append(Item(p, int(row[1]), int(row[3]), n))
    return sorted(out, key=lambda i: i.fine)


@dataclass
class FeatureCache:
    feats: dict[str, np.ndarray]  # set -> (n, 1280) float32
    labels: dict[str, np.ndarray]  # set -> (n,) fine ids (-1 for negatives)
    paths: dict[str, list[str]]
    neg_kinds: list[str]
    meta: dict

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"x_{k}": v for k, v in self.feats.items()} | {f"y_{k}": v for k, v in self.labels.items()}
        arrays |= {f"p_{k}": np.asarray(v) for k, v in self.paths.items()}
        arrays["neg_kinds"] = np.asarray(self.neg_kinds)
        import json

        arrays["meta"] = np.asarray(json.dumps(self.meta))
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path) -> FeatureCache:
        import json

        z = np.load(path, allow_pickle=False)
        feats = {k[2:]: z[k] for k in z.files if k.startswith("x_")}
        labels = {k[2:]: z[k] for k in z.files if k.startswith("y_")}
        paths = {k[2:]: [str(s) for s in z[k]] for k in z.files if k.startswith("p_")}
        return cls(feats, labels, paths, [str(s) for s in z["neg_kinds"]], json.loads(str(z["meta"])))


def backbone_features(model, x: np.ndarray, batch: int = 32) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(x), batch):
            out.append(model.features(torch.from_numpy(x[s : s + batch])).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.features.out_features), np.float32)


def compute(ckpt_path: Path, data_dir: Path, cache_path: Path, aug_seed: int = 100, progress: bool = True,
            say: Callable[[str], None] | None = None) -> FeatureCache:
    """Features of every set (see the module docstring); loads ``cache_path`` when it matches."""
    say = say or (lambda m: log.info("%s", m))
    if not Path(data_dir).is_dir():
        raise DataError(f"data directory {data_dir} not found")
    if not Path(ckpt_path).is_file():
        raise DataError(f"product checkpoint {ckpt_path} not found (storeclerk train products --keep-checkpoint)")
    ckpt_sha = sha256_of(ckpt_path)
    key = {"version": CACHE_VERSION, "checkpoint_sha256": ckpt_sha, "data_dir": str(Path(data_dir).resolve()),
           "aug_seed": aug_seed}
    if cache_path.is_file():
        try:
            cached = FeatureCache.load(cache_path)
            if all(cached.meta.get(k) == v for k, v in key.items()):
                say(f"backbone features: cached {cache_path}")
                return cached
            say(f"backbone features: {cache_path} is for another checkpoint/data; recomputing")
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign cache file is simply rebuilt
            say(f"backbone features: unreadable cache {cache_path} ({exc}); recomputing")
    import torch
    from tqdm import tqdm

    from models.products import openset
    from models.products.augment import AugmentConfig, augment, rng_for
    from models.products.data import load_image_rgb_square, load_item_image
    from models.products.train import CACHE_SCALE, ProductCheckpoint
    from runtime.vision.products import normalize, preprocess

    ckpt = ProductCheckpoint.load(ckpt_path)
    model = ckpt.model()
    params = dict(ckpt.preprocess)
    catalog, train_all = load_dataset(data_dir, Path(data_dir) / "train.txt")
    if catalog.n_fine != ckpt.catalog.n_fine:
        raise DataError(f"{data_dir}: {catalog.n_fine} classes, but the checkpoint knows {ckpt.catalog.n_fine}")
    _, val = load_dataset(data_dir, Path(data_dir) / "val.txt")
    held_paths = {Path(i.path).resolve() for i in ckpt.heldout}
    heldout = [i for i in train_all if i.path.resolve() in held_paths]
    train = [i for i in train_all if i.path.resolve() not in held_paths]
    if len(heldout) != len(ckpt.heldout):
        raise DataError(f"{data_dir}/train.txt holds {len(heldout)} of the checkpoint's {len(ckpt.heldout)} "
                        "held-out photos: is this the data the checkpoint was trained on?")
    sets: dict[str, list[Item]] = {"train": train, "heldout": heldout, "val": val, "iconic": iconic_items(Path(data_dir))}
    feats, labels, paths = {}, {}, {}
    held_bgr: list[np.ndarray] = []
    for name, items in sets.items():
        xs = []
        for it in tqdm(items, desc=f"features {name}", unit="img", disable=not progress, leave=False):
            bgr = load_item_image(it)
            if name == "heldout":
                held_bgr.append(bgr)
            xs.append(preprocess(bgr, params))
        feats[name] = backbone_features(model, np.stack(xs))
        labels[name] = np.array([i.fine for i in items], np.int64)
        paths[name] = [str(i.path) for i in items]
        say(f"features {name}: {len(items)}")
    # One augmented view per training photo: the head must not learn the exact feature of each clean photo.
    cfg = AugmentConfig()
    side = int(round(ckpt.size * CACHE_SCALE))
    xs = []
    for k, it in enumerate(tqdm(train, desc="features train_aug", unit="img", disable=not progress, leave=False)):
        rgb = augment(load_image_rgb_square(it, side), ckpt.size, rng_for(aug_seed, 0, k), cfg)
        xs.append(normalize(rgb, params["mean"], params["std"], bgr_input=False))
    feats["train_aug"] = backbone_features(model, np.stack(xs))
    labels["train_aug"], paths["train_aug"] = labels["train"].copy(), list(paths["train"])
    neg_imgs, neg_kinds = openset.negatives(held_bgr, 60, seed=0)
    feats["negatives"] = backbone_features(model, np.stack([preprocess(im, params) for im in neg_imgs]))
    labels["negatives"] = np.full(len(neg_imgs), -1, np.int64)
    paths["negatives"] = [f"{k}:{i}" for i, k in enumerate(neg_kinds)]
    meta = {**key, "size": ckpt.size, "torch_threads": torch.get_num_threads()}
    cache = FeatureCache(feats, labels, paths, list(neg_kinds), meta)
    cache.save(cache_path)
    say(f"backbone features cached in {cache_path}")
    return cache


def head_logits(ckpt_state: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoint's fine/coarse heads on cached features (eval mode: dropout is the identity)."""
    wf, bf = ckpt_state["fine.weight"].numpy(), ckpt_state["fine.bias"].numpy()
    wc, bc = ckpt_state["coarse.weight"].numpy(), ckpt_state["coarse.bias"].numpy()
    return x @ wf.T + bf, x @ wc.T + bc


def items_of(sets: Sequence[str]) -> tuple[str, ...]:
    bad = [s for s in sets if s not in SETS]
    if bad:
        raise DataError(f"unknown feature set(s) {bad}; known: {', '.join(SETS)}")
    return tuple(sets)
