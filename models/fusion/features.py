"""Per-modality features for composed turns, computed once by the kiosk's own runtime code and cached.

* text: the intent model's sentence embedding (``runtime.intents.IntentClassifier.embed``: the same ONNX
  encoder, tokenizer and normalisation the kiosk runs), keyed by sentence.
* image: the product recognizer's calibrated softmax (``runtime.vision.products.ProductRecognizer``, the
  bundle's temperature) on every Grocery Store photo of a split and on open-set negatives cut from them
  (``models.products.openset.negatives``), truncated to the top ``IMAGE_TOP_K`` as a sighting carries it.
* audio: prosody (``runtime.voice.prosody``) of sentences synthesised calm and agitated by espeak-ng and Piper
  (both run as programs: GPL, DESIGN §5). Train/dev use espeak-ng's US voice with four variants and Piper's
  joe; the test split uses a voice no training row heard (espeak-ng's British RP with the female ``f3``
  variant). A random ±6 dB gain per recording keeps loudness from being a clean cue, as a microphone's
  distance would.

Caches live under ``build/fusion`` and record what they were computed from (model sha256, file lists, seeds);
a cache that does not match is recomputed, never trusted.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime.errors import DataError
from runtime.fusion import IMAGE_TOP_K, truncate_probs

log = logging.getLogger("storeclerk.fusion")

RATE = 16000
NEGATIVES_PER_KIND = 40
PHOTO_DEV_FRACTION = 0.15
# Prosody pool sizes: sentences per split, each spoken once calm and once agitated.
VOICE_SENTENCES = {"train": 160, "dev": 40, "test": 100}
TRAIN_VOICES = ("espeak-us+m1", "espeak-us+m3", "espeak-us+f2", "espeak-us+f4", "piper-joe")
TEST_VOICES = ("espeak-gb-rp+f3",)
# espeak-ng settings (words/min, pitch 0-99, amplitude 0-200); the ranges overlap on purpose.
ESPEAK = {0: {"speed": (130, 180), "pitch": (25, 55), "amp": (70, 120)},
          1: {"speed": (165, 230), "pitch": (45, 85), "amp": (110, 190)}}
# Piper: phoneme length, volume, and a resampling factor that raises pitch and tempo together.
PIPER = {0: {"length": (1.0, 1.15), "volume": (0.7, 1.0), "shift": (0.96, 1.02)},
         1: {"length": (0.78, 0.9), "volume": (1.3, 1.7), "shift": (1.04, 1.12)}}
GAIN_DB = 6.0


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _model_files(bundle, name: str) -> dict[str, str]:
    spec = bundle.model(name)
    return {v.file: bundle.sha256(v.file) for v in spec.variants.values()}


# --- text ------------------------------------------------------------------------------------------------------


class TextCache:
    """Sentence → embedding, persisted; the key includes the encoder's files so a new encoder starts afresh."""

    def __init__(self, path: Path, classifier, encoder_files: dict[str, str]):
        self.path, self.classifier = Path(path), classifier
        self.key = _digest(encoder_files)
        self.index: dict[str, int] = {}
        self.rows = np.zeros((0, 384), np.float32)
        if self.path.exists():
            z = np.load(self.path, allow_pickle=False)
            if str(z["key"]) == self.key:
                self.rows = z["emb"]
                self.index = {t: i for i, t in enumerate(z["texts"].tolist())}

    def embed(self, texts: Sequence[str], progress: bool = True) -> np.ndarray:
        new = sorted({t for t in texts if t not in self.index})
        if new:
            from tqdm.auto import tqdm

            chunks = []
            for s in tqdm(range(0, len(new), 256), desc="text embeddings", unit="x256", disable=not progress):
                chunks.append(self.classifier.embed(new[s : s + 256]))
            emb = np.concatenate(chunks).astype(np.float32)
            if self.rows.shape[1] != emb.shape[1]:
                self.rows = np.zeros((0, emb.shape[1]), np.float32)
            base = len(self.rows)
            self.rows = np.concatenate([self.rows, emb])
            self.index.update({t: base + i for i, t in enumerate(new)})
            texts_arr = np.array(sorted(self.index, key=self.index.get))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(self.path, key=self.key, texts=texts_arr, emb=self.rows)
        return self.rows[[self.index[t] for t in texts]]


# --- images ----------------------------------------------------------------------------------------------------


def photo_splits(grocery: Path) -> dict[str, list]:
    """train / dev (a class-stratified 15% of train.txt, seed 0) / test (val.txt) photo items."""
    from models.products.data import load_dataset, read_list, stratified_holdout

    catalog, items = load_dataset(grocery, grocery / "train.txt")
    train, dev = stratified_holdout(items, PHOTO_DEV_FRACTION, seed=0)
    test = read_list(grocery / "val.txt", grocery, catalog)
    return {"train": train, "dev": dev, "test": test}


