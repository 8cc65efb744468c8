"""`make bench`: run every benchmark and rewrite docs/benchmarks.md (raw JSON kept in bench/results/).

    python bench/run.py                 # everything (the intent training runs take ~30 min on 2 cores)
    python bench/run.py --skip-training # no intent training runs (their last results are kept)
    python bench/run.py --only-runtime  # only the kiosk runtime and KB retrieval benchmarks
    python bench/run.py --only-voice    # only the voice benchmarks (spoken set, latency, barge-in; ~25 min)
    python bench/run.py --skip-voice    # everything but the voice benchmarks (their last results are kept)
    python bench/run.py --only-vision   # only the vision and fusion benchmarks (bench/vision_report.py; ~10 min)
    python bench/run.py --skip-vision   # everything but those (their last results are kept)

Benchmarks never fail on timing: each target is reported as met or not met, with the measured median.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
CLI = [str(REPO / ".venv" / "bin" / "storeclerk")] if (REPO / ".venv/bin/storeclerk").exists() else [
    sys.executable, "-m", "runtime.cli"]
SHARED = Path(os.environ.get("STORECLERK_SHARED_DATA", REPO.parent / "shared" / "data"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def cli(*args: str, timeout: int = 3600) -> tuple[dict | None, float, str]:
    t0 = time.perf_counter()
    p = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO, env=ENV, timeout=timeout)
    took = time.perf_counter() - t0
    if p.returncode != 0:
        return None, took, p.stderr[-2000:]
    try:
        return json.loads(p.stdout.strip().splitlines()[-1]), took, ""
    except (json.JSONDecodeError, IndexError):
        return None, took, p.stdout[-500:]


def write_rows(path: Path, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)


def intent_domains(work: Path) -> dict[str, dict]:
    """Train + evaluate through the two CLI commands only, as a user would."""
    data = json.loads((SHARED / "clinc150" / "data_full.json").read_text())
    domains = json.loads((SHARED / "clinc150" / "domains.json").read_text())
    fin = set(domains["banking"]) | set(domains["credit_cards"])
    work.mkdir(parents=True, exist_ok=True)
    write_rows(work / "clinc_train.csv", data["train"] + data["oos_train"])
    write_rows(work / "clinc_test.csv", data["test"] + data["oos_test"])
    write_rows(work / "finance_train.csv", [r for r in data["train"] + data["val"] if r[1] in fin])
    write_rows(work / "finance_test.csv", [r for r in data["test"] if r[1] in fin])
    out = {}
    for name, oos in (("clinc150", ["--oos-label", "oos"]), ("finance30", [])):
        print(f"[bench] train intents: {name} …", flush=True)
        _, train_s, err = cli("train", "intents", "--data", str(work / f"{name.rstrip('0123456789')}_train.csv"),
                              "--text-column", "text", "--label-column", "label", "--out", str(work / name), *oos)
        if err and not (work / name / "manifest.json").exists():
            out[name] = {"error": err}
            continue
        print(f"[bench] eval intents: {name} …", flush=True)
        res, _, err = cli("eval", "intents", "--model", str(work / name), "--data",
                          str(work / f"{name.rstrip('0123456789')}_test.csv"), "--text-column", "text",
                          "--label-column", "label", *oos, "--json")
        out[name] = {"train_seconds": round(train_s, 1), **(res or {"error": err})}
    return out


def script(name: str, *args: str, timeout: int = 3600) -> tuple[dict | None, str]:
    p = subprocess.run([sys.executable, str(REPO / "bench" / name), *args], capture_output=True, text=True, cwd=REPO,
                       env=ENV, timeout=timeout)
    if p.returncode != 0:
        return None, p.stderr[-2000:]
    try:
        return json.loads(p.stdout.strip().splitlines()[-1]), ""
    except (json.JSONDecodeError, IndexError):
        return None, p.stdout[-500:]


def render_runtime(rt: dict | None, kb: dict | None) -> list[str]:
    lines: list[str] = []
    if rt:
        ip, h, sat = rt["in_process"], rt["http"], rt.get("http_saturation")
        lines += ["", "## Kiosk runtime (`bench/kiosk_bench.py`)", "",
                  f"Default bundle, demo store KB and orders, a real conversation store (SQLite WAL, `synchronous=FULL`: "
                  f"each exchange is one fsync before the reply is released). In process: {ip['turns']} turns one after "
                  f"another through `Kiosk.turn` (understanding, dialogue, KB and order look-ups, the store commit). HTTP: "
                  f"{h['clients']} concurrent keep-alive clients against `storeclerk run` in its own process, each pausing "
                  f"about {h.get('think_s', 0)} s between turns (0.5–1.5×, like people typing; {h['requests']} turns in all), "
                  "and the same clients with no pause at all (closed loop: the kiosk's saturation throughput). The load "
                  "generator runs on the same 2 cores.", "",
                  "| measure | p50 | p90 | p99 |", "| --- | ---: | ---: | ---: |",
                  f"| text turn in process (ms) | {ip['turn_ms_p50']} | {ip['turn_ms_p90']} | {ip['turn_ms_p99']} |",
                  f"| `POST /api/turn` round trip, {h['clients']} clients (ms) | {h['rtt_ms_p50']} | {h['rtt_ms_p90']} "
                  f"| {h['rtt_ms_p99']} |",
                  *([f"| `POST /api/turn`, {sat['clients']} clients, closed loop (ms) | {sat['rtt_ms_p50']} | {sat['rtt_ms_p90']} "
                     f"| {sat['rtt_ms_p99']} |"] if sat else []),
                  "", "Per stage, in process (recent window, ms): " + "; ".join(
                      f"{k.split('=')[-1]} p50 {v['p50']} / p99 {v['p99']}" for k, v in sorted(ip.get("stage_ms", {}).items())) + ".",
                  f"Saturation throughput (closed loop): {sat['throughput_rps'] if sat else '–'} requests/s; errors: "
                  f"{h['errors'] + (sat['errors'] if sat else 0)}. Kiosk ready (HTTP) "
                  f"{h['ready_s']} s after start; exit status on SIGTERM: {h['sigterm_exit']}.", "",
                  "| target | measured | |", "| --- | --- | --- |",
                  f"| text turn in process p50 ≤ 15 ms | {ip['turn_ms_p50']} ms | {fmt_target(ip['turn_ms_p50'] <= 15)} |",
                  f"| text turn in process p99 ≤ 40 ms | {ip['turn_ms_p99']} ms | {fmt_target(ip['turn_ms_p99'] <= 40)} |",
                  f"| `POST /api/turn` p50 ≤ 30 ms with 20 concurrent clients (each pausing ~{h.get('think_s', 0)} s) | "
                  f"{h['rtt_ms_p50']} ms | {fmt_target(h['rtt_ms_p50'] <= 30 and h['clients'] >= 20)} |",
                  *([f"| same, closed loop (no pause: saturation) | {sat['rtt_ms_p50']} ms | "
                     f"{fmt_target(sat['rtt_ms_p50'] <= 30)} |"] if sat else []),
                  f"| kiosk RSS with the text bundle and KB ≤ 600 MB | {h['kiosk_rss_mb_after_load']} MB after the load test "
                  f"(idle {h['kiosk_rss_mb_idle']} MB, peak {h['kiosk_peak_rss_mb']} MB) | {fmt_target(h['kiosk_peak_rss_mb'] <= 600)} |"]
    if kb:
        lines += ["", "## Knowledge-base retrieval (`bench/kb_retrieval.py`)", "",
                  f"{kb['kb']['products']} products and {kb['kb']['faqs']} FAQ entries searched together; customer questions "
                  "written as paraphrases of KB entries (`data/eval/kb_questions_*.csv`). The retrieval knobs were tuned on "
                  "dev and dev2 (harder, indirect phrasings, written later by someone who never saw the test split); the "
                  "test split was written first and is never used for tuning.", "",
                  "| split | n | method | recall@1 | recall@3 | MRR |", "| --- | ---: | --- | ---: | ---: | ---: |"]
        for split, d in kb["splits"].items():
            for m, r in d["methods"].items():
                lines.append(f"| {split} | {d['n']} | {m} | {r['recall@1']:.3f} | {r['recall@3']:.3f} | {r['mrr']:.3f} |")
        t = kb["splits"].get("test")
        if t:
            r3 = t["methods"]["hybrid"]["recall@3"]
            lines += ["", "| target | measured | |", "| --- | --- | --- |",
                      f"| recall@3 ≥ 95% on ≥ 150 paraphrased questions (held-out test split) | {r3:.3f} on {t['n']} "
                      f"(MRR {t['methods']['hybrid']['mrr']:.3f}) | {fmt_target(r3 >= 0.95 and t['n'] >= 150)} |"]
    return lines


def fmt_target(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**not met**")


def render(text: dict | None, domains: dict | None, started: str, runtime: dict | None = None, kb: dict | None = None) -> str:
    m = (text or {}).get("machine", {})
    lines = ["# Benchmarks", "",
             f"Written by `make bench` (`bench/run.py`) on {started} UTC. Machine: {m.get('cpu', '?')}, "
             f"{m.get('cores', '?')} cores, Python {m.get('python', '?')}, no GPU. Medians; every number below was "
             "measured in that run. Raw JSON: `bench/results/`.", ""]
    if text:
        acc = text["accuracy"]
        lines += ["## Text understanding (`storeclerk bench text`)", "",
                  f"Kiosk intent model (MiniLM-L6 fine-tuned, {text['held_out']['n']} held-out Bitext sentences), "
                  f"{text['threads']} threads for every variant; in rounds, each variant timing the same block of sentences "
                  f"({text['batch1_runs']} batch-1 runs, {text['batch32_runs']} batch-32 runs each).", "",
                  "| variant | batch 1 p50 (ms) | batch 32 p50 (ms) | top-1 accuracy (held-out) |",
                  "| --- | ---: | ---: | ---: |"]
        for n, label in (("torch_fp32", "PyTorch eager fp32"), ("ort_fp32", "ONNX Runtime fp32 (fused graph)"),
                         ("ort_int8", "ONNX Runtime INT8 (dynamic, per-channel)")):
            lines.append(f"| {label} | {text[f'{n}_ms_p50']} | {text[f'{n}_b32_ms_p50']} | {acc[n]:.4f} |")
        load = text.get("kiosk_bundle_load", {})
        if "speedup_runs" in text:
            lines += ["", f"Three benchmark processes; the table shows the one with the median speed-up. All three: "
                      f"speed-up {text['speedup_runs']}, torch p50 {text['torch_ms_p50_runs']} ms, "
                      f"INT8 p50 {text['int8_ms_p50_runs']} ms."]
        lines += ["", f"INT8 recipe: {text['int8_recipe']}. Mean cosine INT8 vs torch: "
                  f"{text['mean_cosine_int8_vs_torch']} (min {text['min_cosine_int8_vs_torch']}); top-1 agreement "
                  f"{text['top1_agreement_int8_vs_torch']}.", "",
                  "| target | measured | |", "| --- | --- | --- |",
                  f"| INT8 ≥ 5× faster than torch eager fp32, batch 1 | {text['speedup_int8_vs_torch']}× "
                  f"(batch 32: {text['speedup_int8_vs_torch_b32']}×) | {fmt_target(text['speedup_int8_vs_torch'] >= 5)} |",
                  f"| INT8 accuracy within 0.5 points of fp32 | {text['accuracy_drop_int8_points']} points | "
                  f"{fmt_target(abs(text['accuracy_drop_int8_points']) <= 0.5)} |",
                  f"| mean cosine ≥ 0.99 | {text['mean_cosine_int8_vs_torch']} | "
                  f"{fmt_target(text['mean_cosine_int8_vs_torch'] >= 0.99)} |"]
        if "rss_mb_p50" in load:
            lines += [f"| process holding the text bundle: RSS ≤ 300 MB | {load['rss_mb_p50']} MB (peak "
                      f"{load['peak_rss_mb_max']} MB), torch imported: {load['torch_imported']} | "
                      f"{fmt_target(load['rss_mb_p50'] <= 300)} |",
                      f"| cold load ≤ 2 s (import + load + first prediction) | {load['cold_load_s_p50']} s | "
                      f"{fmt_target(load['cold_load_s_p50'] <= 2)} |"]
    if domains:
        when = domains.get("_measured_utc", "?")
        domains = {k: v for k, v in domains.items() if not k.startswith("_")}
        lines += ["", "## Intent domains through the CLI (`train intents` → `eval intents`)", "",
                  f"Measured {when} UTC. Default settings (epochs by data size), seed 0, 2 cores. Training time includes "
                  "export and parity.", "",
                  "| domain | train rows | accuracy | macro-F1 | in-scope acc. | OOS recall | OOS precision | p50 ms | training |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, d in domains.items():
            if "error" in d:
                lines.append(f"| {name} | error: {d['error'][:120]} |")
                continue
            def g(k: str, d: dict = d) -> str:
                return f"{d[k]:.4f}" if k in d else "–"
            lines.append(f"| {name} | | {g('accuracy')} | {g('macro_f1')} | {g('in_scope_accuracy')} | "
                         f"{g('oos_recall')} | {g('oos_precision')} | {d['latency_ms_p50']} | {d['train_seconds'] / 60:.1f} min |")
        c = domains.get("clinc150", {})
        if "in_scope_accuracy" in c:
            lines += ["", "| target | measured | |", "| --- | --- | --- |",
                      f"| CLINC150: in-scope accuracy ≥ 95% | {c['in_scope_accuracy']:.4f} | "
                      f"{fmt_target(c['in_scope_accuracy'] >= 0.95)} |",
                      f"| CLINC150: OOS recall ≥ 80% at precision ≥ 80% | {c['oos_recall']:.4f} at {c['oos_precision']:.4f} | "
                      f"{fmt_target(c['oos_recall'] >= 0.8 and c['oos_precision'] >= 0.8)} |"]
    lines += render_runtime(runtime, kb)
    return "\n".join(lines) + "\n"


def run_voice() -> dict | None:
    """Spoken set (made once, reproducibly), WER/intent on its test part, latency, 10-minute duplex session."""
    vs = REPO / "build" / "voice_set"
    steps = [] if (vs / "manifest.csv").exists() else [["voice_set.py"]]
    steps += [["voice_eval.py", "--split", "test", "--out", str(RESULTS / "voice_eval_test.json")],
              ["voice_latency.py", "--json", str(RESULTS / "voice_latency.json")]]
    for step in steps:
        print(f"[bench] {' '.join(step)} …", flush=True)
        p = subprocess.run([sys.executable, str(REPO / "bench" / step[0]), *step[1:]], cwd=REPO, env=ENV, timeout=7200)
        if p.returncode != 0:
            print(f"[bench] {step[0]} failed", file=sys.stderr)
            return None
    print("[bench] voice_duplex.py (10-minute session) …", flush=True)
    duplex, err = script("voice_duplex.py", "--minutes", "10", "--json")
    if duplex is None:
        print(f"[bench] voice_duplex failed: {err}", file=sys.stderr)
        return None
    return assemble_voice(duplex)


def render_voice(v: dict | None) -> list[str]:
    if not v:
        return []
    g, lat, d = v["eval"]["groups"], v["latency"], v["duplex"]
    early = lat["early decode at 200 ms (default)"]
    plain = lat["decode after the end of speech"]
    cl, nz = g["clean"], g["noisy"]
    lines = ["", f"## Voice (`bench/voice_*.py`, measured {v.get('_measured_utc', '?')} UTC)", "",
             f"Spoken test set: {cl['n']} clean + {nz['n']} noisy files (240 held-out sentences × 2 voices; noise: "
             "six-talker synthetic babble + pink noise at 10 dB SNR). Whisper tiny.en, greedy, store-word prompt. "
             "Details: [voice.md](voice.md).", "",
             "| group | n | WER | intent, spoken | intent, same text |", "| --- | ---: | ---: | ---: | ---: |"]
    for k, x in g.items():
        sp = "–" if x["intent_spoken"] is None else f"{x['intent_spoken']:.3f}"
        tx = "–" if x["intent_text"] is None else f"{x['intent_text']:.3f}"
        lines.append(f"| {k} | {x['n']} | {x['wer']:.3f} | {sp} | {tx} |")
    gap_c = cl["intent_text"] - cl["intent_spoken"]
    gap_n = nz["intent_text"] - nz["intent_spoken"]
    lines += ["", "| target | measured | |", "| --- | --- | --- |",
              f"| WER clean ≤ 12% | {cl['wer']:.1%} | {fmt_target(cl['wer'] <= 0.12)} |",
              f"| WER noisy (10 dB) ≤ 20% | {nz['wer']:.1%} | {fmt_target(nz['wer'] <= 0.20)} |",
              f"| spoken intent within 5 points of text, clean | {gap_c * 100:.1f} points | {fmt_target(gap_c <= 0.05)} |",
              f"| spoken intent within 10 points of text, noisy | {gap_n * 100:.1f} points | {fmt_target(gap_n <= 0.10)} |",
              f"| end of speech → first reply audio p50 ≤ 1,000 ms | {early['first_audio']['p50']:.0f} ms (p90 "
              f"{early['first_audio']['p90']:.0f}); without early decoding {plain['first_audio']['p50']:.0f} ms | "
              f"{fmt_target(early['first_audio']['p50'] <= 1000)} |",
              f"| TTS real-time factor ≤ 0.1, first audio ≤ 250 ms | RTF {lat['piper']['rtf_p50']}, first audio "
              f"{lat['piper']['first_audio_ms_p50']:.0f} ms | "
              f"{fmt_target(lat['piper']['rtf_p50'] <= 0.1 and lat['piper']['first_audio_ms_p50'] <= 250)} |",
              f"| barge-in stops playback ≤ 200 ms | p50 {d['barge_in_ms_p50']} ms, p90 {d['barge_in_ms_p90']}, max "
              f"{d['barge_in_ms_max']} ({d['barge_ins_detected']} of {d['barge_in_turns']} interruptions) | "
              f"{fmt_target((d['barge_in_ms_p90'] or 1e9) <= 200)} |",
              f"| zero self-triggers over 10 simulated minutes | {d['self_triggers']} ({d['kiosk_speech_s']} s of the "
              f"kiosk's speech in its microphone, ERLE {d['erle_db']} dB) | {fmt_target(d['self_triggers'] == 0)} |",
              "", f"Latency over {lat['n']} dev utterances, ms from the end of speech (p50): endpoint "
              f"{early['end_of_speech']['p50']:.0f}, Whisper decode {early['asr_ms']['p50']:.0f}, transcript ready "
              f"{early['asr_final']['p50']:.0f}, first audio {early['first_audio']['p50']:.0f}."]
    return lines


def load_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def assemble_voice(duplex: dict) -> dict:
    ev = json.loads((RESULTS / "voice_eval_test.json").read_text())
    out = {"eval": {"groups": ev["groups"], "machine": ev["machine"]},
           "latency": json.loads((RESULTS / "voice_latency.json").read_text()), "duplex": duplex,
           "_measured_utc": load_stamp()}
    (RESULTS / "voice.json").write_text(json.dumps(out, indent=2))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-training", action="store_true", help="no intent-domain training runs")
    ap.add_argument("--only-runtime", action="store_true", help="only the kiosk runtime and KB retrieval benchmarks")
    ap.add_argument("--only-voice", action="store_true", help="only the voice benchmarks")
    ap.add_argument("--skip-voice", action="store_true", help="no voice benchmarks (their last results are kept)")
    ap.add_argument("--only-vision", action="store_true", help="only the vision and fusion benchmarks")
    ap.add_argument("--skip-vision", action="store_true", help="no vision benchmarks (their last results are kept)")
    ap.add_argument("--render-only", action="store_true", help="rewrite docs/benchmarks.md from bench/results/")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "bench"))
    import vision_report

    if args.only_vision:
        vision_report.run_vision()
        args.render_only = True
    if args.render_only:
        load = lambda n: json.loads((RESULTS / n).read_text()) if (RESULTS / n).exists() else None  # noqa: E731
        import re

        old = (REPO / "docs" / "benchmarks.md").read_text() if (REPO / "docs" / "benchmarks.md").exists() else ""
        m = re.search(r"on (\d{4}-\d\d-\d\d \d\d:\d\d) UTC", old)  # keep when the other sections were measured
        doc = render(load("text.json"), load("intent_domains.json"), m.group(1) if m else "?", load("runtime.json"),
                     load("kb_retrieval.json")) + "\n".join(render_voice(load("voice.json"))) + "\n"
        doc += "\n".join(vision_report.render_vision(vision_report.load())) + "\n"
        (REPO / "docs" / "benchmarks.md").write_text(doc)
        return 0
    if args.only_voice:
        args.only_runtime = True
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    RESULTS.mkdir(parents=True, exist_ok=True)
    # Three separate processes: absolute times move with the machine's load from run to run (seen here:
    # batch-1 INT8 speed-up 5.5× to 6.5×), so the run with the median speed-up is reported, with all three.
    runs = []
    for i in range(0 if args.only_runtime else 3):
        print(f"[bench] storeclerk bench text ({i + 1}/3) …", flush=True)
        res, _, err = cli("bench", "text", "--json")
        if res is None:
            print(f"[bench] bench text failed: {err}", file=sys.stderr)
            break
        runs.append(res)
    text = None
    if args.only_runtime and (RESULTS / "text.json").exists():
        text = json.loads((RESULTS / "text.json").read_text())
    if len(runs) == 3:
        runs.sort(key=lambda r: r["speedup_int8_vs_torch"])
        text = runs[1] | {"speedup_runs": [r["speedup_int8_vs_torch"] for r in runs],
                          "int8_ms_p50_runs": [r["ort_int8_ms_p50"] for r in runs],
                          "torch_ms_p50_runs": [r["torch_fp32_ms_p50"] for r in runs]}
        (RESULTS / "text.json").write_text(json.dumps(text, indent=2))
    domains = None
    if not args.skip_training and not args.only_runtime:
        if (SHARED / "clinc150").exists():
            domains = intent_domains(REPO / "build" / "bench")
            domains["_measured_utc"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
            (RESULTS / "intent_domains.json").write_text(json.dumps(domains, indent=2))
        else:
            print(f"[bench] {SHARED}/clinc150 not found: skipping the intent-domain runs", file=sys.stderr)
    elif (RESULTS / "intent_domains.json").exists():
        domains = json.loads((RESULTS / "intent_domains.json").read_text())
    runtime = kb = None
    if args.only_voice:
        runtime = json.loads((RESULTS / "runtime.json").read_text()) if (RESULTS / "runtime.json").exists() else None
        kb = json.loads((RESULTS / "kb_retrieval.json").read_text()) if (RESULTS / "kb_retrieval.json").exists() else None
    else:
        print("[bench] kiosk runtime (in process, then 20 HTTP clients) …", flush=True)
        runtime, err = script("kiosk_bench.py", "--json")
        if runtime is None:
            print(f"[bench] kiosk_bench failed: {err}", file=sys.stderr)
        else:
            (RESULTS / "runtime.json").write_text(json.dumps(runtime, indent=2))
        print("[bench] knowledge-base retrieval …", flush=True)
        kb, err = script("kb_retrieval.py", "--split", "all", "--json")
        if kb is None:
            print(f"[bench] kb_retrieval failed: {err}", file=sys.stderr)
        elif (RESULTS / "kb_retrieval.json").exists():
            kb = json.loads((RESULTS / "kb_retrieval.json").read_text())
    voice = None
    if not args.skip_voice:
        voice = run_voice()
    elif (RESULTS / "voice.json").exists():
        voice = json.loads((RESULTS / "voice.json").read_text())
    doc = render(text, domains, started, runtime, kb) + "\n".join(render_voice(voice)) + ("\n" if voice else "")
    vision = vision_report.load() if args.skip_vision else vision_report.run_vision()
    doc += "\n".join(vision_report.render_vision(vision)) + "\n"
    (REPO / "docs" / "benchmarks.md").write_text(doc)
    print("[bench] wrote docs/benchmarks.md", flush=True)
    return 0 if text is not None and runtime is not None and kb is not None and (args.skip_voice or voice) else 1


if __name__ == "__main__":
    raise SystemExit(main())
