"""The stock transformers LLM exported to ONNX (:mod:`vlm.engines.onnx`) vs transformers float32, in one process.

    python -m vlm.bench.onnx_engine --images 20

Every path answers the same prepared requests (Flickr8k dev images, "Describe the image.", greedy,
``max_new_tokens`` 48); the image is processed once per request outside the timers; each timer covers vision
tower + projector (torch) + prefill + decode. Paths run interleaved per image in a rotating order, after one
warm-up request each, so drift of this shared machine hits every path alike. Reported per path: median TTFT,
median decode tok/s (tokens after the first over the time after the first), the median of the per-image
ratio to the reference, % of answers (and token ids) identical to the reference.

Paths: ``transformers`` (stock ``model.generate`` float32 with vlm's kwargs, the reference); ``ort`` (ONNX
Runtime, all graph optimisations, ``--threads`` intra-op threads); ``ort-basic`` (basic optimisations only);
``ort-defthreads`` (ORT's own thread count); ``ov-onnx`` / ``ov-onnx-fp16`` (the same ``llm.onnx`` read by
``openvino.convert_model``, explicit KV in/out, f32 inference; fp16: weights stored as float16);
``ort@<folder>``: ONNX Runtime on another export of the same LLM in ``<folder>`` (``llm.onnx`` +
``export.json``), e.g. one made with the dynamo exporter.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from vlm.bench.machine import median
from vlm.engines.onnx import GRAPH, OrtDecoder

QUESTION = "Describe the image."


class _Clock(StoppingCriteria):
    """Records the time of every generated token (``generate`` calls stopping criteria once per step)."""

    def __init__(self, stamps: list):
        self.stamps = stamps

    def __call__(self, input_ids, scores, **kwargs):
        self.stamps.append(time.perf_counter())
        return torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)


def _timed_kwargs(model, processor, prepared, stamps: list) -> dict:
    """vlm's ``generate`` kwargs for ``prepared`` plus a clock criterion appending each token's time to ``stamps``."""
    from vlm import generation

    kwargs = generation.generate_kwargs(model, processor, prepared.options, prepared.prompt_width)
    kwargs["stopping_criteria"] = StoppingCriteriaList([_Clock(stamps)])
    return kwargs


class TransformersPath:
    def __init__(self, name, vlm):
        self.name, self.vlm = name, vlm

    def run(self, prepared):
        model, processor, batch = self.vlm.model, self.vlm.processor, prepared.batch
        stamps: list[float] = []
        kwargs = _timed_kwargs(model, processor, prepared, stamps)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**batch, **kwargs)
        return out[0, prepared.prompt_width:].tolist(), [t - start for t in stamps]


class EnginePath:
    """``model.generate``'s loop (:mod:`vlm.engines.loop`) on a step engine: what ``VLM`` runs with the onnx lever."""

    def __init__(self, name, decoder, vlm):
        self.name, self.decoder, self.vlm = name, decoder, vlm

    def run(self, prepared):
        from vlm.engines import loop

        stamps: list[float] = []
        kwargs = _timed_kwargs(self.vlm.model, self.vlm.processor, prepared, stamps)
        start = time.perf_counter()
        with torch.inference_mode():
            out = loop.run(self.decoder, prepared.batch, loop.settings(self.vlm.model, kwargs), kwargs)
        return out[0, prepared.prompt_width:].tolist(), [t - start for t in stamps]


