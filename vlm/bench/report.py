"""Write a benchmark run as JSON under vlm/bench/results/ and as markdown tables (vlm/bench/README.md)."""
from __future__ import annotations

import json
import time
from pathlib import Path


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def merge(results: list[dict], command: str) -> dict:
    """One result from runs of separate sections (e.g. inference and training run side by side)."""
    out = dict(results[0])
    for r in results[1:]:
        for key in ("inference", "roofline", "llamacpp", "training", "clip", "extract"):
            if key in r and key not in out:
                out[key] = r[key]
        out["load_after"] = r.get("load_after", out.get("load_after"))
    out["merged_from"] = [f"{r['date']}: {r['command']}" for r in results]
    out["command"] = command
    out["kind"] = "bench"
    out["summary"] = summary(out)
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def write_json(result: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = out_dir / f"{result.get('kind', 'bench')}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    return path


def summary(result: dict) -> dict:
    """Headline ratios vs the baseline (higher is better for every one)."""
    inf = result.get("inference")
    out = {}
    if inf:
        lat, base, name = inf["latency"], inf["latency"]["baseline"], inf["vlm_path"]
        v = lat[name]
        out["decode_speedup"] = ratio(v["decode_tok_s"], base["decode_tok_s"])
        out["ttft_speedup"] = ratio(base["ttft_s"], v["ttft_s"])
        out["e2e_speedup"] = ratio(base["e2e_s"], v["e2e_s"])
        b = inf["batch_images_per_s"][name]
        if "8" in b and "1" in b:
            out["batch8_over_batch1"] = ratio(b["8"], b["1"])
        roof = result.get("roofline", {}).get(name)
        if roof:
            out.update({k: v for k, v in roof.items() if k.startswith("fraction_")})
    tr = result.get("training")
    if tr and "stages" in tr:
        for stage, row in tr["stages"].items():
            if "speedup" in row:
                out[f"{stage}_train_speedup"] = row["speedup"]
    return out


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Run {result['date']} — `{result['command']}`",
        "",
    ]
    if result.get("merged_from"):
        lines += ["Merged from: " + "; ".join(f"`{m}`" for m in result["merged_from"]), ""]
    lines += [
        f"Machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}), AMX={m['amx']}; "
        f"copy bandwidth {m['copy_bandwidth_gbs']} GB/s (DRAM-sized buffer), "
        f"{result.get('working_set_bandwidth_gbs') or '-'} GB/s (weights-sized buffer); "
        f"bf16 matmul {m['bf16_matmul_tflops']} TFLOP/s, fp32 {m['fp32_matmul_tflops']} TFLOP/s; "
        f"load average before {m['load_average']}, after {result.get('load_after')}; "
        f"torch {m['torch']}, transformers {m['transformers']}. Model: {result['model']}.",
        "",
    ]
    inf = result.get("inference")
    if inf:
        base = inf["latency"]["baseline"]
        lines += [
            f"Inference (medians of {inf['config']['repeats']} interleaved repeats; prompt {inf['prompt_tokens']} "
            f"tokens; decode = {inf['config']['decode_tokens']} forced tokens):",
            "",
            "| path | TTFT s | TTFT speedup | decode tok/s | decode speedup | answer s | turn-2 TTFT s "
            "| agreement vs fp32 (exact / first 3 words) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, row in inf["latency"].items():
            agr = inf["agreement"].get(name)
            agr_s = "reference" if name == "baseline" else (
                f"{agr['exact_agreement']:.0%} / {agr['first_words_agreement']:.0%} (n={agr['samples']})"
                if agr else "-")
            lines.append(
                f"| {name} | {row['ttft_s']:.3f} | {ratio(base['ttft_s'], row['ttft_s'])}x | "
                f"{row['decode_tok_s']} | {ratio(row['decode_tok_s'], base['decode_tok_s'])}x | "
                f"{row['e2e_s']:.2f} | {row['turn2_ttft_s']:.3f} | {agr_s} |")
        sizes = inf["config"]["batch_sizes"]
        lines += ["", f"Batch VQA throughput, images/s ({inf['config']['batch_tokens']} forced tokens per answer), "
                  "and peak RSS at the largest batch:", "",
                  "| path | " + " | ".join(f"bs={s}" for s in sizes) + " | bs=8 / bs=1 | peak RSS MB | extra MB |",
                  "|---|" + "---|" * (len(sizes) + 3)]
        for name, row in inf["batch_images_per_s"].items():
            rss = inf["rss"].get(name, {})
            lines.append(f"| {name} | " + " | ".join(str(row.get(str(s), "-")) for s in sizes)
                         + f" | {ratio(row.get('8', 0), row.get('1', 0))}x | {rss.get('peak_rss_mb')} | "
                         f"{rss.get('extra_mb')} |")
    roof = result.get("roofline")
    if roof:
        labels = sorted({k[len("fraction_"):] for r in roof.values() for k in r if k.startswith("fraction_")})
        lines += ["", "Decode roofline (bytes read per token = LLM weights + KV cache):", "",
                  "| path | MB/token | decode tok/s | " + " | ".join(
                      f"bound ({l}) tok/s | fraction ({l})" for l in labels) + " |",
                  "|---|---|---|" + "---|---|" * len(labels)]
        for name, r in roof.items():
            lines.append(f"| {name} | {r['bytes_per_token_mb']} | {r['decode_tok_s']} | " + " | ".join(
                f"{r[f'bound_{l}_tok_s']} | {_pct(r[f'fraction_{l}'])}" for l in labels) + " |")
    tr = result.get("training")
    if tr:
        lines += ["", "Training:", ""]
        if "stages" in tr:
            lines += ["| stage | loop | samples/s | speedup | peak RSS MB | TFLOP/s | fraction of bf16 peak |",
                      "|---|---|---|---|---|---|---|"]
            for stage, row in tr["stages"].items():
                for loop in ("naive", "vlm"):
                    r = row.get(loop)
                    if r:
                        lines.append(f"| {stage} | {loop} | {r['samples_per_s']} | "
                                     f"{row.get('speedup', '-') if loop == 'vlm' else '1.0'}x | "
                                     f"{r.get('peak_rss_mb')} | {r.get('tflops')} | {r.get('peak_fraction')} |")
        else:
            lines.append(tr.get("status", "not measured"))
    if result.get("clip"):
        from .clip_throughput import markdown as clip_markdown

        lines += clip_markdown(result["clip"])
    if result.get("extract"):
        from .extraction import markdown as extract_markdown

        lines += extract_markdown(result["extract"])
    if result.get("llamacpp"):
        from .llamacpp import markdown as llamacpp_markdown

        lines += llamacpp_markdown(result["llamacpp"])
    lines += targets(result)
    s = summary(result)
    if s:
        lines += ["", "Headline: " + ", ".join(f"{k} {v}" for k, v in s.items())]
    return "\n".join(lines) + "\n"


def _status(value, goal: float, extra_ok: bool = True, lower_is_better: bool = False) -> str:
    if value is None:
        return "not measured"
    met = (value < goal if lower_is_better else value >= goal) and extra_ok
    return "**met**" if met else "**missed**"


def targets(result: dict) -> list[str]:
    """The CPU-inference targets (issue: a real CPU engine for the default path) as measured by this run:
    decode and TTFT of the vlm path (the first ``--levers`` entry) against stock transformers, its greedy
    agreement, decode against llama.cpp on the same LLM, a receipt end to end, stage-1 training speed."""
    rows = []
    inf = result.get("inference")
    if inf:
        name = inf["vlm_path"]
        lat, base = inf["latency"][name], inf["latency"]["baseline"]
        decode, ttft = ratio(lat["decode_tok_s"], base["decode_tok_s"]), ratio(base["ttft_s"], lat["ttft_s"])
        agr = inf["agreement"].get(name, {}).get("exact_agreement")
        agr_s = "-" if agr is None else f"{agr:.0%} identical"
        rows.append((f"decode tok/s, vlm path ({name}) / stock float32", "at least 3x, 90% of greedy answers identical",
                     f"{decode}x, {agr_s}", _status(decode, 3.0, agr is not None and agr >= 0.9)))
        rows.append((f"TTFT, vlm path ({name}) / stock", "at least 2x", f"{ttft}x", _status(ttft, 2.0)))
        cpp = (result.get("llamacpp") or {}).get("decode_tok_s")
        vs = ratio(lat["decode_tok_s"], cpp) if cpp else None
        rows.append(("decode tok/s, vlm path / llama.cpp on the same LLM", "at least 1.0x",
                     f"{vs}x ({lat['decode_tok_s']} vs {cpp} tok/s)" if vs else "not measured", _status(vs, 1.0)))
    ext = result.get("extract")
    if ext and ext.get("engines"):
        engine, row = next(iter(ext["engines"].items()))
        rows.append((f"SROIE receipt end to end, median s ({engine})", f"under {ext['target_s']:g} s",
                     f"{row['end_to_end_s']} s", _status(row["end_to_end_s"], ext["target_s"], lower_is_better=True)))
    stage1 = ((result.get("training") or {}).get("stages") or {}).get("stage1")
    if stage1:
        rows.append(("stage-1 samples/s / naive loop", "at least 4x", f"{stage1['speedup']}x",
                     _status(stage1["speedup"], 4.0)))
    if not rows:
        return []
    return ["", "Targets (this run):", "", "| measure | target | measured | status |", "|---|---|---|---|",
            *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]]


RESULTS_START = "<!-- bench:results:start -->"
RESULTS_END = "<!-- bench:results:end -->"


def update_readme(readme: Path, table: str) -> None:
    """Replace the results block of ``readme`` (between the markers) with ``table``; create it if missing."""
    block = f"{RESULTS_START}\n{table}{RESULTS_END}"
    if readme.exists():
        text = readme.read_text()
        if RESULTS_START in text and RESULTS_END in text:
            head, rest = text.split(RESULTS_START, 1)
            tail = rest.split(RESULTS_END, 1)[1]
            readme.write_text(head + block + tail)
            return
        readme.write_text(text.rstrip() + "\n\n" + block + "\n")
        return
    readme.parent.mkdir(parents=True, exist_ok=True)
    readme.write_text("# Benchmarks\n\n" + block + "\n")
