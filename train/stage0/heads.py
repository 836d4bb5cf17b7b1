"""``vlm train heads``: fit the retrieval heads of a frozen vision tower in closed form, choose on dev.

Works on a stage-0 tower folder (its current head competes with the fits; its LLM text side is kept) and on
any CLIP vision checkpoint (a text side is fitted from the configured LLM). Candidates: the folder's
current head; a ridge image head and a CCA head (image and text both projected into a shared space) on the
pooled output and the LLM text side; and a CCA head between richer image features (pooled output and mean
patch tokens of the last two layers, averaged with the mirror image) and tf-idf bags of caption tokens
("cca-bag"). The best on dev text-to-image R@5 is written as the folder's retrieval files
(``vlm.eval.retrieval``); the tower's weights are never touched. Features are computed as
``vlm eval retrieval`` computes them.
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

HELP = "fit a frozen tower's retrieval heads (ridge, CCA) on Flickr8k train, keep the best on dev"
# The bag-of-tokens CCA's search grid (chosen on Flickr8k dev with vlm-tiny's tower; see docs/training.md).
BAG_MIN_COUNT = 3
BAG_GRID = dict(regs_x=(0.1, 0.3, 1.0), regs_y=(0.3, 1.0, 3.0), dims=(64, 96, 128, 192))


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


class _Views:
    """Each split's "pooled+means" features of its images and of their mirror images, computed once (one read
    of every image); every candidate's features derive from them, as ``vlm.eval.retrieval.image_features``
    computes them (the pooled output is their first block)."""

    def __init__(self, tower, splits: dict, size: int, mean, std, batch: int = 128):
        import torch
        from PIL import Image

        from vlm.eval.retrieval import image_features, preprocess_images

        self.hidden = tower.config.hidden_size
        self.plain, self.mirrored = {}, {}
        for name, split in splits.items():
            plain, mirrored = [], []
            for start in range(0, len(split.images), batch):
                images = [Image.open(p) for p in split.images[start:start + batch]]
                pixels = preprocess_images(images, size, mean, std)
                plain.append(image_features(tower, pixels, "pooled+means"))
                mirrored.append(image_features(tower, pixels.flip(-1), "pooled+means"))
            self.plain[name], self.mirrored[name] = torch.cat(plain), torch.cat(mirrored)

    def get(self, split: str, kind: str = "pooled", flip: bool = False):
        from vlm.eval.retrieval import feature_width

        x = (self.plain[split] + self.mirrored[split]) / 2 if flip else self.plain[split]
        return x[:, :feature_width(self.hidden, kind)]


def _llm_text_side(folder: Path, llm: str, text_layer: int, splits: dict, cache_dir: str | None, tokenizer):
    """(spec, the folder's current text side or None, an LLM text side without projection, its text states per
    split). A folder's own LLM side is kept (stage 0 trained the tower against it); a folder without
    retrieval files, or with a bag-of-tokens side, gets one fitted as stage 0 fits it (SIF, one direction
    removed)."""
    from vlm.eval.retrieval import SPEC_FILE, RetrievalSpec, TextSide, sif_weights

    from .config import Stage0Config
    from .text_targets import text_states

    defaults = Stage0Config()
    side = None
    if (folder / SPEC_FILE).is_file():
        spec = RetrievalSpec.load(folder)
        side = TextSide.load(folder, spec)
    else:
        spec = RetrievalSpec(text_model=llm, text_layer=text_layer, embed_dim=0, text_pooling="sif")
    own = side is not None and side.vocabulary is None
    if own:
        weights = side.token_weight
    else:
        weights = sif_weights(tokenizer(spec.text_model), splits["train"].flat_captions()[0], defaults.text_sif_a)
    states = {s: text_states(sp.flat_captions()[0], spec.text_model, spec.text_layer, cache_dir, token_weight=weights)
              for s, sp in splits.items()}
    if own:
        base = TextSide(side.mean, side.components, side.token_weight)
    else:
        base = TextSide.fit(states["train"], defaults.text_remove_components, weights)
    return spec, side, base, states


def _bag_head(views: _Views, splits: dict, owners: dict, tokenizer):
    """The "cca-bag" candidate: CCA between flip-averaged rich image features and bags of caption tokens."""
    from vlm.eval.retrieval import TextSide

    from .probe import HeadFit, cca_as_linear, cca_probe

    texts = {s: sp.flat_captions()[0] for s, sp in splits.items()}
    bag = TextSide.bag(tokenizer, texts["train"], BAG_MIN_COUNT)
    units = {s: bag.unit(bag.states(None, tokenizer, t, 0)) for s, t in texts.items()}
    feats = {s: views.get(s, "pooled+means", True) for s in splits}
    r, fit = cca_probe(feats["train"], owners["train"], units["train"], feats["dev"], units["dev"], owners["dev"],
                       **BAG_GRID)
    return HeadFit("cca-bag", r, cca_as_linear(fit), bag.with_projection(fit.y_mean, fit.y_proj), method="cca",
                   image_features="pooled+means", flip_average=True)


def _current_head(folder: Path, views: _Views, spec, side, dev_captions: list[str], dev_owner: list[int],
                  llm_states: dict, tokenizer):
    """The folder's own head, scored as ``vlm eval retrieval`` scores it."""
    import torch
    from safetensors.torch import load_file

    from vlm.eval.retrieval import HEAD_FILE, ImageHead, feature_width, recall_at_k

    from .probe import HeadFit

    head = ImageHead(feature_width(views.hidden, spec.image_features), spec.embed_dim)
    head.load_state_dict(load_file(str(folder / HEAD_FILE)))
    feats = views.get("dev", spec.image_features, spec.flip_average)
    texts = side.states(None, tokenizer, dev_captions, 0) if side.vocabulary is not None else llm_states["dev"]
    with torch.no_grad():
        recalls = recall_at_k(head(feats) @ side.unit(texts).t(), dev_owner)
    return HeadFit("current", recalls, None, side, method=spec.head, image_features=spec.image_features,
                   flip_average=spec.flip_average)


