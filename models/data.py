"""Reading labelled utterances for training and evaluation (CSV or Rasa NLU YAML), with clear errors.

Torch-free on purpose: `storeclerk eval` runs on the kiosk side, where only ONNX Runtime is installed.
"""

from __future__ import annotations

import csv
import io
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import DataError

log = logging.getLogger("storeclerk.data")

# Long enough for any customer sentence; protects training from a pasted novel in one cell.
MAX_TEXT_CHARS = 2000


@dataclass(frozen=True)
class Example:
    text: str
    label: str


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a CSV or YAML file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not valid UTF-8 (byte offset {exc.start}); save the file as UTF-8") from None


def read_labeled(path: str | Path, text_column: str = "text", label_column: str = "label") -> list[Example]:
    """Read (text, label) rows. ``.yml``/``.yaml`` is read as Rasa NLU; anything else as CSV/TSV."""
    path = Path(path)
    content = _decode(path)
    if path.suffix.lower() in (".yml", ".yaml"):
        examples = _read_rasa(path, content)
    else:
        examples = _read_csv(path, content, text_column, label_column)
    if not examples:
        raise DataError(f"{path}: no examples (the file has a header but no usable rows)")
    return examples


def _read_csv(path: Path, content: str, text_column: str, label_column: str) -> list[Example]:
    if not content.strip():
        raise DataError(f"{path}: the file is empty")
    # The header line decides the delimiter: sniffing a sample mis-reads files whose quoted cells span
    # lines (Bitext's multi-line responses).
    header = content.split("\n", 1)[0]
    delimiter = "\t" if path.suffix.lower() == ".tsv" else next((d for d in ",;\t" if d in header), ",")
    dialect = csv.excel_tab if delimiter == "\t" else csv.excel
    if delimiter == ";":
        dialect = type("semicolon", (csv.excel,), {"delimiter": ";"})
    reader = csv.DictReader(io.StringIO(content, newline=""), dialect=dialect)
    columns = reader.fieldnames or []
    missing = [c for c in (text_column, label_column) if c not in columns]
    if missing:
        raise DataError(
            f"{path}: no column {', '.join(repr(m) for m in missing)}; the columns are {columns}. "
            "Name them with --text-column and --label-column."
        )
    examples, empty_label_rows, empty_text = [], [], 0
    try:
        for row in reader:
            text = (row.get(text_column) or "").strip()
            label = (row.get(label_column) or "").strip()
            if not label:
                empty_label_rows.append(reader.line_num)
                continue
            if not text:
                empty_text += 1
                continue
            examples.append(Example(text[:MAX_TEXT_CHARS], label))
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from exc
    if empty_label_rows:
        shown = ", ".join(map(str, empty_label_rows[:10])) + (" ..." if len(empty_label_rows) > 10 else "")
        raise DataError(
            f"{path}: {len(empty_label_rows)} row(s) have an empty {label_column!r} (lines {shown}); "
            "label them or remove them"
        )
    if empty_text:
        log.warning("%s: skipped %d row(s) with empty text", path, empty_text)
    return examples


def _read_rasa(path: Path, content: str) -> list[Example]:
    """Rasa 3 NLU format: ``nlu: [{intent: NAME, examples: "- one\\n- two"}]``; entity markup is stripped."""
    import re

    import yaml

    try:
        doc = yaml.safe_load(content)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise DataError(f"{path}:{where} invalid YAML ({getattr(exc, 'problem', exc)})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("nlu"), list):
        raise DataError(f"{path}: not Rasa NLU YAML (expected a top-level 'nlu:' list)")
    markup = re.compile(r"\[([^\]]+)\](\{[^}]*\}|\([^)]*\))")
    examples = []
    for i, block in enumerate(doc["nlu"]):
        if not isinstance(block, dict) or "intent" not in block:
            continue  # synonyms, regexes and lookup tables are not intents
        label = str(block["intent"]).strip()
        body = block.get("examples") or ""
        if not isinstance(body, str) or not label:
            raise DataError(f"{path}: nlu item {i + 1} ({label or 'no intent name'}) has no 'examples' text")
        for line in body.splitlines():
            line = line.strip()
            if line.startswith("- "):
                text = markup.sub(r"\1", line[2:]).strip()
                if text:
                    examples.append(Example(text[:MAX_TEXT_CHARS], label))
    return examples


def check_trainable(examples: Sequence[Example], source: str) -> Counter:
    counts = Counter(e.label for e in examples)
    if len(counts) < 2:
        only = next(iter(counts), "none")
        raise DataError(f"{source}: training needs at least 2 classes; found only {only!r}")
    return counts


def stratified_split(
    examples: Sequence[Example], fraction: float, seed: int, min_keep: int = 2, per_label: dict[str, float] | None = None
) -> tuple[list[Example], list[Example]]:
    """Split off ``fraction`` of each label (at least one where the label has more than ``min_keep`` rows)."""
    by_label: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        by_label[e.label].append(e)
    rng = random.Random(seed)
    keep, held = [], []
    for label in sorted(by_label):
        rows = by_label[label][:]
        rng.shuffle(rows)
        frac = (per_label or {}).get(label, fraction)
        n = round(len(rows) * frac)
        if n == 0 and len(rows) > min_keep and frac > 0:
            n = 1
        n = min(n, max(0, len(rows) - min_keep))
        held += rows[:n]
        keep += rows[n:]
    rng.shuffle(keep)
    return keep, held
