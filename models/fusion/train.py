"""Train and evaluate the fusion variants on composed turns (docs/fusion.md).

    python -m models.fusion.train [--bundle models/bundles/kiosk] [--work build/fusion] [--variants early,late,attention]
    python -m models.fusion.train eval [--work build/fusion]        # the test split, every modality subset

``train`` composes the splits (cached features: ``models.fusion.features``), trains each variant with random
modality dropout, keeps each variant's best epoch on the *dev* split, picks the variant with the best dev score
(mean of intent accuracy, view-reference accuracy and frustration F1, every modality present) and writes one
checkpoint per variant plus ``chosen.json``. The test split is only read by ``eval`` and ``bench/fusion_eval.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.fusion import compose as C
from runtime.errors import DataError
from runtime.fusion import FACE_CLASSES, INPUTS, OPTIONAL

log = logging.getLogger("storeclerk.fusion")

REPO = Path(__file__).resolve().parents[2]
DEFAULT_WORK = REPO / "build" / "fusion"
DEFAULT_BUNDLE = REPO / "models" / "bundles" / "kiosk"
DEFAULT_SHARED = Path(os.environ.get("STORECLERK_SHARED_DATA", REPO.parent / "shared" / "data"))
N_TURNS = {"train": 16000, "dev": 3000, "test": 4000}
SPLIT_SEEDS = {"train": 11, "dev": 12, "test": 13}
# Modality subsets of the ablation: what is offered to the model at evaluation (text is always there).
SUBSETS = {
    "text": (),
    "text+image": ("image",),
    "text+audio": ("audio",),
    "text+image+audio": ("image", "audio"),
    "all (with face)": ("image", "face", "audio"),
}
KIND_CODES = {"deictic": 0, "named": 1, "general": 2}
IMAGE_CODES = {"none": 0, "photo": 1, "barcode": 2, "negative": 3}


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    modality_dropout: float = 0.25
    text_noise: float = 0.02  # std of Gaussian noise per dimension of the unit-length text embedding
    seed: int = 0
    threads: int = 1


# --- data ------------------------------------------------------------------------------------------------------


def prepare(bundle: Path, shared: Path, grocery: Path, work: Path, seed: int = 0, bitext_csv: Path | None = None,
            n_turns: dict[str, int] | None = None, progress: bool = True) -> dict:
    """Compose the three splits and turn them into arrays (``work/data.npz``); returns {split: arrays, "meta": ...}."""
    from models.fusion import features as F
    from runtime.engine import Engine
    from runtime.intents import IntentClassifier

    n_turns = {**N_TURNS, **(n_turns or {})}
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    work.mkdir(parents=True, exist_ok=True)
    say("utterance pools (data/intents, Bitext train part, CLINC oos | data/eval, Bitext hold-out)")
    pools = C.utterance_pools(shared, bitext_csv, seed)
    templates = C.read_templates()
    phrases = C.read_phrases()
    referents = C.read_referents()
    # Dev gets question phrasings and referents training never sees, as the test split does: otherwise the
    # epoch and variant picked are the ones that best memorise the training templates.
    dev_t = [t for t in templates["train"] if C.bucket(t.text) < C.DEV_FRACTION]
    templates = {"train": [t for t in templates["train"] if t not in dev_t], "dev": dev_t, "test": templates["test"]}
    dev_r = [r for r in referents["train"] if r in C.DEV_REFERENTS]
    referents = {"train": [r for r in referents["train"] if r not in dev_r], "dev": referents["train"],
                 "test": referents["test"]}
    names, product_ids = C.product_names()
    say("product recognizer outputs on the Grocery Store photos (cached)")
    images = F.image_features(bundle, grocery, work / "images.npz", progress)
    say("prosody of synthesised speech, calm and agitated (cached)")
    voice = F.prosody_pool(pools, work, seed, progress)

    engine = Engine(bundle, providers=["cpu"])
    try:
        labels = list(engine.bundle.model("intent").extra["labels"])
        sources = F.sources(engine.bundle)
        image_labels = list(engine.bundle.model("products").extra["labels"]["fine"])
        texts = F.TextCache(work / "text.npz", IntentClassifier(engine), F._model_files(engine.bundle, "intent"))
        out: dict = {}
        counts = {}
        for split in C.SPLITS:
            side = "test" if split == "test" else "train"
            unknown = sorted(set(pools[split]) - set(labels))
            if unknown:
                raise DataError(f"{split} utterances carry intents the intent bundle does not know: {unknown}")
            p = C.Pools(pools[split], templates[split], phrases[(side, "frustrated")], phrases[(side, "polite")],
                        images[split]["labels"], len(images[split]["neg_probs"]), voice[split]["arousal"],
                        voice[split]["words"], names, referents[split], len(image_labels))
            turns = C.compose(p, n_turns[split], seed * 1000 + SPLIT_SEEDS[split])
            counts[split] = C.label_counts(turns)
            say(f"{split}: {len(turns)} turns; embedding their text")
            emb = texts.embed([t.text for t in turns], progress)
            out[split] = arrays(turns, emb, images[split], voice[split]["vectors"], labels)
        meta = {"labels": labels, "image_labels": image_labels, "product_ids": product_ids, "sources": sources,
                "counts": counts, "seed": seed, "voices": {s: voice[s]["voices"] for s in C.SPLITS},
                "photos": {s: len(images[s]["labels"]) for s in C.SPLITS},
                "negatives": {s: len(images[s]["neg_probs"]) for s in C.SPLITS},
                "utterances": {s: sum(len(v) for v in pools[s].values()) for s in C.SPLITS}}
    finally:
        engine.close()
    save_data(work / "data.npz", out, meta)
    out["meta"] = meta
    return out


def arrays(turns: Sequence[C.Turn], emb: np.ndarray, images: dict, prosody_vectors: np.ndarray,
           labels: Sequence[str]) -> dict[str, np.ndarray]:
    """Composed turns → model inputs and labels (plus what evaluation needs: kinds, true products)."""
    n = len(turns)
    n_img = images["probs"].shape[1]
    image = np.zeros((n, n_img), np.float32)
    face = np.zeros((n, len(FACE_CLASSES)), np.float32)
    audio = np.zeros((n, prosody_vectors.shape[1]), np.float32)
    mask = np.zeros((n, len(OPTIONAL)), np.float32)
    index = {lab: i for i, lab in enumerate(labels)}
    for i, t in enumerate(turns):
        if t.image == "photo":
            image[i] = images["probs"][t.image_index]
        elif t.image == "negative":
            image[i] = images["neg_probs"][t.image_index]
        elif t.image == "barcode":
            image[i, t.product] = 1.0
        mask[i, 0] = t.image != "none"
        if t.face is not None:
            face[i], mask[i, 1] = t.face, 1.0
        if t.audio_index >= 0:
            audio[i], mask[i, 2] = prosody_vectors[t.audio_index], 1.0
    return {
        "text": emb.astype(np.float32), "image": image, "face": face, "audio": audio, "mask": mask,
        "y_intent": np.array([index[t.intent] for t in turns], np.int64),
        "y_refers": np.array([t.refers for t in turns], np.int64),
        "y_frustrated": np.array([t.frustrated for t in turns], np.int64),
        "kind": np.array([KIND_CODES[t.kind] for t in turns], np.int64),
        "image_src": np.array([IMAGE_CODES[t.image] for t in turns], np.int64),
        "product": np.array([t.product for t in turns], np.int64),
        "cue_text": np.array([t.cues["text"] for t in turns], bool),
        "cue_face": np.array([t.cues["face"] for t in turns], bool),
        "cue_audio": np.array([t.cues["audio"] == 1 for t in turns], bool),
        "texts": np.array([t.text for t in turns]),
    }


def save_data(path: Path, data: dict, meta: dict) -> None:
    flat = {f"{s}/{k}": v for s in C.SPLITS for k, v in data[s].items()}
    np.savez_compressed(path, meta=json.dumps(meta), **flat)


def load_data(path: Path) -> dict:
    if not path.exists():
        raise DataError(f"{path} not found: run 'python -m models.fusion.train' first (it composes the data)")
    z = np.load(path, allow_pickle=False)
    out: dict = {s: {} for s in C.SPLITS}
    for k in z.files:
        if "/" in k:
            s, name = k.split("/", 1)
            out[s][name] = z[k]
    out["meta"] = json.loads(str(z["meta"]))
    return out


def offer(d: dict[str, np.ndarray], subset: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The inputs with only ``subset`` of the optional modalities offered, and the view-reference labels that
    follow from it (a deictic question with the image withheld refers to nothing in view)."""
    keep = np.array([m in subset for m in OPTIONAL], np.float32)
    mask = d["mask"] * keep
    feed = {"text": d["text"], "mask": mask}
    for j, m in enumerate(OPTIONAL):
        feed[m] = d[m] * mask[:, j : j + 1]
    y_ref = d["y_refers"].copy()
    y_ref[(y_ref == 1) & (mask[:, 0] == 0)] = 0
    return feed, y_ref