def fit_heads(vision: str, data_dir: str, out: str | None = None, llm: str = "smollm2-135m-instruct",
              text_layer: int = 0, cache_dir: str | None = None, limit: int | None = None, log=print) -> dict:
    import torch
    from safetensors.torch import save_file

    from vlm.compose import load_tokenizer, load_vision
    from vlm.eval.retrieval import HEAD_FILE
    from vlm.eval.retrieval_task import CLIP_MEAN, CLIP_STD

    from . import data as D
    from .probe import best_head, closed_form_heads

    t0 = time.time()
    folder, out_dir = Path(vision), Path(out or vision)
    tower, prep = load_vision(str(folder), torch.float32)
    tower.eval()
    size = tower.config.image_size
    mean, std = prep.get("image_mean", CLIP_MEAN), prep.get("image_std", CLIP_STD)
    splits = {s: D.load_split(data_dir, s, limit) for s in ("train", "dev")}
    tokenizer = functools.cache(load_tokenizer)
    spec, side, base_side, states = _llm_text_side(folder, llm, text_layer, splits, cache_dir, tokenizer)
    units = {s: base_side.unit(v) for s, v in states.items()}
    owners = {s: sp.flat_captions()[1] for s, sp in splits.items()}
    views = _Views(tower, splits, size, mean, std)
    log(f"features: train {tuple(views.plain['train'].shape)}, dev {tuple(views.plain['dev'].shape)} "
        f"(and mirrored) in {time.time() - t0:.0f}s")

    fits = []
    if side is not None:  # the folder's own head competes
        fits.append(_current_head(folder, views, spec, side, splits["dev"].flat_captions()[0], owners["dev"], states,
                                  tokenizer(spec.text_model)))
    fits += closed_form_heads(views.get("train"), owners["train"], units["train"], views.get("dev"), units["dev"],
                              owners["dev"], base_side)
    fits.append(_bag_head(views, splits, owners, tokenizer(spec.text_model)))
    for f in fits:
        log(f"{f.name}: {json.dumps(_rounded(f.recalls))}")
    chosen = best_head(fits)
    if out_dir.resolve() != folder.resolve():  # a copy of the tower with its new heads
        import shutil

        shutil.copytree(folder, out_dir, dirs_exist_ok=True)
    if chosen.state is not None:  # a new head won
        spec.head, spec.embed_dim = chosen.method, chosen.side.dim
        spec.image_features, spec.flip_average = chosen.image_features, chosen.flip_average
        spec.text_pooling = "bag" if chosen.side.vocabulary is not None else "sif"
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