def image_features(bundle_path: Path, grocery: Path, cache: Path, progress: bool = True) -> dict[str, dict]:
    """split → {"probs": (n, 81) top-k softmax, "labels": (n,), "neg_probs": (m, 81), "paths": [...]}."""
    from runtime.engine import Engine
    from runtime.vision.products import ProductRecognizer, _softmax, preprocess

    engine = Engine(bundle_path, providers=["cpu"])
    try:
        splits = photo_splits(grocery)
        key = _digest({"products": _model_files(engine.bundle, "products"), "top_k": IMAGE_TOP_K,
                       "neg": NEGATIVES_PER_KIND, **{s: [str(i.path) for i in v] for s, v in splits.items()}})
        if cache.exists():
            z = np.load(cache, allow_pickle=False)
            if str(z["key"]) == key:
                return {s: {"probs": z[f"{s}_probs"], "labels": z[f"{s}_labels"], "neg_probs": z[f"{s}_neg"],
                            "paths": [str(i.path) for i in splits[s]]} for s in splits}
        rec = ProductRecognizer(engine)
        from tqdm.auto import tqdm

        from models.products.data import load_item_image
        from models.products.openset import negatives

        def probs_of(images: list[np.ndarray]) -> np.ndarray:
            x = np.stack([preprocess(im, rec.preprocess_params) for im in images])
            fine, _ = rec.logits(x)
            return truncate_probs(_softmax(fine.astype(np.float64) / rec.temperature).astype(np.float32))

        out, arrays = {}, {"key": key}
        for s, items in splits.items():
            probs, imgs_for_neg = [], []
            for b in tqdm(range(0, len(items), 16), desc=f"recognizer on {s} photos", unit="x16", disable=not progress):
                imgs = [load_item_image(it) for it in items[b : b + 16]]
                imgs_for_neg += imgs[:2]  # a sample of the split's own photos to cut negatives from
                probs.append(probs_of(imgs))
            neg_imgs, _ = negatives(imgs_for_neg, NEGATIVES_PER_KIND, seed={"train": 0, "dev": 1, "test": 2}[s])
            neg = np.concatenate([probs_of(neg_imgs[b : b + 16]) for b in range(0, len(neg_imgs), 16)])
            p = np.concatenate(probs)
            labels = np.array([it.fine for it in items], np.int64)
            out[s] = {"probs": p, "labels": labels, "neg_probs": neg, "paths": [str(i.path) for i in items]}
            arrays |= {f"{s}_probs": p, f"{s}_labels": labels, f"{s}_neg": neg}
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **arrays)
        return out
    finally:
        engine.close()


# --- audio -----------------------------------------------------------------------------------------------------


def _piper_voice() -> str:
    from runtime.voice.tts import default_voice_path

    return str(default_voice_path())


def _espeak(voice: str, text: str, out: Path, speed: int, pitch: int, amp: int) -> None:
    if not shutil.which("espeak-ng"):
        raise DataError("espeak-ng is not installed (sudo apt-get install espeak-ng): it speaks the prosody set")
    name = {"espeak-us": "en-us", "espeak-gb-rp": "en-gb-x-rp"}[voice.split("+")[0]]
    variant = voice.split("+")[1] if "+" in voice else ""
    v = f"{name}+{variant}" if variant else name
    subprocess.run(["espeak-ng", "-v", v, "-s", str(speed), "-p", str(pitch), "-a", str(amp), "-w", str(out), text],
                   check=True, capture_output=True, timeout=60)


def _piper_batch(texts: Sequence[str], outdir: Path, length: float, volume: float) -> list[Path]:
    """One Piper process for many sentences (its load costs more than a sentence); files in input order."""
    piper = Path(sys.executable).with_name("piper")
    inp = outdir / "in.txt"
    inp.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
    r = subprocess.run([str(piper) if piper.exists() else "piper", "-m", _piper_voice(), "-i", str(inp), "-d",
                        str(outdir), "--output-dir-naming", "timestamp", "--length-scale", f"{length:.3f}",
                        "--volume", f"{volume:.3f}"], check=True, capture_output=True, text=True, timeout=600)
    # Piper logs "Wrote PATH" once per line, in order: the only reliable map from sentence to file.
    wrote = [line.split("Wrote ", 1)[1].strip() for line in r.stderr.splitlines() if "Wrote " in line]
    if len(wrote) != len(texts):
        raise DataError(f"piper wrote {len(wrote)} files for {len(texts)} sentences: {r.stderr[-400:]}")
    return [Path(w) if Path(w).is_absolute() else Path.cwd() / w for w in wrote]


