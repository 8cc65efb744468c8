"""Shared fixtures. Everything runs offline: no hub, no network."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts"
CLI = [sys.executable, "-m", "runtime.cli"]


def run_cli(*args, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    """A small labelled set from the project's own kiosk data: 5 intents × 24 rows + 40 out-of-scope rows."""
    import csv

    rows: dict[str, list[str]] = {}
    with open(REPO / "data/intents/kiosk_basics.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.setdefault(r["label"], []).append(r["text"])
    with open(REPO / "data/eval/oos_kiosk.csv", newline="", encoding="utf-8") as f:
        oos = [r["text"] for r in csv.DictReader(f)]
    keep = ["find_product", "product_price", "store_hours", "greet", "contact_human_agent"]
    out = tmp_path_factory.mktemp("data") / "tiny.csv"
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["utterance", "intent"])
        for lab in keep:
            w.writerows((t, lab) for t in rows[lab][:24])
        w.writerows((t, "oos") for t in oos[:40])
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_csv) -> Path:
    """Trained and exported through the CLI, once per test session (~30 s on 2 cores)."""
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    p = run_cli("train", "intents", "--data", tiny_csv, "--text-column", "utterance", "--label-column", "intent",
                "--oos-label", "oos", "--out", out, "--epochs", "3", "--seed", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    return out


@pytest.fixture
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def kb():
    """The demo store's knowledge base (data/kb); a module that needs another one defines its own ``kb``."""
    from runtime.kb import KnowledgeBase

    return KnowledgeBase.load(REPO / "data" / "kb")


@pytest.fixture(scope="module")
def orders():
    """The demo orders in an in-memory order database (a test that changes orders builds its own)."""
    from runtime.orders import SqliteOrderSource

    src = SqliteOrderSource(":memory:")
    src.seed_from_csv(REPO / "data" / "kb" / "orders.csv")
    return src