# --- metrics ---------------------------------------------------------------------------------------------------


def _f1_binary(y: np.ndarray, pred: np.ndarray) -> float:
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    return 2 * tp / max(1, 2 * tp + fp + fn)


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Over every label that occurs as gold or prediction (docs/models.md's convention)."""
    f1s = []
    for lab in np.union1d(y, pred):
        f1s.append(_f1_binary((y == lab).astype(int), (pred == lab).astype(int)))
    return float(np.mean(f1s)) if f1s else 0.0


def metrics(d: dict[str, np.ndarray], outs: tuple[np.ndarray, np.ndarray, np.ndarray], subset: Sequence[str],
            threshold: float = 0.5) -> dict:
    intent_logits, refers_logit, frus_logit = (np.asarray(o) for o in outs)
    _, y_ref = offer(d, subset)
    pi = intent_logits.argmax(1)
    pr = (1 / (1 + np.exp(-refers_logit.reshape(-1))) >= threshold).astype(int)
    pf = (1 / (1 + np.exp(-frus_logit.reshape(-1))) >= threshold).astype(int)
    yi, yf = d["y_intent"], d["y_frustrated"]
    scored = y_ref >= 0
    m = {"n": int(len(yi)), "intent_accuracy": float((pi == yi).mean()), "intent_macro_f1": macro_f1(yi, pi),
         "refers_accuracy": float((pr[scored] == y_ref[scored]).mean()) if scored.any() else None,
         "frustration_f1": _f1_binary(yf, pf), "frustration_accuracy": float((pf == yf).mean())}
    # Deictic questions with a catalogue product in view (and the image offered): answered about the right
    # product = right intent and "refers to the view" → the product the recognizer (or the barcode) gives.
    deictic = (d["kind"] == KIND_CODES["deictic"]) & (d["product"] >= 0)
    if "image" in subset and deictic.any():
        ok = (pi == yi) & (pr == 1)
        m["deictic_n"] = int(deictic.sum())
        m["deictic_resolved"] = float(ok[deictic].mean())
        # End to end: …and that product is the one actually held up (bounded by the recognizer's accuracy).
        top1 = d["image"].argmax(1)
        m["deictic_true_product"] = float((ok & (top1 == d["product"]))[deictic].mean())
    else:
        m["deictic_n"], m["deictic_resolved"], m["deictic_true_product"] = int(deictic.sum()), None, None
    return m


def dev_score(m: dict) -> float:
    return (m["intent_accuracy"] + (m["refers_accuracy"] or 0.0) + m["frustration_f1"]) / 3


# --- training --------------------------------------------------------------------------------------------------


def torch_outputs(model, feed: dict[str, np.ndarray], batch: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import torch

    model.eval()
    outs: list[list[np.ndarray]] = [[], [], []]
    n = len(feed["text"])
    with torch.no_grad():
        for s in range(0, n, batch):
            res = model(*(torch.from_numpy(np.ascontiguousarray(feed[k][s : s + batch])) for k in INPUTS))
            for i, r in enumerate(res):
                outs[i].append(r.numpy())
    return tuple(np.concatenate(o) for o in outs)  # type: ignore[return-value]


def fit(kind: str, data: dict, cfg: TrainConfig, progress: bool = True) -> tuple[object, dict]:
    """Train one variant; the returned model is its best epoch on the dev split (all modalities)."""
    import torch

    from models.fusion.nets import FusionNet

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    tr, dev = data["train"], data["dev"]
    n_intents = len(data["meta"]["labels"])
    dims = {"text": tr["text"].shape[1], "image": tr["image"].shape[1], "face": tr["face"].shape[1],
            "audio": tr["audio"].shape[1]}
    model = FusionNet(kind, n_intents, dims)
    lr = cfg.lr / 2 if kind == "attention" else cfg.lr
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * int(np.ceil(len(tr["text"]) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    T = {k: torch.from_numpy(tr[k]) for k in ("text", "image", "face", "audio", "mask")}
    yi, yr, yf = (torch.from_numpy(tr[k]) for k in ("y_intent", "y_refers", "y_frustrated"))
    full = SUBSETS["all (with face)"]
    dev_feed, _ = offer(dev, full)
    best, best_state, history = -1.0, None, []
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"{kind}", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.from_numpy(rng.permutation(len(yi)))
        total = 0.0
        for s in range(0, len(order), cfg.batch_size):
            b = order[s : s + cfg.batch_size]
            # Modality dropout: a present modality goes missing as if its sensor had failed. Intent and
            # frustration keep their labels; "refers to the view" cannot hold with no view.
            drop = torch.from_numpy((rng.random((len(b), len(OPTIONAL))) < cfg.modality_dropout).astype(np.float32))
            mask = T["mask"][b] * (1 - drop)
            xs = [T[m][b] * mask[:, j : j + 1] for j, m in enumerate(OPTIONAL)]
            ref = yr[b].clone()
            ref[(ref == 1) & (mask[:, 0] == 0)] = 0
            text = T["text"][b]
            if cfg.text_noise:
                # The training set's few hundred question phrasings are points in embedding space; noise
                # around them keeps the heads from carving boundaries that only those points satisfy.
                text = text + cfg.text_noise * torch.randn(text.shape, generator=gen)
            li, lr_, lf = model(text, *xs, mask)
            loss = torch.nn.functional.cross_entropy(li, yi[b])
            scored = ref >= 0
            if scored.any():
                loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(lr_[scored, 0], ref[scored].float())
            loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(lf[:, 0], yf[b].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(b)
        m = metrics(dev, torch_outputs(model, dev_feed), full)
        score = dev_score(m)
        history.append({"epoch": epoch + 1, "loss": round(total / len(order), 4), "dev_score": round(score, 4),
                        "dev_intent_accuracy": round(m["intent_accuracy"], 4),
                        "dev_refers_accuracy": round(m["refers_accuracy"], 4),
                        "dev_frustration_f1": round(m["frustration_f1"], 4)})
        bar.set_postfix(loss=f"{total / len(order):.3f}", dev=f"{score:.4f}")
        if score > best:
            best, best_state = score, {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    info = {"best_dev_score": round(best, 4), "best_epoch": max(history, key=lambda h: h["dev_score"])["epoch"],
            "history": history, "train_seconds": round(time.perf_counter() - t0, 1),
            "parameters": int(sum(p.numel() for p in model.parameters())), "config": vars(cfg)}
    return model, info


def save_checkpoint(path: Path, model, info: dict, meta: dict) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config, "state": model.state_dict(), "info": info, "meta": meta}, path)


def load_checkpoint(path: Path):
    import torch

    from models.fusion.nets import build

    if not Path(path).exists():
        raise DataError(f"fusion checkpoint {path} not found (train with 'python -m models.fusion.train')")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = build(ck["config"])
    model.load_state_dict(ck["state"])
    model.eval()
    return model, ck


# --- tables ----------------------------------------------------------------------------------------------------


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def table(rows: Sequence[dict], cols: Sequence[tuple[str, str]]) -> str:
    head = "| " + " | ".join(c for c, _ in cols) + " |"
    sep = "| " + " | ".join("---" if i < 2 else "---:" for i in range(len(cols))) + " |"
    body = ["| " + " | ".join(_fmt(r.get(k)) for _, k in cols) + " |" for r in rows]
    return "\n".join([head, sep, *body])


ABLATION_COLS = (("variant", "variant"), ("modalities", "subset"), ("intent acc.", "intent_accuracy"),
                 ("intent macro-F1", "intent_macro_f1"), ("refers acc.", "refers_accuracy"),
                 ("deictic → right product (recognizer's)", "deictic_resolved"),
                 ("deictic → true product", "deictic_true_product"), ("frustration F1", "frustration_f1"))


def ablation(outputs_for: Callable[[str, dict], tuple], kinds: Sequence[str], d: dict) -> list[dict]:
    rows = []
    for kind in kinds:
        for name, subset in SUBSETS.items():
            feed, _ = offer(d, subset)
            rows.append({"variant": kind, "subset": name, **metrics(d, outputs_for(kind, feed), subset)})
    return rows


# --- command line ----------------------------------------------------------------------------------------------


def train_fusion_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="storeclerk train fusion", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE,
                    help="bundle whose intent encoder and product recognizer make the features")
    ap.add_argument("--shared-data", type=Path, default=DEFAULT_SHARED, help="folder with bitext/ and clinc150/")
    ap.add_argument("--bitext", type=Path, default=None, help="Bitext CSV (default: SHARED/bitext/customer_support_train.csv)")
    ap.add_argument("--grocery", type=Path, default=None, help="Grocery Store dataset/ (default: SHARED/grocery/dataset)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="caches, composed data and checkpoints")
    ap.add_argument("--variants", default="early,late,attention")
    ap.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reuse-data", action="store_true", help="train on WORK/data.npz as composed before")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from models.fusion.nets import KINDS

    kinds = [k for k in args.variants.split(",") if k]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        print(f"error: unknown variant(s) {bad}; choose from {', '.join(KINDS)}", file=sys.stderr)
        return 2
    try:
        if args.reuse_data:
            data = load_data(args.work / "data.npz")
        else:
            grocery = args.grocery or args.shared_data / "grocery" / "dataset"
            data = prepare(args.bundle, args.shared_data, grocery, args.work, args.seed, args.bitext)
        rows, infos = [], {}
        for kind in kinds:
            model, info = fit(kind, data, TrainConfig(epochs=args.epochs, seed=args.seed, threads=args.threads))
            dev_feed, _ = offer(data["dev"], SUBSETS["all (with face)"])
            info["dev"] = metrics(data["dev"], torch_outputs(model, dev_feed), SUBSETS["all (with face)"])
            save_checkpoint(args.work / f"{kind}.pt", model, info, data["meta"])
            infos[kind] = info
            rows.append({"variant": kind, "subset": "all (dev)", **info["dev"], "score": info["best_dev_score"],
                         "epoch": info["best_epoch"], "seconds": f"{info['train_seconds']:.1f}", "params": info["parameters"]})
    except Exception as exc:  # noqa: BLE001 - DataError and friends: one line for the operator
        if not getattr(exc, "code", None):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    chosen = max(infos, key=lambda k: infos[k]["best_dev_score"])
    (args.work / "chosen.json").write_text(json.dumps({"variant": chosen, "rule": "best dev score (mean of intent "
                                                       "accuracy, refers accuracy, frustration F1; all modalities)",
                                                       "dev_scores": {k: v["best_dev_score"] for k, v in infos.items()}},
                                                      indent=2) + "\n")
    print(table(rows, ABLATION_COLS[:5] + (("frustration F1", "frustration_f1"), ("dev score", "score"),
                                           ("best epoch", "epoch"), ("train s", "seconds"), ("parameters", "params"))))
    print(f"\nchosen on dev: {chosen} → {args.work / (chosen + '.pt')}")
    print(f"export: python -m export.fusion --checkpoint {args.work / (chosen + '.pt')} --bundle BUNDLE")
    return 0


def eval_fusion_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="storeclerk eval fusion", description="the test split, every modality subset")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--variants", default="early,late,attention")
    ap.add_argument("--split", default="test", choices=C.SPLITS)
    args = ap.parse_args(argv)
    try:
        data = load_data(args.work / "data.npz")
        models = {k: load_checkpoint(args.work / f"{k}.pt")[0] for k in args.variants.split(",") if k}
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = ablation(lambda k, feed: torch_outputs(models[k], feed), list(models), data[args.split])
    print(table(rows, ABLATION_COLS))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"]:
        return eval_fusion_main(argv[1:])
    return train_fusion_main(argv)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
