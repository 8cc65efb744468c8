"""Training: Lite0 (or the compact CNN) on product photos, with a held-out split for model selection.

Recipe (docs/products.md): images decoded once into memory; each epoch re-augments them (augment.py);
AdamW with label smoothing; for Lite0 first ``head_epochs`` with the ImageNet backbone frozen (a random head's
large gradients would otherwise wreck the pretrained features in the first steps), then everything, with a
short linear warm-up and a cosine decay. After every epoch the held-out split is scored and the best
epoch's weights are kept (early stopping after ``patience`` epochs without progress). The schedule is
re-planned if the measured epoch time would overrun ``time_budget_min``, so a slower machine still ends on
a finished cosine rather than a cut-off one.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from models.products.augment import AugmentConfig, augment, rng_for
from models.products.data import Catalog, Item, load_image_rgb_square, stratified_holdout
from runtime.errors import ConfigError, DataError
from runtime.vision.products import DEFAULT_PREPROCESS, normalize, preprocess

log = logging.getLogger("storeclerk.products")

DEFAULT_SIZE = {"lite0": 192, "compact": 160}
DEFAULT_EPOCHS = {"lite0": 18, "compact": 30}
DEFAULT_LR = {"lite0": 6e-4, "compact": 3e-3}
# The cache keeps enough pixels for small random crops to stay sharp, without holding 348-px originals.
CACHE_SCALE = 1.6


@dataclass
class TrainConfig:
    arch: str = "lite0"
    size: int | None = None
    epochs: int | None = None
    head_epochs: int = 2  # Lite0 only: frozen backbone first
    batch_size: int = 32
    lr: float | None = None
    head_lr: float = 3e-3
    weight_decay: float = 0.02
    label_smoothing: float = 0.1
    coarse_weight: float = 0.3
    warmup_epochs: float = 1.0
    holdout: float = 0.1
    patience: int = 6
    seed: int = 0
    threads: int = 0
    init: str | None = None
    max_steps: int | None = None  # smoke runs: stop after this many optimiser steps in all
    time_budget_min: float | None = 55.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def resolved(self) -> TrainConfig:
        from models.products.nets import ARCHS

        if self.arch not in ARCHS:
            raise ConfigError(f"unknown --arch {self.arch!r}; choose from {', '.join(ARCHS)}")
        c = copy.copy(self)
        c.size = int(c.size or DEFAULT_SIZE[c.arch])
        c.epochs = int(c.epochs or DEFAULT_EPOCHS[c.arch])
        c.lr = float(c.lr or DEFAULT_LR[c.arch])
        if c.arch != "lite0":
            c.head_epochs = 0
        c.head_epochs = min(c.head_epochs, c.epochs)  # all head epochs = a linear probe on ImageNet features
        if c.size < 32 or c.size % 8:
            raise ConfigError(f"--size must be a multiple of 8 and at least 32, got {c.size}")
        if c.epochs < 1:
            raise ConfigError("--epochs must be at least 1")
        if c.batch_size < 2:
            raise ConfigError("--batch-size must be at least 2 (batch norm)")
        return c


@dataclass
class ProductCheckpoint:
    arch: str
    size: int
    catalog: Catalog
    state_dict: dict
    preprocess: dict
    history: list[dict]
    meta: dict
    heldout: list[Item]
    calibration: list[Item]  # training images for INT8 calibration

    def model(self):
        from models.products.nets import build

        net = build(self.arch, self.catalog.n_fine, self.catalog.n_coarse, self.size, pretrained=False)
        net.load_state_dict(self.state_dict)
        return net.eval()

    def save(self, path: str | os.PathLike[str]) -> Path:
        import torch

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        items = lambda xs: [[str(i.path), i.fine, i.coarse, i.line] for i in xs]  # noqa: E731
        torch.save({"format": "storeclerk-products-checkpoint", "version": 1, "arch": self.arch, "size": self.size,
                    "catalog": self.catalog.as_dict(), "state_dict": self.state_dict, "preprocess": self.preprocess,
                    "history": self.history, "meta": self.meta, "heldout": items(self.heldout),
                    "calibration": items(self.calibration)}, str(p))
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ProductCheckpoint:
        import torch

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"checkpoint {p} not found")
        try:
            d = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to the operator
            raise ConfigError(f"{p} is not a readable torch checkpoint: {exc}") from exc
        if not isinstance(d, dict) or d.get("format") != "storeclerk-products-checkpoint":
            raise ConfigError(f"{p} is not a storeclerk product checkpoint")
        items = lambda xs: [Item(Path(a), int(b), int(c), int(n)) for a, b, c, n in xs]  # noqa: E731
        return cls(d["arch"], int(d["size"]), Catalog.from_dict(d["catalog"]), d["state_dict"], d["preprocess"],
                   d["history"], d["meta"], items(d["heldout"]), items(d["calibration"]))


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n if n > 0 else max(1, min(os.cpu_count() or 1, 8)))


def load_images(items: Sequence[Item], side: int, desc: str, progress: bool) -> list[np.ndarray]:
    from tqdm import tqdm

    errors: list[str] = []
    out: list[np.ndarray] = []
    for it in tqdm(items, desc=desc, unit="img", disable=not progress, leave=False):
        try:
            out.append(load_image_rgb_square(it, side))
        except DataError as exc:
            errors.append(exc.message)
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise DataError(f"{len(errors)} image(s) could not be read: {'; '.join(errors[:3])}{more}")
    return out


def eval_tensor(images_rgb: Sequence[np.ndarray], params: dict) -> np.ndarray:
    """The kiosk's own preprocessing (runtime.vision.products.preprocess) on RGB images."""
    return np.stack([preprocess(np.ascontiguousarray(im[..., ::-1]), params) for im in images_rgb])


