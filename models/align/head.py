"""The image projection head and its contrastive training (symmetric InfoNCE, learnable temperature).

Only the head learns: the product backbone is frozen (its pooled features are cached, ``features.py``) and so
is the text side (the kiosk's MiniLM embeddings, ``texts.py``). Each step draws a batch of photos and one
random text view per product, then

* image → text: cross-entropy of each photo against all products' sampled views (every product is a
  negative, not just those in the batch: 81 texts cost nothing);
* text → image: for each product in the batch, its view against every photo in the batch, with all of that
  product's photos as positives (several photos of one product share a batch; treating them as negatives
  would push a product's own photos apart);

scaled by a learnable logit scale (CLIP's, initialised at 1/0.07, capped at 100).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from runtime.errors import ConfigError, DataError

log = logging.getLogger("storeclerk.align")

HEAD_FORMAT = "storeclerk-align-head"


@dataclass
class AlignConfig:
    hidden: int = 512  # 0: a single linear projection
    dropout: float = 0.2
    epochs: int = 60
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-3
    patience: int = 12
    seed: int = 0
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    use_augmented: bool = True

    def check(self) -> AlignConfig:
        if self.hidden < 0 or self.epochs < 1 or self.batch_size < 8 or not 0 <= self.dropout < 1 or self.lr <= 0:
            raise ConfigError(f"bad alignment config: {self}")
        return self


class AlignHead(nn.Module):
    """pooled backbone features (N, d_in) → unit image embeddings (N, d_out).

    The features are standardised with the training set's mean/std (stored as buffers, so the exported graph
    carries them): Lite0's pooled ReLU6 activations differ in scale by orders of magnitude across channels."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 512, dropout: float = 0.2):
        super().__init__()
        self.register_buffer("mu", torch.zeros(d_in))
        self.register_buffer("sd", torch.ones(d_in))
        if hidden:
            self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout),
                                      nn.Linear(hidden, d_out))
        else:
            self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, d_out))
        self.logit_scale = nn.Parameter(torch.tensor(0.0))

    def forward(self, feats):
        return F.normalize(self.proj((feats - self.mu) / self.sd), dim=-1)


def image_embeddings(head: AlignHead, x: np.ndarray) -> np.ndarray:
    head.eval()
    with torch.no_grad():
        return head(torch.from_numpy(np.asarray(x, np.float32))).numpy()


# --- metrics ---------------------------------------------------------------------------------------------------


def recall_i2t(img: np.ndarray, y: np.ndarray, text: np.ndarray, ks=(1, 5)) -> dict:
    """Each photo ranks the products' text vectors; R@k = share with its product in the top k."""
    sims = img @ text.T
    rank = (sims > sims[np.arange(len(y)), y][:, None]).sum(1)  # 0 = first
    out = {f"R@{k}": float((rank < k).mean()) for k in ks}
    out["MRR"] = float((1.0 / (rank + 1)).mean())
    return out


def recall_t2i(img: np.ndarray, y: np.ndarray, text: np.ndarray, ks=(1, 5)) -> dict:
    """Each product's text ranks the photos; R@k = share of products (with photos here) whose top k photos
    include one of theirs."""
    sims = text @ img.T  # (products, photos)
    present = np.unique(y)
    out = {}
    order = np.argsort(-sims[present], axis=1)
    hits = y[order] == present[:, None]
    for k in ks:
        out[f"R@{k}"] = float(hits[:, :k].any(1).mean())
    out["n_products"] = int(len(present))
    return out


def recall_sets(sims: np.ndarray, gold: list[set[int]], ks=(1, 5)) -> dict:
    """Queries × products similarities; a hit when any gold product is in the top k."""
    order = np.argsort(-sims, axis=1)
    return {f"R@{k}": float(np.mean([bool(set(order[i, :k].tolist()) & g) for i, g in enumerate(gold)])) for k in ks}


# --- training --------------------------------------------------------------------------------------------------