def _resample(x: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (pitch and tempo up together), by linear interpolation."""
    n = int(len(x) / factor)
    return np.interp(np.arange(n) * factor, np.arange(len(x)), x.astype(np.float64))


def _gain(x: np.ndarray, db: float) -> np.ndarray:
    return np.clip(np.rint(x.astype(np.float64) * 10 ** (db / 20)), -32768, 32767).astype(np.int16)


def voice_plan(pools: dict[str, dict[str, list[str]]], seed: int) -> list[dict]:
    """Which sentence each split's prosody pool speaks, in which voice, calm or agitated, with which settings."""
    rng = np.random.default_rng(seed + 7)
    plan = []
    for split, n in VOICE_SENTENCES.items():
        sents = sorted({t for rows in pools[split].values() for t in rows if 2 <= len(t.split()) <= 25})
        pick = [sents[i] for i in rng.choice(len(sents), size=min(n, len(sents)), replace=False)]
        voices = TEST_VOICES if split == "test" else TRAIN_VOICES
        for k, text in enumerate(pick):
            voice = voices[k % len(voices)]
            for arousal in (0, 1):
                if voice.startswith("piper"):
                    s = PIPER[arousal]
                    # Piper's settings apply per process: two presets per arousal keep the batches few.
                    settings = {"length": s["length"][int(rng.integers(2))], "volume": s["volume"][int(rng.integers(2))],
                                "shift": float(rng.uniform(*s["shift"]))}
                else:
                    s = ESPEAK[arousal]
                    settings = {k2: int(rng.integers(lo, hi + 1)) for k2, (lo, hi) in s.items()}
                plan.append({"split": split, "voice": voice, "arousal": arousal, "text": text,
                             "words": len(text.split()), "gain_db": float(rng.uniform(-GAIN_DB, GAIN_DB)), **settings})
    return plan


def prosody_pool(pools: dict[str, dict[str, list[str]]], cache_dir: Path, seed: int = 0,
                 progress: bool = True) -> dict[str, dict]:
    """split → {"vectors": (n, 8), "arousal": (n,), "words": (n,), "voices": [...]} (cached under cache_dir)."""
    from device.wavio import read_wav
    from runtime.voice.prosody import FEATURES, prosody

    plan = voice_plan(pools, seed)
    key = _digest({"plan": plan, "features": FEATURES})
    cache = cache_dir / "prosody.npz"
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        if str(z["key"]) == key:
            return _prosody_out(plan, z["vectors"])
    from tqdm.auto import tqdm

    wav_dir = cache_dir / "voice"
    wav_dir.mkdir(parents=True, exist_ok=True)
    pcm: dict[int, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="storeclerk-fusion-voice-") as tmpd:
        tmp = Path(tmpd)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(plan):
            if p["voice"].startswith("piper"):
                groups.setdefault((p["length"], p["volume"]), []).append(i)
        for (length, volume), idx in tqdm(groups.items(), desc="piper batches", disable=not progress):
            d = tmp / f"piper-{length}-{volume}"
            d.mkdir()
            for i, f in zip(idx, _piper_batch([plan[i]["text"] for i in idx], d, length, volume), strict=True):
                pcm[i] = read_wav(f, RATE)
        for i, p in enumerate(tqdm(plan, desc="espeak-ng + prosody", disable=not progress)):
            if i not in pcm:
                f = tmp / f"{i}.wav"
                _espeak(p["voice"], p["text"], f, p["speed"], p["pitch"], p["amp"])
                pcm[i] = read_wav(f, RATE)
    vectors = np.zeros((len(plan), len(FEATURES)), np.float32)
    from device.wavio import write_wav

    with open(wav_dir / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "split", "voice", "arousal", "gain_db", "text"])
        for i, p in enumerate(plan):
            x = pcm[i]
            if p.get("shift"):
                x = _resample(x, p["shift"])
            pad = np.zeros(int(0.3 * RATE))
            x = _gain(np.concatenate([pad, x.astype(np.float64), pad]), p["gain_db"])
            vectors[i] = prosody(x, RATE, words=p["words"]).as_vector()
            name = f"{p['split']}-{i:04d}.wav"
            write_wav(wav_dir / name, x, RATE)
            w.writerow([name, p["split"], p["voice"], p["arousal"], round(p["gain_db"], 2), p["text"]])
    np.savez(cache, key=key, vectors=vectors)
    return _prosody_out(plan, vectors)


def _prosody_out(plan: list[dict], vectors: np.ndarray) -> dict[str, dict]:
    out = {}
    for split in VOICE_SENTENCES:
        idx = [i for i, p in enumerate(plan) if p["split"] == split]
        out[split] = {"vectors": vectors[idx], "arousal": np.array([plan[i]["arousal"] for i in idx]),
                      "words": np.array([plan[i]["words"] for i in idx]),
                      "voices": sorted({plan[i]["voice"] for i in idx})}
    return out


def sources(bundle) -> dict:
    """The bundle models the features came from (the runtime refuses a fusion model whose sources changed)."""
    return {"text": {"model": "intent", "output": "embedding", "files": _model_files(bundle, "intent")},
            "image": {"model": "products", "output": "fine_logits → softmax(T) → top-k", "files": _model_files(bundle, "products")}}