def torch_logits(model, x: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    import torch

    model.eval()
    fine, coarse = [], []
    with torch.no_grad():
        for s in range(0, len(x), batch):
            f, c = model(torch.from_numpy(x[s : s + batch]))
            fine.append(f.numpy())
            coarse.append(c.numpy())
    return np.concatenate(fine), np.concatenate(coarse)


def coarse_accuracies(fine: np.ndarray, coarse: np.ndarray, y_coarse: np.ndarray, f2c: Sequence[int]) -> dict:
    from runtime.vision.products import _softmax, coarse_from_fine

    p = _softmax(fine.astype(np.float64))
    via_fine = coarse_from_fine(p, f2c, coarse.shape[1]).argmax(1)
    return {"fine_sum": float((via_fine == y_coarse).mean()), "head": float((coarse.argmax(1) == y_coarse).mean())}


def fit(items: Sequence[Item], catalog: Catalog, cfg: TrainConfig, progress: bool = True,
        log_fn: Callable[[str], None] | None = None) -> ProductCheckpoint:
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from models.products.nets import COMPACT_PROVENANCE, LITE0_PROVENANCE, build, load_init

    say = log_fn or (lambda m: log.info("%s", m))
    cfg = cfg.resolved()
    _set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train_items, held = stratified_holdout(items, cfg.holdout, cfg.seed)
    if len(train_items) < cfg.batch_size:
        raise DataError(f"only {len(train_items)} training images after the hold-out; need at least one batch "
                        f"({cfg.batch_size})")
    missing = sorted(set(range(catalog.n_fine)) - {i.fine for i in train_items})
    if missing:
        say(f"warning: {len(missing)} classes have no training image (e.g. {[catalog.fine_names[m] for m in missing[:3]]})")
    params = {**DEFAULT_PREPROCESS, "size": cfg.size}
    t_load = time.perf_counter()
    side = int(round(cfg.size * CACHE_SCALE))
    train_imgs = load_images(train_items, side, "decoding training images", progress)
    held_imgs = load_images(held, side, "decoding held-out images", progress) if held else []
    x_held = eval_tensor(held_imgs, params) if held else np.zeros((0, 3, cfg.size, cfg.size), np.float32)
    y_held = np.array([i.fine for i in held])
    yc_held = np.array([i.coarse for i in held])
    load_s = time.perf_counter() - t_load

    model = build(cfg.arch, catalog.n_fine, catalog.n_coarse, cfg.size, pretrained=(cfg.arch == "lite0" and not cfg.init))
    init_info = load_init(model, cfg.init) if cfg.init else None
    y_fine = torch.tensor([i.fine for i in train_items])
    y_coarse = torch.tensor([i.coarse for i in train_items])
    n = len(train_items)
    steps_per_epoch = n // cfg.batch_size  # drop the ragged last batch: batch norm on 1-3 images is noise
    head_params = model.head_parameters()
    head_ids = {id(p) for p in head_params}
    body_params = [p for p in model.parameters() if id(p) not in head_ids]
    opt = torch.optim.AdamW([{"params": body_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.lr}],
                            weight_decay=cfg.weight_decay)
    plan = {"epochs": cfg.epochs}

    def lr_at(epoch: int, step: int) -> tuple[float, float]:
        """(backbone lr, head lr) for this step; head-only epochs train the heads at head_lr."""
        if epoch < cfg.head_epochs:
            return 0.0, cfg.head_lr
        full_steps = max(1, (plan["epochs"] - cfg.head_epochs) * steps_per_epoch)
        t = (epoch - cfg.head_epochs) * steps_per_epoch + step
        warm = cfg.warmup_epochs * steps_per_epoch
        if t < warm:
            f = (t + 1) / warm
        else:
            f = 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warm) / max(1, full_steps - warm))))
        lr = cfg.lr * max(f, 1e-3)
        return lr, lr

    history: list[dict] = []
    best = {"acc": -1.0, "state": None, "epoch": -1}
    total_steps = 0
    t0 = time.perf_counter()
    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else None
    stopped = "planned epochs done"
    epoch = 0
    while epoch < plan["epochs"]:
        head_only = epoch < cfg.head_epochs
        for p in body_params:
            p.requires_grad_(not head_only)
        model.train()
        if head_only:
            model.features.eval()  # frozen backbone: keep the ImageNet batch-norm statistics too
        order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
        t_ep = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{plan['epochs']}{' (head)' if head_only else ''}",
                   unit="batch", disable=not progress, leave=False)
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            batch = np.stack([normalize(augment(train_imgs[i], cfg.size, rng_for(cfg.seed, epoch, int(i)), cfg.augment),
                                        params["mean"], params["std"], bgr_input=False) for i in idx])
            lr_body, lr_head = lr_at(epoch, step)
            opt.param_groups[0]["lr"], opt.param_groups[1]["lr"] = lr_body, lr_head
            fine, coarse = model(torch.from_numpy(batch))
            yf, yc = y_fine[idx], y_coarse[idx]
            loss = F.cross_entropy(fine, yf, label_smoothing=cfg.label_smoothing) + cfg.coarse_weight * F.cross_entropy(
                coarse, yc, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += int((fine.argmax(1) == yf).sum())
            seen += len(idx)
            total_steps += 1
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{lr_body or lr_head:.1e}")
            if cfg.max_steps and total_steps >= cfg.max_steps:
                break
        bar.close()
        ep_s = time.perf_counter() - t_ep
        row = {"epoch": epoch + 1, "phase": "head" if head_only else "full", "loss": round(loss_sum / max(seen, 1), 4),
               "train_accuracy": round(correct / max(seen, 1), 4), "seconds": round(ep_s, 1),
               "images_per_s": round(seen / ep_s, 2) if ep_s > 0 else None}
        if len(x_held):
            hf, hc = torch_logits(model, x_held)
            row["heldout_accuracy"] = round(float((hf.argmax(1) == y_held).mean()), 4)
            row["heldout_coarse_accuracy"] = round(max(coarse_accuracies(hf, hc, yc_held, catalog.fine_to_coarse).values()), 4)
        history.append(row)
        say(" ".join(f"{k}={v}" for k, v in row.items()))
        score = row.get("heldout_accuracy", -row["loss"])
        if score > best["acc"]:
            best = {"acc": score, "state": copy.deepcopy(model.state_dict()), "epoch": epoch + 1}
        epoch += 1
        if cfg.max_steps and total_steps >= cfg.max_steps:
            stopped = f"--max-steps {cfg.max_steps} reached"
            break
        if epoch - best["epoch"] >= cfg.patience and epoch > cfg.head_epochs + cfg.warmup_epochs:
            stopped = f"early stop: no held-out progress for {cfg.patience} epochs"
            break
        if budget_s and not head_only and epoch < plan["epochs"]:
            elapsed = time.perf_counter() - t0
            eval_s = ep_s  # this epoch's time is the best predictor of the next ones
            fits = int((budget_s - elapsed) // max(eval_s, 1e-6))
            if epoch + fits < plan["epochs"]:
                plan["epochs"] = max(epoch + 1, epoch + fits)
                say(f"time budget {cfg.time_budget_min:.0f} min: epochs re-planned to {plan['epochs']} "
                    f"({eval_s:.0f} s an epoch)")
    train_s = time.perf_counter() - t0
    model.load_state_dict(best["state"])
    model.eval()
    coarse_from = "fine_sum"
    held_metrics = {}
    if len(x_held):
        hf, hc = torch_logits(model, x_held)
        cacc = coarse_accuracies(hf, hc, yc_held, catalog.fine_to_coarse)
        # Ties go to the fine sum: it needs no second head to agree with, so fine and coarse answers rarely clash.
        coarse_from = "head" if cacc["head"] > cacc["fine_sum"] else "fine_sum"
        held_metrics = {"fine_accuracy": round(float((hf.argmax(1) == y_held).mean()), 4),
                        "coarse_accuracy": {k: round(v, 4) for k, v in cacc.items()}, "n": int(len(held))}
    # INT8 calibration images: a class-stratified sample of the *training* split (never the held-out split,
    # which judges the quantised model).
    rng = np.random.default_rng(cfg.seed + 1)
    per_class: dict[int, list[Item]] = {}
    for it in train_items:
        per_class.setdefault(it.fine, []).append(it)
    calibration: list[Item] = []
    for fid in sorted(per_class):
        g = per_class[fid]
        calibration += [g[i] for i in rng.permutation(len(g))[: max(1, 240 // max(1, len(per_class)))]]
    meta = {
        "config": {k: v for k, v in asdict(cfg).items() if k != "augment"},
        "augmentation": asdict(cfg.augment),
        "best_epoch": best["epoch"],
        "stopped": stopped,
        "train_seconds": round(train_s, 1),
        "load_seconds": round(load_s, 1),
        "steps": total_steps,
        "counts": {"train": len(train_items), "heldout": len(held), "classes": catalog.n_fine,
                   "coarse_classes": catalog.n_coarse},
        "heldout": held_metrics,
        "coarse_from": coarse_from,
        "init": init_info,
        "provenance": LITE0_PROVENANCE if cfg.arch == "lite0" and not cfg.init else (
            COMPACT_PROVENANCE if cfg.arch == "compact" and not cfg.init else f"initialised from {cfg.init}"),
        "machine": {"cpu_count": os.cpu_count(), "threads": int(torch.get_num_threads()),
                    "platform": platform.platform()},
    }
    return ProductCheckpoint(cfg.arch, cfg.size, catalog, {k: v.detach().clone() for k, v in best["state"].items()},
                             params, history, meta, list(held), calibration)
