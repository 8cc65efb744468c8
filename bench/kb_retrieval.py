"""Knowledge-base retrieval benchmark: recall@1, recall@3 and MRR of BM25 alone, the encoder alone and the
hybrid, on hand-written customer questions with a gold KB entry each; plus search latency.

    python bench/kb_retrieval.py [--split dev|test|both] [--encoder intent|retrieval] [--json] [--misses] [--grid]

Questions: ``data/eval/kb_questions_dev.csv`` (tuning) and ``data/eval/kb_questions_test.csv`` (held out:
written before the retriever existed and run once at the end). ``--grid`` sweeps the retrieval knobs, on
the dev split only. The encoder is one of the default kiosk bundle's models: ``--encoder retrieval`` (the
un-fine-tuned all-MiniLM-L6-v2, ``runtime.embedder.SentenceEmbedder``; the default when the bundle has it) or
``--encoder intent`` (the intent model's fine-tuned encoder, ``runtime.intents.IntentClassifier.embed``).
Latency is ``HybridRetriever.search`` with the query's embedding precomputed (what the KB adds to a turn);
the embedding's own time is reported beside it. Results: ``bench/results/kb_retrieval.json``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from runtime.kb import HybridRetriever, KnowledgeBase  # noqa: E402

RESULTS = REPO / "bench" / "results" / "kb_retrieval.json"
EVAL = REPO / "data" / "eval"
DEPTH = 10  # MRR counts the gold entry's rank up to here (1/rank; 0 beyond)


def read_questions(split: str) -> list[tuple[str, str]]:
    with open(EVAL / f"kb_questions_{split}.csv", newline="", encoding="utf-8") as f:
        return [(r["question"], r["entry_id"]) for r in csv.DictReader(f)]


def score(retriever: HybridRetriever, qs: list[tuple[str, str]], vecs, method: str, *, kinds=None) -> dict:
    r1 = r3 = 0
    rr = 0.0
    misses = []
    for (q, gold), v in zip(qs, vecs, strict=False):
        ids = [h.entry_id for h in retriever.search(q, k=DEPTH, kinds=kinds, method=method, query_vector=v)]
        rank = ids.index(gold) + 1 if gold in ids else None
        r1 += rank == 1
        r3 += rank is not None and rank <= 3
        rr += 1.0 / rank if rank else 0.0
        if rank != 1:
            misses.append({"question": q, "gold": gold, "rank": rank, "top3": ids[:3]})
    n = len(qs)
    return {"n": n, "recall@1": round(r1 / n, 4), "recall@3": round(r3 / n, 4), "mrr": round(rr / n, 4), "misses": misses}


def latency(retriever: HybridRetriever, classifier, qs: list[tuple[str, str]], vecs) -> dict:
    for (q, _), v in zip(qs[:20], vecs, strict=False):  # warm-up
        retriever.search(q, k=3, query_vector=v)
    search_ms, embed_ms = [], []
    for _ in range(3):
        for (q, _), v in zip(qs, vecs, strict=False):
            t0 = time.perf_counter()
            retriever.search(q, k=3, query_vector=v)
            search_ms.append((time.perf_counter() - t0) * 1000)
    for q, _ in qs:
        t0 = time.perf_counter()
        classifier.embed([q])
        embed_ms.append((time.perf_counter() - t0) * 1000)
    s = sorted(search_ms)
    return {"search_p50_ms": round(statistics.median(s), 3), "search_p95_ms": round(s[int(0.95 * (len(s) - 1))], 3),
            "search_max_ms": round(s[-1], 3), "query_embed_p50_ms": round(statistics.median(embed_ms), 3),
            "calls": len(s)}


GRID = {
    "fusion": ["rrf", "score"],
    "rrf_k": [5.0, 10.0, 30.0, 60.0],
    "alpha": [0.3, 0.5, 0.7],
    "w_char": [0.0, 0.5, 1.0],
    "w_name": [0.0, 0.5, 1.0, 2.0],
    "w_embed": [0.5, 1.0, 1.5],
    "char_n": [0, 3, 4],
    "title_weight": [1, 2, 3],
    "embed_pool": ["max", "mean"],
}


def grid(base: HybridRetriever, qs, vecs) -> list[dict]:
    """One knob at a time around the defaults, then fusion x its main knob: cheap and readable."""
    rows = []
    default = base.config

    def run(label: str, **changes) -> None:
        r = base.with_config(**changes)
        m = score(r, qs, vecs, "hybrid")
        rows.append({"config": label, **{k: m[k] for k in ("recall@1", "recall@3", "mrr")}})

    run("defaults")
    for knob, values in GRID.items():
        for v in values:
            if getattr(default, knob) != v and not (knob in ("rrf_k", "w_embed") and default.fusion != "rrf") \
                    and not (knob == "alpha" and default.fusion != "score"):
                run(f"{knob}={v}", **{knob: v})
    for fusion, x in itertools.chain((("rrf", k) for k in GRID["rrf_k"]), (("score", a) for a in GRID["alpha"])):
        kw = {"fusion": fusion, "rrf_k" if fusion == "rrf" else "alpha": x}
        run(f"fusion={fusion} {'k' if fusion == 'rrf' else 'alpha'}={x}", **kw)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=["dev", "dev2", "test", "both", "all"], default="dev",
                    help="dev and dev2 are for tuning (dev2: harder, indirect phrasings); test is held out; both = dev + test")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--misses", action="store_true", help="list the questions whose gold entry is not ranked first")
    ap.add_argument("--grid", action="store_true", help="sweep the retrieval knobs (dev split only)")
    ap.add_argument("--kb", default=str(REPO / "data" / "kb"))
    ap.add_argument("--encoder", choices=["intent", "retrieval"], default=None,
                    help="which bundle model embeds (default: retrieval when the bundle has it, else intent)")
    args = ap.parse_args(argv)
    if args.grid and args.split not in ("dev", "dev2"):
        ap.error("--grid tunes on the dev split only; the test split is held out")

    from runtime.embedder import retrieval_embedder
    from runtime.engine import Engine
    from runtime.intents import IntentClassifier
    from runtime.paths import default_bundle_dir

    t0 = time.perf_counter()
    kb = KnowledgeBase.load(args.kb)
    t_kb = time.perf_counter() - t0
    engine = Engine(default_bundle_dir())
    encoder = args.encoder or ("retrieval" if "retrieval" in engine.bundle.models else "intent")
    classifier = retrieval_embedder(engine) if encoder == "retrieval" else IntentClassifier(engine)
    if classifier is None:
        ap.error(f"the bundle {engine.bundle.root} has no 'retrieval' model (export it: python -m export.retrieval)")
    t0 = time.perf_counter()
    retriever = HybridRetriever(kb, classifier.embed)
    t_index = time.perf_counter() - t0
    n_vectors = int(retriever._vectors.shape[0]) if retriever._vectors is not None else 0

    out: dict = {"encoder": encoder, "kb": {"products": len(kb.products), "faqs": len(kb.faqs), "load_s": round(t_kb, 3),
                        "index_s": round(t_index, 3), "vectors": n_vectors},
                 "config": {k: v for k, v in vars(retriever.config).items()},
                 "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
                 "splits": {}}
    splits = {"both": ["dev", "test"], "all": ["dev", "dev2", "test"]}.get(args.split, [args.split])
    for split in splits:
        qs = read_questions(split)
        vecs = [retriever.query_vector(q) for q, _ in qs]
        res = {"n": len(qs), "n_faq": sum(g.startswith("faq:") for _, g in qs),
               "n_product": sum(g.startswith("catalog:") for _, g in qs), "methods": {}}
        for method in ("bm25", "embedding", "hybrid"):
            m = score(retriever, qs, vecs, method)
            res["methods"][method] = {k: m[k] for k in ("recall@1", "recall@3", "mrr")}
            if method == "hybrid":
                res["hybrid_misses"] = m["misses"]
        alt = retriever.with_config(fusion="score" if retriever.config.fusion == "rrf" else "rrf")
        m = score(alt, qs, vecs, "hybrid")
        res["methods"][f"hybrid ({alt.config.fusion} fusion)"] = {k: m[k] for k in ("recall@1", "recall@3", "mrr")}
        for kind, prefix in (("faq", "faq:"), ("product", "catalog:")):
            sub = [(q, g) for q, g in qs if g.startswith(prefix)]
            sv = [v for (q, g), v in zip(qs, vecs, strict=False) if g.startswith(prefix)]
            m = score(retriever, sub, sv, "hybrid")
            res[f"hybrid_{kind}"] = {k: m[k] for k in ("n", "recall@1", "recall@3", "mrr")}
        res["latency"] = latency(retriever, classifier, qs, vecs)
        if args.grid and split in ("dev", "dev2"):
            res["grid"] = grid(retriever, qs, vecs)
        out["splits"][split] = res

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    saved = {**previous, **{k: v for k, v in out.items() if k != "splits"},
             "splits": {**previous.get("splits", {}), **out["splits"]}}
    RESULTS.write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n")

    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return 0
    print(f"encoder: {encoder} model of {engine.bundle.root}")
    print(f"KB: {len(kb.products)} products, {len(kb.faqs)} FAQ entries; load {t_kb * 1000:.0f} ms, "
          f"index {t_index * 1000:.0f} ms ({n_vectors} vectors)")
    for split, res in out["splits"].items():
        print(f"\n{split}: {res['n']} questions ({res['n_faq']} FAQ, {res['n_product']} product)")
        print(f"  {'method':<26} {'recall@1':>9} {'recall@3':>9} {'MRR':>7}")
        for name, m in res["methods"].items():
            print(f"  {name:<26} {m['recall@1']:>9.3f} {m['recall@3']:>9.3f} {m['mrr']:>7.3f}")
        for kind in ("faq", "product"):
            m = res[f"hybrid_{kind}"]
            print(f"  {'hybrid, ' + kind + ' only':<26} {m['recall@1']:>9.3f} {m['recall@3']:>9.3f} {m['mrr']:>7.3f}  (n={m['n']})")
        lat = res["latency"]
        print(f"  search p50 {lat['search_p50_ms']} ms, p95 {lat['search_p95_ms']} ms (query embedding excluded; "
              f"embedding p50 {lat['query_embed_p50_ms']} ms)")
        if args.misses:
            for m in res["hybrid_misses"]:
                print(f"    rank {m['rank']}: {m['question']!r} gold {m['gold']} top3 {m['top3']}")
        if "grid" in res:
            print(f"\n  grid (dev): {'config':<30} {'r@1':>6} {'r@3':>6} {'MRR':>6}")
            for g in res["grid"]:
                print(f"  {'':<12}{g['config']:<30} {g['recall@1']:>6.3f} {g['recall@3']:>6.3f} {g['mrr']:>6.3f}")
    print(f"\nwrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
