"""``vlm train heads``: fit the retrieval heads of a frozen vision tower in closed form, choose on dev.

Works on a stage-0 tower folder (its trained head competes with the fits; its text side is kept) and on
any CLIP vision checkpoint (a text side is fitted from the configured LLM). Candidates: the folder's
current head, a ridge image head, and a CCA head (image and text both projected into a shared space).
The best on dev text-to-image R@5 is written as the folder's retrieval files (``vlm.eval.retrieval``);
the tower's weights are never touched. Features are computed as ``vlm eval retrieval`` computes them.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HELP = "fit a frozen tower's retrieval heads (ridge, CCA) on Flickr8k train, keep the best on dev"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vision", required=True, help="tower folder (stage-0 output or a CLIP checkpoint)")
    parser.add_argument("--data-dir", default="../shared/data/flickr8k", help="folder with train.jsonl and dev.jsonl")
    parser.add_argument("--out", default=None, help="folder to write the retrieval files into (default: --vision)")
    parser.add_argument("--llm", default="smollm2-135m-instruct", help="text side for towers without one")
    parser.add_argument("--text-layer", type=int, default=0)
    parser.add_argument("--cache-dir", default="runs/stage0-cache", help="text-state cache (safetensors)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N images of each split (quick runs)")


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


def _pooled(tower, paths: list[str], size: int, mean, std, batch: int = 128):
    import torch
    from PIL import Image

    from vlm.eval.retrieval import preprocess_images

    outs = []
    with torch.no_grad():
        for start in range(0, len(paths), batch):
            images = [Image.open(p) for p in paths[start:start + batch]]
            pixels = preprocess_images(images, size, mean, std)
            outs.append(tower(pixel_values=pixels.to(tower.dtype)).pooler_output.float())
    return torch.cat(outs)


def _text_side(folder: Path, llm: str, text_layer: int, splits: dict, cache_dir: str | None):
    """(spec, the folder's text side or None, its side without a projection, text states per split).
    A folder without retrieval files gets a text side fitted as stage 0 fits it (SIF, one direction removed)."""
    from vlm.eval.retrieval import SPEC_FILE, RetrievalSpec, TextSide, sif_weights

    from .config import Stage0Config
    from .text_targets import load_text_tokenizer, text_states

    defaults = Stage0Config()
    if (folder / SPEC_FILE).is_file():
        spec = RetrievalSpec.load(folder)
        side = TextSide.load(folder, spec)
        weights = side.token_weight
    else:
        spec = RetrievalSpec(text_model=llm, text_layer=text_layer, embed_dim=0, text_pooling="sif")
        side = None
        weights = sif_weights(load_text_tokenizer(llm), splits["train"].flat_captions()[0], defaults.text_sif_a)
    states = {s: text_states(sp.flat_captions()[0], spec.text_model, spec.text_layer, cache_dir, token_weight=weights)
              for s, sp in splits.items()}
    if side is None:
        base = TextSide.fit(states["train"], defaults.text_remove_components, weights)
    else:
        base = TextSide(side.mean, side.components, side.token_weight)
    return spec, side, base, states


def fit_heads(vision: str, data_dir: str, out: str | None = None, llm: str = "smollm2-135m-instruct",
              text_layer: int = 0, cache_dir: str | None = None, limit: int | None = None, log=print) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    from vlm.compose import load_vision
    from vlm.eval.retrieval import HEAD_FILE, ImageHead, recall_at_k
    from vlm.eval.retrieval_task import CLIP_MEAN, CLIP_STD

    from . import data as D
    from .probe import HeadFit, best_head, closed_form_heads

    t0 = time.time()
    folder, out_dir = Path(vision), Path(out or vision)
    tower, prep = load_vision(str(folder), torch.float32)
    tower.eval()
    size = tower.config.image_size
    mean, std = prep.get("image_mean", CLIP_MEAN), prep.get("image_std", CLIP_STD)
    splits = {s: D.load_split(data_dir, s, limit) for s in ("train", "dev")}
    spec, side, base_side, states = _text_side(folder, llm, text_layer, splits, cache_dir)
    units = {s: base_side.unit(v) for s, v in states.items()}
    owners = {s: sp.flat_captions()[1] for s, sp in splits.items()}
    feats = {s: _pooled(tower, sp.images, size, mean, std) for s, sp in splits.items()}
    log(f"features: train {tuple(feats['train'].shape)}, dev {tuple(feats['dev'].shape)} in {time.time() - t0:.0f}s")

    fits = []
    if side is not None:  # the folder's own head competes
        head = ImageHead(tower.config.hidden_size, spec.embed_dim)
        head.load_state_dict(load_file(str(folder / HEAD_FILE)))
        with torch.no_grad():
            current = recall_at_k(head(feats["dev"]) @ side.unit(states["dev"]).t(), owners["dev"])
        fits.append(HeadFit("current", current, None, side))
    fits += closed_form_heads(feats["train"], owners["train"], units["train"], feats["dev"], units["dev"],
                              owners["dev"], base_side)
    for f in fits:
        log(f"{f.name}: {json.dumps(_rounded(f.recalls))}")
    chosen = best_head(fits)
    if out_dir.resolve() != folder.resolve():  # a copy of the tower with its new heads
        import shutil

        shutil.copytree(folder, out_dir, dirs_exist_ok=True)
    if chosen.state is not None:  # a new head won
        spec.head, spec.embed_dim = chosen.name, chosen.side.dim
        save_file({k: v.float().contiguous() for k, v in chosen.state.items()}, str(out_dir / HEAD_FILE))
        chosen.side.save(out_dir)
        spec.save(out_dir)
    summary = {"chosen": chosen.name, "dev": _rounded(chosen.recalls),
               "candidates": {f.name: round(f.recalls["t2i_r5"], 4) for f in fits},
               "seconds": round(time.time() - t0, 1), "out": str(out_dir)}
    log(f"kept {chosen.name} head: dev t2i R@5 {chosen.recalls['t2i_r5']:.4f} -> {out_dir}")
    return summary


def run(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    summary = fit_heads(args.vision, args.data_dir, args.out, args.llm, args.text_layer, args.cache_dir, args.limit)
    print(json.dumps(summary, indent=2))
    return 0
