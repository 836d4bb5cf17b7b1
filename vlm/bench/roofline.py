"""Decode roofline: tokens/s bound = copy bandwidth / bytes read per token (weights + KV cache)."""
from __future__ import annotations


def roofline(latency: dict, bytes_per_token: dict, bandwidth: dict[str, float]) -> dict:
    """Per path: bytes/token, the bound at each measured bandwidth (bytes/s) and the achieved fraction.

    ``bandwidth`` maps a label (``"dram"``: buffer larger than the last-level cache, ``"working_set"``: a
    buffer the size of the fp32 weights) to bytes/s. On CPUs whose L3 holds the weights, decode can beat the
    DRAM bound; the working-set figure is then the fairer roof.
    """
    out = {}
    for name, lat in latency.items():
        nbytes = bytes_per_token[name]
        row = {"bytes_per_token_mb": round(nbytes / 1e6, 1), "decode_tok_s": lat["decode_tok_s"]}
        for label, bw in bandwidth.items():
            bound = bw / nbytes
            row[f"bound_{label}_tok_s"] = round(bound, 2)
            tok_s = lat["decode_tok_s"]
            row[f"fraction_{label}"] = None if tok_s is None else round(tok_s / bound, 3)
        out[name] = row
    return out
