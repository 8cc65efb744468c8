"""Fine-tune the intent model: MiniLM + cosine head, length-bucketed batches, progress bars.

The out-of-scope decision and the calibration are fitted afterwards on a held-out calibration split
(see ``models/calibrate.py``); this module only learns the encoder and the head.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models.text_encoder import IntentModel
from runtime.tokenizer import encode_batch

log = logging.getLogger("storeclerk.train")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 6
    batch_size: int = 32
    lr: float = 8e-5  # encoder; small MiniLM tolerates a higher rate than BERT-base
    head_lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: float = 0.06
    label_smoothing: float = 0.1
    seed: int = 0
    threads: int = 0  # 0: torch's default (all cores)
    device: str = "auto"  # "auto": CUDA when a workstation has it, else CPU


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _batches(lengths: np.ndarray, batch_size: int, rng: random.Random) -> list[np.ndarray]:
    """Shuffle, then sort by length inside windows of 50 batches: little padding, still random."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    window = batch_size * 50
    out = []
    for s in range(0, len(idx), window):
        chunk = sorted(idx[s : s + window], key=lambda i: lengths[i])
        out += [np.array(chunk[j : j + batch_size]) for j in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def _pad(ids_list: Sequence[list[int]], rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids_list[i]) for i in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, i in enumerate(rows):
        seq = ids_list[i]
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
    return ids, mask


@torch.inference_mode()
def embed_and_logits(model: IntentModel, tok, texts: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    dev = next(model.parameters()).device
    embs, logits = [], []
    order = np.argsort([len(t) for t in texts])
    for s in range(0, len(texts), batch_size):
        rows = order[s : s + batch_size]
        ids, mask = encode_batch(tok, [texts[i] for i in rows])
        e, lg = model(torch.from_numpy(ids).to(dev), torch.from_numpy(mask).to(dev))
        embs.append(e.float().cpu().numpy())
        logits.append(lg.float().cpu().numpy())
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    return np.concatenate(embs)[inv], np.concatenate(logits)[inv]


def train(model: IntentModel, tok, texts: Sequence[str], labels: Sequence[int], cfg: TrainConfig,
          desc: str = "train") -> list[dict]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    dev = pick_device(cfg.device)
    model.to(dev)
    rng = random.Random(cfg.seed)
    ids_list = [e.ids for e in tok.encode_batch(list(texts))]
    lengths = np.array([len(x) for x in ids_list])
    y = torch.tensor(labels, dtype=torch.long, device=dev)

    # Head starts at class centroids of the pretrained embeddings.
    emb0, _ = embed_and_logits(model, tok, texts)
    model.init_head_from_centroids(torch.from_numpy(emb0).to(dev), y)

    head = [model.weight]
    enc = [p for n, p in model.named_parameters() if n != "weight"]
    no_decay = [p for n, p in model.encoder.named_parameters() if "bias" in n or "LayerNorm" in n]
    decay = [p for p in enc if all(p is not q for q in no_decay)]
    opt = torch.optim.AdamW(
        [{"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0},
         {"params": head, "lr": cfg.head_lr, "weight_decay": 0.0}]
    )
    steps_per_epoch = math.ceil(len(texts) / cfg.batch_size)
    total = max(1, steps_per_epoch * cfg.epochs)
    warm = max(1, int(total * cfg.warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (total - s) / max(1, total - warm))
    )
    history = []
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        t0, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        bar = tqdm(_batches(lengths, cfg.batch_size, rng), desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}",
                   unit="batch", leave=False, mininterval=1.0, disable=None)
        for rows in bar:
            ids, mask = _pad(ids_list, rows)
            ids, mask = ids.to(dev), mask.to(dev)
            _, logits = model(ids, mask)
            target = y[torch.from_numpy(rows).to(dev)]
            loss = F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            loss_sum += loss.item() * len(rows)
            correct += (logits.argmax(1) == target).sum().item()
            seen += len(rows)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": correct / seen,
                        "seconds": time.perf_counter() - t0})
        log.info("%s epoch %d/%d: loss %.4f, train accuracy %.4f, %.0f s", desc, epoch + 1, cfg.epochs,
                 loss_sum / seen, correct / seen, history[-1]["seconds"])
    model.eval().to("cpu")
    return history


def fit(examples: Sequence, oos_label: str | None, cfg: TrainConfig, calibration_fraction: float = 0.1,
        oos_calibration_fraction: float = 0.3, meta: dict | None = None):
    """Split off a stratified calibration set, fine-tune on the rest, return an ``IntentCheckpoint``.

    The out-of-scope label gets a larger calibration share because its threshold is fitted on it and
    out-of-scope rows are usually few (CLINC150: 100 of 15,100).
    """
    from models.checkpoint import IntentCheckpoint
    from models.data import check_trainable, stratified_split
    from models.text_encoder import base_model_dir
    from runtime.tokenizer import load_tokenizer

    check_trainable(examples, "training data")
    per_label = {oos_label: oos_calibration_fraction} if oos_label else None
    train_rows, cal_rows = stratified_split(examples, calibration_fraction, cfg.seed, per_label=per_label)
    labels = sorted({e.label for e in examples})
    index = {lab: i for i, lab in enumerate(labels)}
    tok_path = base_model_dir() / "tokenizer.json"
    tok = load_tokenizer(tok_path)
    model = IntentModel.from_pretrained(len(labels))
    t0 = time.perf_counter()
    history = train(model, tok, [e.text for e in train_rows], [index[e.label] for e in train_rows], cfg)
    info = {
        "train_seconds": round(time.perf_counter() - t0, 1),
        "history": history,
        "config": cfg.__dict__,
        "counts": {"train": len(train_rows), "calibration": len(cal_rows), "labels": len(labels)},
        **(meta or {}),
    }
    return IntentCheckpoint(model, labels, oos_label if oos_label in index else None, tok_path, cal_rows, info)
