"""Evaluate the rule-based entity extractor (runtime/entities.py) on Bitext and on the hand-written gold set.

    python -m models.eval_entities [--bitext CSV] [--gold YAML] [--errors N]

Bitext (``customer_support_train.csv``) annotates AT MOST ONE entity per row, and its annotations are noisy:
the value is sometimes truncated ("3707955617" for the text "370795561790", "1" for "160 dollars"), ids drop
leading zeros ("123842" for "00123842"), and rows that plainly contain an entity are left unannotated (e.g.
"I expect a refund of 299 dollars" in track_refund). So here:

- gold = the annotated (type, value); a prediction matches if its type is the gold type and its normalized value
  equals the normalized annotated value OR the normalized text at the annotated offsets (extended to the whole
  number/word when the offsets cut it short);
- every other predicted entity of a Bitext type is a false positive, including those on unannotated rows.
  Because Bitext leaves real entities unannotated, Bitext precision is a LOWER bound (false positives an upper
  bound); ``fp_unannotated_rows`` reports how many of them sit on rows with no annotation at all.

The gold set (tests/fixtures/entities_gold.yml) annotates every entity of every utterance; it is scored as
multisets of (type, normalized value) per utterance, over all entity types. Its parts are scored apart:
the hand-written utterances (no ``source`` key; written by the rules' author before tuning, so they measure
the intended conventions more than independent generalization), ``source: clinc150_dev`` (crowd-written
CLINC150 test utterances whose first run motivated the caseless mode) and ``source: clinc150`` (a fresh
CLINC150 validation sample annotated after the last rule change: the blind, independent check).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from runtime.entities import BITEXT_TYPES, ENTITY_TYPES, EntityExtractor
from runtime.errors import DataError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BITEXT = Path(
    os.environ.get("STORECLERK_BITEXT", REPO.parent / "shared" / "data" / "bitext" / "customer_support_train.csv")
)
DEFAULT_GOLD = REPO / "tests" / "fixtures" / "entities_gold.yml"


def _prf(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "support": tp + fn, "tp": tp, "fp": fp, "fn": fn}


def _table(counts: dict[str, Counter], types: Iterable[str]) -> dict[str, Any]:
    per_type = {t: _prf(counts[t]["tp"], counts[t]["fp"], counts[t]["fn"]) for t in types if sum(counts[t].values())}
    tot: Counter = Counter()
    for t in per_type:
        tot.update(counts[t])
    return {"per_type": per_type, "micro": _prf(tot["tp"], tot["fp"], tot["fn"])}


def _extend(text: str, start: int, end: int) -> str:
    """The annotated span grown to the whole number or word it cuts (Bitext offsets are sometimes short)."""
    start, end = max(0, min(start, len(text))), max(0, min(end, len(text)))
    if start >= end:
        return ""
    same = str.isdigit if text[start].isdigit() else str.isalpha
    while end < len(text) and same(text[end]):
        end += 1
    while start > 0 and same(text[start - 1]) and text[start].isdigit():
        start -= 1
    return text[start:end]


def evaluate_bitext(csv_path: str | Path, extractor: EntityExtractor, *, max_errors: int = 0) -> dict[str, Any]:
    """Per-type precision/recall/F1/support on Bitext (see the module docstring for the matching rules)."""
    try:
        with open(csv_path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DataError(f"cannot read Bitext CSV {csv_path}: {exc}") from exc
    if rows and not {"instruction", "entity_type", "entity_value"} <= set(rows[0]):
        raise DataError(f"{csv_path}: expected columns instruction, entity_type, entity_value")
    counts: dict[str, Counter] = {t: Counter() for t in BITEXT_TYPES}
    errors: list[dict[str, Any]] = []
    fp_unannotated = annotated = 0
    for row in rows:
        text = row["instruction"]
        gtype = row.get("entity_type") or ""
        preds = [e for e in extractor.extract(text) if e.type in BITEXT_TYPES]
        golds: set[str] = set()
        if gtype:
            annotated += 1
            try:
                s, e = int(row.get("start_offset") or -1), int(row.get("end_offset") or -1)
            except ValueError:
                s = e = -1
            surfaces = [row["entity_value"]] + ([text[s:e], _extend(text, s, e)] if 0 <= s < e else [])
            golds = {extractor.canonical_value(gtype, v) for v in surfaces if v.strip()}
        matched = False
        for p in preds:
            if not matched and p.type == gtype and extractor.canonical_value(p.type, p.value) in golds:
                counts[gtype]["tp"] += 1
                matched = True
            else:
                counts[p.type]["fp"] += 1
                counts[p.type]["fp_unannotated"] += not gtype
                fp_unannotated += not gtype
        if gtype and not matched:
            counts[gtype]["fn"] += 1
        if (gtype and not matched or len(preds) > matched) and len(errors) < max_errors:
            errors.append(
                {
                    "text": text,
                    "gold": (gtype, row["entity_value"]) if gtype else None,
                    "pred": [(p.type, p.value) for p in preds],
                }
            )
    out = _table(counts, BITEXT_TYPES)
    for t, m in out["per_type"].items():
        # Precision counting only false positives on rows that carry an annotation (Bitext skips many).
        fp_ann = m["fp"] - counts[t]["fp_unannotated"]
        m["precision_annotated_rows"] = m["tp"] / (m["tp"] + fp_ann) if m["tp"] + fp_ann else 0.0
    out.update(rows=len(rows), annotated_rows=annotated, fp_unannotated_rows=fp_unannotated, errors=errors)
    return out


def load_gold(yaml_path: str | Path) -> list[dict[str, Any]]:
    try:
        with open(yaml_path, encoding="utf-8") as fh:
            items = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read gold set {yaml_path}: {exc}") from exc
    if not isinstance(items, list) or not all(isinstance(i, dict) and "text" in i for i in items):
        raise DataError(f"{yaml_path}: expected a list of {{text, entities}} items")
    for item in items:
        for ent in item.get("entities") or []:
            if ent.get("type") not in ENTITY_TYPES:
                raise DataError(f"{yaml_path}: unknown entity type {ent.get('type')!r} in {item['text']!r}")
    return items


def evaluate_gold(
    yaml_path: str | Path, extractor: EntityExtractor, *, source: str | None = "hand", max_errors: int = 0
) -> dict[str, Any]:
    """Per-type and micro precision/recall/F1 on the fully annotated gold set (all entity types).

    ``source``: "hand" (default) scores the hand-written items, "clinc150_dev" / "clinc150" the CLINC150 dev
    and blind samples, None everything."""
    items = [i for i in load_gold(yaml_path) if source is None or i.get("source", "hand") == source]
    counts: dict[str, Counter] = {t: Counter() for t in ENTITY_TYPES}
    errors: list[dict[str, Any]] = []
    for item in items:
        gold = Counter(
            (e["type"], extractor.canonical_value(e["type"], str(e["value"]))) for e in item.get("entities") or []
        )
        pred = Counter((e.type, extractor.canonical_value(e.type, e.value)) for e in extractor.extract(item["text"]))
        for key in gold | pred:
            tp = min(gold[key], pred[key])
            counts[key[0]]["tp"] += tp
            counts[key[0]]["fp"] += pred[key] - tp
            counts[key[0]]["fn"] += gold[key] - tp
        if gold != pred and len(errors) < max_errors:
            errors.append(
                {
                    "text": item["text"],
                    "missing": sorted((gold - pred).elements()),
                    "extra": sorted((pred - gold).elements()),
                }
            )
    out = _table(counts, ENTITY_TYPES)
    bitext_counts = Counter()
    for t in BITEXT_TYPES:
        bitext_counts.update(counts[t])
    out["micro_bitext_types"] = _prf(bitext_counts["tp"], bitext_counts["fp"], bitext_counts["fn"])
    out.update(utterances=len(items), errors=errors)
    return out


def format_table(title: str, result: dict[str, Any]) -> str:
    extra = any("precision_annotated_rows" in m for m in result["per_type"].values())
    head = f"{'type':<22}{'P':>7}{'R':>7}{'F1':>7}{'support':>9}{'tp':>6}{'fp':>6}{'fn':>6}"
    lines = [title, head + (f"{'P(annotated rows)':>19}" if extra else "")]
    rows = list(result["per_type"].items()) + [("micro", result["micro"])]
    if "micro_bitext_types" in result:
        rows.append(("micro (Bitext types)", result["micro_bitext_types"]))
    for name, m in rows:
        line = (
            f"{name:<22}{m['precision']:>7.3f}{m['recall']:>7.3f}{m['f1']:>7.3f}{m['support']:>9}"
            f"{m['tp']:>6}{m['fp']:>6}{m['fn']:>6}"
        )
        if extra and "precision_annotated_rows" in m:
            line += f"{m['precision_annotated_rows']:>19.3f}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bitext", type=Path, default=DEFAULT_BITEXT)
    ap.add_argument("--gold", type=Path, default=DEFAULT_GOLD)
    ap.add_argument("--errors", type=int, default=0, help="print up to N mistakes per set")
    args = ap.parse_args(argv)
    ex = EntityExtractor.default()
    if args.bitext.exists():
        res = evaluate_bitext(args.bitext, ex, max_errors=args.errors)
        print(
            format_table(
                f"Bitext ({res['rows']} rows, {res['annotated_rows']} annotated; precision is a lower "
                f"bound, {res['fp_unannotated_rows']} FPs on unannotated rows)",
                res,
            )
        )
        for err in res["errors"]:
            print("  ", err)
    else:
        print(f"Bitext CSV not found at {args.bitext} (set --bitext or STORECLERK_BITEXT); skipped", file=sys.stderr)
    print()
    parts = (
        ("hand", "Hand-written gold set"),
        ("clinc150_dev", "CLINC150 dev sample (motivated the caseless mode)"),
        ("clinc150", "CLINC150 blind sample (independent, never tuned on)"),
    )
    for source, title in parts:
        res = evaluate_gold(args.gold, ex, source=source, max_errors=args.errors)
        print(format_table(f"{title} ({res['utterances']} utterances, all entities annotated)", res))
        for err in res["errors"]:
            print("  ", err)
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
