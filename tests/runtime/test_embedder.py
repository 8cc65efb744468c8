"""The bundle's retrieval model (export/retrieval.py) and its torch-free embedder (runtime/embedder.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from runtime.bundle import load_bundle, sha256_file, write_manifest
from runtime.embedder import MODEL, SentenceEmbedder, retrieval_embedder
from runtime.engine import Engine
from runtime.errors import BundleError
from runtime.paths import default_bundle_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    emb = SentenceEmbedder.from_bundle(default_bundle_dir(), providers=["cpu"])
    yield emb
    emb.engine.close()


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


# --- the bundle ------------------------------------------------------------------------------------------------


def test_default_bundle_has_a_verified_retrieval_model() -> None:
    bundle = load_bundle(default_bundle_dir(), verify=True)  # raises on any size/sha256/opset mismatch
    assert set(bundle.models) >= {"intent", MODEL}
    spec = bundle.model(MODEL)
    assert [t.name for t in spec.inputs] == ["input_ids", "attention_mask"]
    assert [(t.name, t.shape) for t in spec.outputs] == [("embedding", ("batch", 384))]
    variant = spec.variants[spec.default_variant]
    assert variant.precision == "int8" and variant.opset == 17 and variant.quantization["per_channel"] is True
    assert spec.extra["parity"]["int8"]["passed"] and spec.extra["parity"]["int8"]["mean_cosine"] >= 0.99
    assert "not fine-tuned" in spec.extra["base_model"]
    files = bundle.manifest["files"]
    for rel in (variant.file, spec.extra["tokenizer"]["file"]):
        assert rel.startswith(f"{MODEL}/")
        assert files[rel] == {"sha256": sha256_file(bundle.root / rel), "bytes": (bundle.root / rel).stat().st_size}
    # The intent model still has its own files, listed and hashed.
    for v in bundle.model("intent").variants.values():
        assert v.file.startswith("intent/") and v.file in files


# --- embed() ---------------------------------------------------------------------------------------------------


def test_embed_shapes_normalisation_and_empty_rows(embedder: SentenceEmbedder) -> None:
    texts = ["", "where is the oat milk", None, "   \n\t", "what time do you close on Sunday", b"\xff\xfe", 42]
    v = embedder.embed(texts)
    assert v.shape == (len(texts), 384) and v.dtype == np.float32
    assert np.all(np.isfinite(v))
    norms = np.linalg.norm(v, axis=1)
    for i in (0, 2, 3):
        assert norms[i] == 0.0, texts[i]
    for i in (1, 4, 5, 6):
        assert abs(norms[i] - 1.0) < 1e-5, texts[i]
    assert embedder.embed([]).shape == (0, 384)
    assert embedder.embed(["", None]).shape == (2, 384) and not embedder.embed(["", None]).any()
    assert np.array_equal(embedder(["hello"]), embedder.embed(["hello"]))


def test_embed_keeps_order_across_length_sorted_batches(embedder: SentenceEmbedder) -> None:
    # 40 distinct texts of very different lengths: more than one batch, and sorting by length reorders them.
    base = ["do you sell gluten-free bread", "where are the toilets", "can I pay with my phone",
            "my card was declined at the till", "is there parking for bikes", "what time do you open on Saturday",
            "I want to speak to a manager about a rude cashier", "do you have lactose-free milk",
            "where can I recycle batteries", "how much does a paper bag cost"]
    pairs = [(j, t if k == 0 else f"{t} {'please ' * k}".strip()) for k in range(4) for j, t in enumerate(base)]
    pairs = pairs[::-1]
    topic = np.array([j for j, _ in pairs])
    texts = [t for _, t in pairs]
    batch = embedder.embed(texts)
    single = np.stack([embedder.embed([t])[0] for t in texts])
    sims = batch @ single.T
    # Dynamic INT8 quantises activations per batch, so a row differs slightly with its batch mates; it is
    # still far closer to its own single-text embedding than to any text about something else.
    assert np.all(np.diag(sims) > 0.9)
    other = topic[:, None] != topic[None, :]
    assert np.all(np.diag(sims)[:, None] > np.where(other, sims, -1.0))


def test_close_sentences_score_higher_than_unrelated_ones(embedder: SentenceEmbedder) -> None:
    triples = [
        ("What time do you close today?", "When are you open?", "Do you sell gluten-free bread?"),
        ("can I bring this back for a refund", "how do I return something I bought", "where is the oat milk"),
        ("my card was declined", "the payment didn't go through", "do you have fresh basil"),
        ("is there a toilet in the store", "where are the restrooms", "I want to cancel my order"),
        ("where can I charge my electric car", "EV charging points", "how much is a loaf of bread"),
    ]
    for anchor, close, unrelated in triples:
        a, c, u = embedder.embed([anchor, close, unrelated])
        assert cos(a, c) > cos(a, u) + 0.2, (anchor, cos(a, c), cos(a, u))


# --- older bundles ---------------------------------------------------------------------------------------------


def test_bundle_without_retrieval_model_gives_none(tmp_path: Path) -> None:
    src = load_bundle(default_bundle_dir(), verify=False)
    old = tmp_path / "intent-only"
    for rel in src.manifest["files"]:
        if rel.startswith("intent/"):
            (old / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src.root / rel, old / rel)
    manifest = {k: v for k, v in src.manifest.items() if k != "files"}
    manifest["models"] = {"intent": src.manifest["models"]["intent"]}
    write_manifest(old, manifest)
    with Engine(old, providers=["cpu"]) as engine:
        assert retrieval_embedder(engine) is None
        with pytest.raises(BundleError, match="no 'retrieval' model"):
            SentenceEmbedder(engine)


# --- the kiosk process -----------------------------------------------------------------------------------------


def test_embedding_in_fresh_process_never_imports_torch() -> None:
    code = textwrap.dedent(f"""
        import json, sys
        from runtime.embedder import retrieval_embedder
        from runtime.engine import Engine
        with Engine({str(default_bundle_dir())!r}, providers=["cpu"], threads=1) as engine:
            emb = retrieval_embedder(engine)
            v = emb.embed(["where is the oat milk", ""])
        heavy = [m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules]
        print(json.dumps({{"heavy": heavy, "shape": list(v.shape)}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"heavy": [], "shape": [2, 384]}
