"""``vlm eval retrieval``: image<->text recall@1/5/10 of a stage-0 tower's retrieval space or of a CLIP-interface
model folder (a LiT-trained ``VisionTextDualEncoderModel``, a ``CLIPModel``: :mod:`vlm.eval.retrieval_clip`),
vs chance; for a CLIP also the zero-shot check of :mod:`vlm.eval.retrieval_zeroshot`.

Uses :mod:`vlm.eval.retrieval` (the stage-0 embedding helpers and :func:`recall_at_k`). Records are
``{"image", "captions": [...]}``; every caption is a text to retrieve. Retrieval is one similarity
matrix, so it is recomputed on every run (no resume); predictions.jsonl holds, per image, its top-5
captions and the rank of its best-ranked own caption (0 = first).
"""
from __future__ import annotations

from pathlib import Path

from .records import load_records
from .report import RunInfo, open_run, write_report

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def evaluate_retrieval(data, vision, out, *, limit=None, batch_size: int = 64, dtype=None, fresh: bool = False,
                       progress: bool = True, flip_average: bool | None = None) -> dict:
    import time

    import torch
    from tqdm.auto import tqdm

    from vlm.compose import load_llm, load_tokenizer
    from vlm.images import load_image

    from .retrieval import (TextSide, chance_recall, embed_pixels, load_retrieval_tower, preprocess_images,
                            recall_at_k)

    from vlm.registry import vision_folder

    from .retrieval_clip import is_dual_encoder

    vision = vision_folder(vision)
    dtype = dtype or torch.float32
    if is_dual_encoder(vision):
        return evaluate_dual_encoder(data, vision, out, limit=limit, batch_size=batch_size, dtype=dtype,
                                     progress=progress, flip_average=flip_average)
    if flip_average is not None:
        raise ValueError("--flip-average applies to CLIP-interface model folders; a stage-0 tower's "
                         "retrieval.json says whether it flip-averages")
    records = load_records(data, ("image", "captions"), limit)
    info = RunInfo("retrieval", str(Path(data).resolve()), str(Path(vision).resolve()), {"dtype": str(dtype)})
    log = open_run(out, info, fresh=True)  # one matrix: always recomputed
    start = time.perf_counter()
    tower, head, spec, prep = load_retrieval_tower(vision, dtype)
    mean, std = prep.get("image_mean", CLIP_MEAN), prep.get("image_std", CLIP_STD)
    size = tower.config.image_size
    img_chunks = []
    step = max(batch_size, 1)
    for s in tqdm(range(0, len(records), step), desc="images", disable=not progress, leave=False):
        pil = [load_image(r.image) for r in records[s:s + step]]
        img_chunks.append(embed_pixels(tower, head, preprocess_images(pil, size, mean, std), step, spec))
    images = torch.cat(img_chunks)
    texts, owner = [], []
    for i, r in enumerate(records):
        caps = [str(c) for c in r.data["captions"]]
        if not caps:
            raise ValueError(f"record {r.id} has no captions")
        texts.extend(caps)
        owner.extend([i] * len(caps))
    side = TextSide.load(vision, spec)
    if side.vocabulary is None:
        llm, tokenizer = load_llm(spec.text_model, dtype)
    else:  # a bag of tokens needs only the tokenizer
        llm, tokenizer = None, load_tokenizer(spec.text_model)
    txt = side.embed(llm, tokenizer, texts, spec.text_layer, batch_size=max(step, 64))
    sim = images.float() @ txt.float().T
    metrics = recall_at_k(sim, owner)
    seconds = time.perf_counter() - start
    owner_t = torch.tensor(owner)
    for i, r in enumerate(records):
        row = sim[i]
        order = row.argsort(descending=True)
        own = (owner_t[order] == i).nonzero()
        log.append("tower", r.id, {"top5": [texts[j] for j in order[:5].tolist()],
                                   "best_own_rank": int(own[0]) if len(own) else None})
    per_image = round(len(texts) / len(records))
    if side.vocabulary is None:
        text_note = f"{spec.text_model} layer {spec.text_layer}, {spec.text_pooling} pooling"
    else:
        text_note = f"tf-idf bags of {len(side.vocabulary)} {spec.text_model} tokens"
    systems = {
        "tower": {**metrics, "images": len(records), "texts": len(texts),
                  "note": f"stage-0 retrieval space ({text_note}; {spec.head} image head on {spec.image_features} "
                          f"features{', flip-averaged' if spec.flip_average else ''})"},
        "chance": {**chance_recall(len(records), per_image), "images": len(records), "texts": len(texts),
                   "note": f"expected recall of a random ranking ({per_image} captions per image)"},
    }
    timings = {"tower": {"computed": len(records), "resumed": 0, "seconds": round(seconds, 3)}}
    path = write_report(out, info, systems, timings, len(records))
    import json

    return json.loads(path.read_text())


