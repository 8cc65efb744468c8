"""Frozen all-MiniLM-L6-v2 + logistic regression on CLINC150 (150 in-scope intents): the baseline that the
fine-tuned encoder is compared against. Writes bench/results/frozen_vs_finetuned.txt."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    import torch
    from sklearn.linear_model import LogisticRegression

    from models.text_encoder import IntentModel, base_model_dir
    from models.train_intents import embed_and_logits
    from runtime.tokenizer import load_tokenizer

    shared = REPO.parent / "shared" / "data" / "clinc150" / "data_full.json"
    d = json.loads(shared.read_text())
    torch.manual_seed(0)
    model = IntentModel.from_pretrained(2)
    tok = load_tokenizer(base_model_dir() / "tokenizer.json")
    tr = d["train"]
    te = d["test"]
    xtr, _ = embed_and_logits(model, tok, [t for t, _ in tr])
    xte, _ = embed_and_logits(model, tok, [t for t, _ in te])
    clf = LogisticRegression(C=10.0, max_iter=2000).fit(xtr, [label for _, label in tr])
    acc = float(np.mean(clf.predict(xte) == np.array([label for _, label in te])))
    tuned = json.loads((REPO / "bench" / "results" / "intent_domains.json").read_text())["clinc150"]["in_scope_accuracy"]
    line = (f"frozen encoder + logistic regression (C=10, on the 15,000 in-scope training rows) {acc:.4f}; "
            f"fine-tuned through `storeclerk train intents` {tuned:.4f} (also rejecting out-of-scope).")
    (REPO / "bench" / "results" / "frozen_vs_finetuned.txt").write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