def fit(x_train: np.ndarray, y_train: np.ndarray, views: np.ndarray, owner: np.ndarray, n_products: int,
        x_val: np.ndarray, y_val: np.ndarray, val_text: Callable[[], dict[str, np.ndarray]] | None = None,
        cfg: AlignConfig | None = None, progress: bool = True,
        say: Callable[[str], None] | None = None) -> tuple[AlignHead, list[dict], dict]:
    """Train the head; ``(x_val, y_val)`` (the checkpoint's held-out photos) picks the epoch.
    ``views``/``owner``: every text view's embedding and its product id."""
    from tqdm import tqdm

    cfg = (cfg or AlignConfig()).check()
    say = say or (lambda m: log.info("%s", m))
    if len(x_train) < cfg.batch_size:
        raise DataError(f"{len(x_train)} training photos: fewer than one batch ({cfg.batch_size})")
    missing = sorted(set(range(n_products)) - set(owner.tolist()))
    if missing:
        raise DataError(f"products without any text view: {missing[:5]}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    head = AlignHead(x_train.shape[1], views.shape[1], cfg.hidden, cfg.dropout)
    head.mu.copy_(torch.from_numpy(x_train.mean(0)))
    head.sd.copy_(torch.from_numpy(x_train.std(0) + 1e-3))
    head.logit_scale.data.fill_(math.log(1 / cfg.init_temperature))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    xt, yt = torch.from_numpy(x_train.astype(np.float32)), torch.from_numpy(y_train.astype(np.int64))
    tv = torch.from_numpy(views.astype(np.float32))
    view_idx = [np.flatnonzero(owner == c) for c in range(n_products)]
    n = len(xt)
    steps = n // cfg.batch_size
    total = cfg.epochs * steps
    # Fixed read-outs for model selection: the mean of each product's views (robust to any one phrasing).
    mean_text = np.stack([views[ix].mean(0) for ix in view_idx])
    mean_text /= np.linalg.norm(mean_text, axis=1, keepdims=True)
    best = {"score": -1.0, "state": None, "epoch": 0}
    history = []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc="align", unit="epoch", disable=not progress, leave=False)
    step = 0
    for epoch in bar:
        head.train()
        perm = rng.permutation(n)
        loss_sum = 0.0
        for s in range(steps):
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = torch.from_numpy(perm[s * cfg.batch_size : (s + 1) * cfg.batch_size])
            img = head(xt[idx])
            y = yt[idx]
            pick = torch.from_numpy(np.array([ix[rng.integers(len(ix))] for ix in view_idx]))
            txt = tv[pick]  # (products, d): one random view per product
            scale = head.logit_scale.exp().clamp(max=cfg.max_logit_scale)
            logits = scale * img @ txt.T  # (batch, products)
            loss_i2t = F.cross_entropy(logits, y)
            present = torch.unique(y)
            lt = logits.T[present]  # (present products, batch)
            pos = (y[None, :] == present[:, None]).float()
            loss_t2i = -(torch.logsumexp(lt.masked_fill(pos == 0, -1e9), 1) - torch.logsumexp(lt, 1)).mean()
            loss = 0.5 * (loss_i2t + loss_t2i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            step += 1
        emb = image_embeddings(head, x_val)
        i2t = recall_i2t(emb, y_val, mean_text)
        t2i = recall_t2i(emb, y_val, mean_text)
        row = {"epoch": epoch + 1, "loss": round(loss_sum / steps, 4),
               "temperature": round(1 / head.logit_scale.detach().exp().clamp(max=cfg.max_logit_scale).item(), 4),
               "heldout_i2t_R@1": round(i2t["R@1"], 4), "heldout_i2t_R@5": round(i2t["R@5"], 4),
               "heldout_t2i_R@1": round(t2i["R@1"], 4)}
        history.append(row)
        # i2t MRR + t2i R@1: both directions, and MRR still moves once R@1 saturates on near-duplicate photos.
        score = i2t["MRR"] + t2i["R@1"]
        if score > best["score"]:
            best = {"score": score, "state": copy.deepcopy(head.state_dict()), "epoch": epoch + 1}
        bar.set_postfix(loss=f"{row['loss']:.3f}", i2t1=f"{i2t['R@1']:.3f}", t2i1=f"{t2i['R@1']:.3f}")
        if epoch + 1 - best["epoch"] >= cfg.patience:
            say(f"early stop after epoch {epoch + 1}: no held-out progress for {cfg.patience} epochs")
            break
    bar.close()
    head.load_state_dict(best["state"])
    head.eval()
    info = {"best_epoch": best["epoch"], "epochs_run": len(history), "train_seconds": round(time.perf_counter() - t0, 1),
            "config": asdict(cfg), "steps": step}
    return head, history, info


def save_head(path, head: AlignHead, meta: dict) -> None:
    from pathlib import Path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    cfg = meta.get("training", {}).get("config", {})
    torch.save({"format": HEAD_FORMAT, "version": 1, "d_in": int(head.mu.shape[0]),
                "d_out": int(head.proj[-1].out_features), "hidden": int(cfg.get("hidden", 0)),
                "state_dict": {k: v.detach().clone() for k, v in head.state_dict().items()}, "meta": meta}, str(p))


def load_head(path) -> tuple[AlignHead, dict]:
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"alignment head {p} not found (train one with 'storeclerk train align')")
    try:
        d = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to the operator
        raise ConfigError(f"{p} is not a readable torch file: {exc}") from exc
    if not isinstance(d, dict) or d.get("format") != HEAD_FORMAT:
        raise ConfigError(f"{p} is not a storeclerk alignment head")
    head = AlignHead(int(d["d_in"]), int(d["d_out"]), int(d["hidden"]))
    head.load_state_dict(d["state_dict"])
    return head.eval(), d["meta"]


class _Folded(nn.Module):
    def __init__(self, proj: nn.Sequential):
        super().__init__()
        self.proj = proj

    def forward(self, feats):
        return F.normalize(self.proj(feats), dim=-1)


def folded(head: AlignHead) -> nn.Module:
    """The same function without the standardisation ops: ``(x - mu) / sd`` folded into the first linear layer
    (W' = W / sd, b' = b - W' mu), dropout removed. The exported graph then feeds the raw pooled features, the
    tensor the classifier heads already read, straight into one Gemm."""
    layers = [m for m in head.proj if not isinstance(m, nn.Dropout)]
    first = layers[0]
    w = first.weight.detach() / head.sd[None, :]
    lin = nn.Linear(first.in_features, first.out_features)
    lin.weight.data.copy_(w)
    lin.bias.data.copy_(first.bias.detach() - w @ head.mu)
    rest = [copy.deepcopy(m) for m in layers[1:]]
    return _Folded(nn.Sequential(lin, *rest)).eval()