def _flat_captions(records) -> tuple[list[str], list[int]]:
    texts, owner = [], []
    for i, r in enumerate(records):
        caps = [str(c) for c in r.data["captions"]]
        if not caps:
            raise ValueError(f"record {r.id} has no captions")
        texts.extend(caps)
        owner.extend([i] * len(caps))
    return texts, owner


def evaluate_dual_encoder(data, folder, out, *, limit=None, batch_size: int = 64, dtype=None,
                          progress: bool = True, flip_average: bool | None = None) -> dict:
    """Retrieval R@1/5/10 (same protocol and report as a stage-0 tower) and the zero-shot check of a
    CLIP-interface model folder. Systems: ``clip``, ``chance``, ``zero-shot`` (when any record is labelled)."""
    import json
    import time

    import torch
    from tqdm.auto import tqdm

    from vlm.images import load_image

    from . import retrieval_zeroshot as zs
    from .retrieval import chance_recall, recall_at_k
    from .retrieval_clip import ClipEmbedder

    records = load_records(data, ("image", "captions"), limit)
    start = time.perf_counter()
    clip = ClipEmbedder(folder, dtype or torch.float32, flip_average)
    info = RunInfo("retrieval", str(Path(data).resolve()), str(Path(folder).resolve()),
                   {"dtype": str(clip.dtype), "flip_average": clip.flip_average})
    log = open_run(out, info, fresh=True)  # one matrix: always recomputed
    step = max(batch_size, 1)
    images = torch.cat([clip.images([load_image(r.image) for r in records[s:s + step]])
                        for s in tqdm(range(0, len(records), step), desc="images", disable=not progress, leave=False)])
    texts, owner = _flat_captions(records)
    txt = clip.texts(texts)
    sim = images @ txt.T
    metrics = recall_at_k(sim, owner)
    owner_t = torch.tensor(owner)
    for i, r in enumerate(records):
        order = sim[i].argsort(descending=True)
        own = (owner_t[order] == i).nonzero()
        log.append("clip", r.id, {"top5": [texts[j] for j in order[:5].tolist()],
                                  "best_own_rank": int(own[0]) if len(own) else None})
    per_image = round(len(texts) / len(records))
    systems = {
        "clip": {**metrics, "images": len(records), "texts": len(texts), "note": clip.describe()},
        "chance": {**chance_recall(len(records), per_image), "images": len(records), "texts": len(texts),
                   "note": f"expected recall of a random ranking ({per_image} captions per image)"},
    }
    chosen = zs.labelled([r.data["captions"] for r in records])
    if chosen:
        names = list(zs.LABELS)
        prompts = clip.texts([zs.LABELS[n][0] for n in names])
        idx = torch.tensor([i for i, _ in chosen])
        result = zs.score(images[idx], prompts, [n for _, n in chosen], names)
        systems["zero-shot"] = {**result, "note": "top-1 among 10 caption-derived labels, one prompt each "
                                                  "(vlm.eval.retrieval_zeroshot)"}
    seconds = time.perf_counter() - start
    timings = {"clip": {"computed": len(records), "resumed": 0, "seconds": round(seconds, 3)}}
    path = write_report(out, info, systems, timings, len(records))
    return json.loads(path.read_text())