class OVOnnxDecoder(OrtDecoder):
    """:class:`OrtDecoder`'s loop on OpenVINO: ``llm.onnx`` read by ``openvino.convert_model`` (explicit KV
    inputs/outputs, not stateful), compiled for CPU with f32 inference. A bench comparison only."""

    def __init__(self, model, threads: int | None = None, fp16: bool = False):
        import openvino as ov

        from vlm.engines.onnx import export

        folder = export(model)
        ov_model = ov.convert_model(folder / GRAPH)
        if fp16:  # weights stored as float16, decompressed for f32 matmuls (round trip through save_model)
            ir = folder / "openvino-fp16.xml"
            if not ir.exists():
                ov.save_model(ov_model, ir, compress_to_fp16=True)
            ov_model = ov.Core().read_model(ir)
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        self.compiled = ov.Core().compile_model(ov_model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.out_names = [o.get_any_name() for o in self.compiled.outputs]
        self.model, self.prefix = model, None
        self._setup(folder, model.model.get_input_embeddings().weight.detach().float().numpy())

    def _run(self, state_past, embeds, mask, positions):
        res = self.request.infer({"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions,
                                  **state_past})
        outs = {name: res[i] for i, name in enumerate(self.out_names)}
        past = {n: outs[n.replace("past", "present")].copy() for n in self.past_names}
        return outs["logits"].copy(), past


def make_paths(base, which, threads, log):
    paths = [TransformersPath("transformers", base)]
    builders = {
        "ort": lambda: OrtDecoder(base.model, threads=threads),
        "ort-basic": lambda: OrtDecoder(base.model, threads=threads, optimization="basic"),
        "ort-defthreads": lambda: OrtDecoder(base.model, threads=None),
        "ov-onnx": lambda: OVOnnxDecoder(base.model, threads=threads),
        "ov-onnx-fp16": lambda: OVOnnxDecoder(base.model, threads=threads, fp16=True),
    }
    for name in which:
        started = time.perf_counter()
        try:
            if name.startswith("ort@"):  # another export of the same LLM (llm.onnx + export.json in that folder)
                from pathlib import Path

                decoder = OrtDecoder(base.model, threads=threads, folder=Path(name[4:]))
            else:
                decoder = builders[name]()
            paths.append(EnginePath(name, decoder, base))
            log(f"built {name} in {time.perf_counter() - started:.1f} s")
        except Exception as exc:  # a path that does not build is reported, the others still run
            log(f"{name}: not built: {type(exc).__name__}: {exc}")
    return paths


def run(n_images: int, which: list[str], threads: int, max_new_tokens: int, log=print) -> dict:
    from vlm import VLM
    from vlm.bench.inference import load_samples, open_image
    from vlm.engines.onnx import checkpoint_key, export
    from vlm.messages import user_turn
    from vlm.paths import data_dir

    torch.set_num_threads(threads)
    base = VLM.load("vlm-tiny", levers=None)  # stock transformers float32
    started = time.perf_counter()
    folder = export(base.model)
    log(f"export ready in {time.perf_counter() - started:.1f} s ({folder}, key {checkpoint_key(base.model)})")
    paths = make_paths(base, which, threads, log)
    samples = load_samples(data_dir("flickr8k"), n_images)
    prepared = [base.prepare([user_turn(open_image(s["path"]), QUESTION)], max_new_tokens=max_new_tokens,
                             ocr="never") for s in samples]
    for p in paths:
        p.run(prepared[0])
    rows = {p.name: {"ttft": [], "tok_s": [], "tokens": []} for p in paths}
    for i, prep in enumerate(prepared):
        for p in paths[i % len(paths):] + paths[: i % len(paths)]:
            tokens, stamps = p.run(prep)
            r = rows[p.name]
            r["tokens"].append(tokens)
            r["ttft"].append(stamps[0])
            r["tok_s"].append((len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None)
        log(f"image {i + 1}/{len(prepared)}: " + ", ".join(
            f"{p.name} {rows[p.name]['ttft'][-1]:.2f}s/{rows[p.name]['tok_s'][-1] or 0:.1f}tok/s" for p in paths))
    tok = base.processor.tokenizer
    text = lambda ids: tok.decode(ids, skip_special_tokens=True).strip()  # noqa: E731
    ref = rows["transformers"]
    table, differences = {}, {}
    for p in paths:
        r = rows[p.name]
        ratio = [a / b for a, b in zip(r["tok_s"], ref["tok_s"]) if a and b]
        same_text = [text(a) == text(b) for a, b in zip(r["tokens"], ref["tokens"])]
        table[p.name] = {
            "ttft_s": round(median(r["ttft"]), 3),
            "decode_tok_s": round(median([x for x in r["tok_s"] if x]), 1),
            "decode_speedup": round(median(ratio), 2),
            "ttft_speedup": round(median([b / a for a, b in zip(r["ttft"], ref["ttft"])]), 2),
            "identical": round(float(np.mean(same_text)), 3),
            "identical_tokens": round(float(np.mean([a == b for a, b in zip(r["tokens"], ref["tokens"])])), 3),
        }
        differences[p.name] = [(i, text(a), text(b)) for i, (a, b, s) in
                               enumerate(zip(r["tokens"], ref["tokens"], same_text)) if not s]
    return {"images": len(prepared), "threads": threads, "max_new_tokens": max_new_tokens,
            "prompt_tokens": prepared[0].prompt_tokens[0], "table": table, "differences": differences}


def markdown(result: dict) -> str:
    lines = [f"{result['images']} Flickr8k dev images, \"{QUESTION}\", greedy, max_new_tokens "
             f"{result['max_new_tokens']}, {result['threads']} threads, prompt {result['prompt_tokens']} tokens",
             "",
             "| path | TTFT s | decode tok/s | decode x ref | TTFT x ref | identical answers | identical ids |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in result["table"].items():
        lines.append(f"| {name} | {r['ttft_s']} | {r['decode_tok_s']} | {r['decode_speedup']} | {r['ttft_speedup']} | "
                     f"{r['identical'] * 100:.0f}% | {r['identical_tokens'] * 100:.0f}% |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--paths", default="ort,ort-basic,ort-defthreads,ov-onnx,ov-onnx-fp16",
                    help="comma-separated paths besides the transformers reference")
    ap.add_argument("--json", help="also write the result as JSON here")
    args = ap.parse_args(argv)
    log = lambda msg: print(f"[onnx {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    which = [p.strip() for p in args.paths.split(",") if p.strip()]
    result = run(args.images, which, args.threads, args.max_new_tokens, log)
    print(markdown(result))
    for name, diffs in result["differences"].items():
        for i, a, b in diffs[:5]:
            print(f"{name} differs on image {i}: {a!r} vs reference {b!r}")
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
