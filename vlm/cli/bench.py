"""``vlm bench``: vlm vs stock transformers in one process; JSON under vlm/bench/results/ + a markdown table."""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from vlm.optimize import LEVER_TOKENS
from vlm.paths import data_dir

HELP = "benchmark vlm against stock transformers (CPU): latency, throughput, roofline, training"

DEFAULT_DATA = data_dir("flickr8k")
DEFAULT_LEVERS = "fast,default,bf16,fast+t1,pool4"

def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"expected positive integers, got {text!r}")
    return values


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="saved vlm/llava folder or registered name (default: build --llm with "
                        "a fresh TowerPreset tower, seed 0)")
    parser.add_argument("--llm", default="smollm2-135m-instruct", help="LLM when building (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="tiny random model and sizes (smoke test / CI)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Flickr8k folder with dev.jsonl")
    parser.add_argument("--sections", default="inference,training",
                        help="comma list: inference, training, clip (the CLIP's indexing throughput and query "
                        "latency; vlm/bench/clip_throughput.py), extract (SROIE receipts end to end, OCR and model "
                        "time, on the first --levers path; vlm/bench/extraction.py). inference also times llama.cpp "
                        "on the same LLM when llama-cpp-python is installed (vlm/bench/llamacpp.py)")
    parser.add_argument("--receipts", type=int, default=10, help="receipts timed by the extract section")
    parser.add_argument("--ocr-engines", default="rapidocr,tesseract", help="OCR engines of the extract section")
    parser.add_argument("--clip", default=None, help="CLIP for the clip section (default: the one --model carries)")
    parser.add_argument("--clip-images", type=int, default=300, help="photos indexed by the clip section")
    parser.add_argument("--clip-queries", type=int, default=50, help="text queries timed by the clip section")
    parser.add_argument("--levers", default=DEFAULT_LEVERS,
                        help=f"comma list of vlm paths, the first is 'the vlm path' (tokens: {LEVER_TOKENS}; "
                        "default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--batch-repeats", type=int, default=3)
    parser.add_argument("--agreement-samples", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, help="torch threads for the whole run (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "bench" / "results",
                        help="JSON output folder (default: vlm/bench/results)")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="render earlier result files (e.g. an inference run and a training run) as one")
    parser.add_argument("--readme", type=Path, help="markdown file whose results block to rewrite "
                        "(e.g. vlm/bench/README.md); default: print only")


def build_model(args):
    import torch

    from vlm import VLM, TowerPreset
    from vlm.tiny import tiny_vlm

    torch.manual_seed(0)
    if args.tiny:
        return tiny_vlm(), "tiny random llama (2 layers) + tiny CLIP tower"
    if args.model:
        return VLM.load(args.model, levers=None), str(args.model)  # the baseline is the plain model
    return VLM.build(TowerPreset().to_config(), args.llm), f"{args.llm} + fresh TowerPreset tower (112px, 49 tokens)"


def run(args) -> int:
    import torch

    from vlm.optimize import weight_bytes_per_token

    from vlm.bench import inference, machine, report, roofline

    if args.merge:
        import json

        missing = [str(p) for p in args.merge if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"result file(s) not found: {', '.join(missing)}")
        result = report.merge([json.loads(p.read_text()) for p in args.merge],
                              "vlm bench --merge " + " ".join(p.name for p in args.merge))
        return _emit(result, args)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sections - {"inference", "training", "clip", "extract"}
    if unknown:
        raise ValueError(f"unknown section(s) {sorted(unknown)}; use inference, training, clip, extract")
    from vlm.optimize import parse_levers

    option_sets = [parse_levers(s) for s in args.levers.split(",") if s.strip()]
    if not option_sets:
        raise ValueError("--levers needs at least one path")
    if not (args.data / "dev.jsonl").exists():
        raise FileNotFoundError(f"no dev.jsonl in {args.data} (pass --data FLICKR8K_DIR)")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = inference.InferenceConfig(
        repeats=args.repeats, decode_tokens=args.decode_tokens, batch_sizes=_int_list(args.batch_sizes),
        batch_repeats=args.batch_repeats, agreement_samples=args.agreement_samples)
    if args.tiny:
        cfg.repeats, cfg.batch_repeats, cfg.warmup = min(cfg.repeats, 2), 1, 0
        cfg.decode_tokens, cfg.answer_tokens, cfg.batch_tokens = 4, 4, 2
        cfg.agreement_samples, cfg.agreement_tokens = min(cfg.agreement_samples, 2), 4
    log = lambda msg: print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    log("measuring machine")
    info = machine.measure(bandwidth_mib=64 if args.tiny else 1024, matmul_size=256 if args.tiny else 1024)
    if sections == {"clip"}:  # the CLIP alone: no llava model to build
        base_vlm, model_desc, ws_bw = None, f"CLIP of {args.clip or args.model or 'vlm-tiny'}", None
    else:
        base_vlm, model_desc = build_model(args)
        ws_mib = max(1, weight_bytes_per_token(base_vlm.model) // 2**21)  # copy reads + writes: half each
        ws_bw = machine.copy_bandwidth(mib=min(ws_mib, 64) if args.tiny else ws_mib)
    result = {
        "kind": "tiny" if args.tiny else "bench",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "vlm bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"]
        else "vlm bench",
        "model": model_desc,
        "machine": info.to_dict(),
        "working_set_bandwidth_gbs": round(ws_bw / 1e9, 2) if ws_bw else None,
    }
    if "inference" in sections:
        samples = inference.load_samples(args.data, max(cfg.agreement_samples, max(cfg.batch_sizes), 1))
        result["inference"] = inference.run(base_vlm, option_sets, samples, cfg, log=log)
        result["roofline"] = roofline.roofline(
            result["inference"]["latency"], result["inference"]["bytes_per_token"],
            {"dram": info.copy_bandwidth_gbs * 1e9, "working_set": ws_bw})
        if not args.tiny:
            from vlm.bench import llamacpp

            log("llama.cpp reference")
            result["llamacpp"] = llamacpp.run(result["inference"]["prompt_tokens"], cfg.decode_tokens, cfg.repeats,
                                              args.threads or torch.get_num_threads(), log=log)
    if "training" in sections:
        from vlm.train import bench as training

        log("training")
        result["training"] = training.run(args, base_vlm, info, log=log)
    if "clip" in sections:
        from vlm.clip import Clip

        from vlm.bench import clip_throughput

        clip = Clip.load(args.clip) if args.clip else (
            base_vlm.clip if base_vlm is not None and args.model else Clip.load(args.model or "vlm-tiny"))
        result["clip"] = clip_throughput.run(clip, args.data, args.clip_images, args.clip_queries,
                                             video_seconds=0 if args.tiny else 20, log=log)
    if "extract" in sections:
        from vlm.bench import extraction

        engines = [e.strip() for e in args.ocr_engines.split(",") if e.strip()]
        _, (vlm_path, *_) = inference.make_paths(base_vlm, option_sets[:1])  # the vlm path's levers
        result["extract"] = extraction.run(vlm_path.vlm, extraction.receipts(2 if args.tiny else args.receipts),
                                           engines, log=log)
        result["extract"]["levers"] = vlm_path.name
    result["load_after"] = machine.load_average()
    result["summary"] = report.summary(result)
    return _emit(result, args)


def _emit(result: dict, args) -> int:
    from vlm.bench import report

    path = report.write_json(result, args.out)
    table = report.markdown(result)
    print(table)
    print(f"results: {path}")
    if args.readme:
        report.update_readme(args.readme, table)
        print(f"table written to {args.readme}")
    return 0
