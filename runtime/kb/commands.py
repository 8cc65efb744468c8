"""``storeclerk kb validate``: check a knowledge-base directory and print a report an operator can act on."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from runtime.errors import ConfigError
from runtime.kb.loader import KnowledgeBase
from runtime.kb.model import KBError


def validate_report(kb_dir: Path, check: Callable[[KnowledgeBase], None] | None = None) -> dict:
    """Validate ``kb_dir``: a JSON-ready dict with ok, errors and warnings (each "file line N: message"),
    and counts when it loads. ``check(kb)``: a further check on the loaded KB (the dialogue's references);
    its ``ConfigError`` is reported as one more error."""
    kb_dir = Path(kb_dir)
    try:
        kb = KnowledgeBase.load(kb_dir)
    except KBError as exc:
        return {"ok": False, "kb": str(kb_dir), "errors": list(exc.errors), "warnings": [],
                "issues": [{"file": i.file, "line": i.line, "message": i.message} for i in exc.issues]}
    errors: list[str] = []
    if check is not None:
        try:
            check(kb)
        except ConfigError as exc:
            errors.append(exc.message)
    s = kb.store
    return {
        "ok": not errors,
        "kb": str(kb_dir),
        "errors": errors,
        "warnings": [str(w) for w in kb.warnings],
        "store": s.name,
        "products": len(kb.products),
        "faqs": len(kb.faqs),
        "services": len(s.services),
        "aisles": {a: sum(p.aisle == a for p in kb.products) for a in s.aisles},
        "tags": dict(Counter(t for p in kb.products for t in p.tags).most_common()),
        "hours": s.week_text(),
        "fingerprint": kb.fingerprint[:12],
    }


def cmd_kb_validate(kb_dir: Path, as_json: bool = False) -> int:
    """Print the report; exit code 0 when the KB is valid (warnings allowed), 1 when it is not."""
    return print_report(validate_report(kb_dir), as_json)


def print_report(rep: dict, as_json: bool = False) -> int:
    """``validate_report``'s dict for an operator (or as one JSON line); 0 when valid, 1 when not."""
    if as_json:
        print(json.dumps(rep, ensure_ascii=False, indent=None))
        return 0 if rep["ok"] else 1
    if not rep["ok"]:
        n = len(rep["errors"])
        print(f"knowledge base {rep['kb']}: {n} problem{'s' if n != 1 else ''} (nothing was changed; a running "
              "kiosk keeps its last good knowledge base)", file=sys.stderr)
        for e in rep["errors"]:
            print(f"  error: {e}", file=sys.stderr)
        return 1
    print(f"ok: {rep['kb']}: {rep['store']}: {rep['products']} products, {rep['faqs']} FAQ entries, "
          f"{rep['services']} services" + (f"; dialogue {rep['dialogue']}" if rep.get("dialogue") else ""))
    print(f"  hours: {rep['hours']}")
    print("  products per aisle: " + ", ".join(f"{a}: {n}" for a, n in rep["aisles"].items()))
    for w in rep["warnings"]:
        print(f"  warning: {w}")
    return 0


__all__ = ["cmd_kb_validate", "print_report", "validate_report"]
