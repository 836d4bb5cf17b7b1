"""``vlm eval retrieval``: image<->text recall@1/5/10 of a CLIP-interface model (a LiT-trained
``VisionTextDualEncoderModel``, a ``CLIPModel``, through :class:`vlm.clip.Clip`) vs chance, and the zero-shot
check of :mod:`vlm.eval.retrieval_zeroshot`.

``vision`` is a CLIP folder, or a shipped name / parts folder that carries one (see
:func:`vlm.clip.find_clip`). Uses :func:`vlm.retrieval.recall_at_k`. Records are
``{"image", "captions": [...]}``; every caption is a text to retrieve. Retrieval is one similarity
matrix, so it is recomputed on every run (no resume); predictions.jsonl holds, per image, its top-5
captions and the rank of its best-ranked own caption (0 = first).
"""
from __future__ import annotations

from pathlib import Path

from .records import load_eval_records
from .report import RunInfo, open_run, write_report


def _flat_captions(records) -> tuple[list[str], list[int]]:
    texts, owner = [], []
    for i, r in enumerate(records):
        caps = [str(c) for c in r.data["captions"]]
        if not caps:
            raise ValueError(f"record {r.id} has no captions")
        texts.extend(caps)
        owner.extend([i] * len(caps))
    return texts, owner


def evaluate_retrieval(data, vision, out, *, limit=None, batch_size: int = 64, dtype=None,
                       progress: bool = True, flip_average: bool | None = None) -> dict:
    """Retrieval R@1/5/10 and the zero-shot check of a CLIP (module docstring). Systems: ``clip``,
    ``chance``, ``zero-shot`` (when any record is labelled)."""
    import json
    import time

    import torch
    from tqdm.auto import tqdm

    from vlm.images import load_image
    from vlm.clip import Clip, find_clip

    from . import retrieval_zeroshot as zs
    from vlm.retrieval import chance_recall, recall_at_k

    folder = find_clip(vision)
    records = load_eval_records(data, ("image", "captions"), limit)
    start = time.perf_counter()
    clip = Clip.load(folder, dtype or torch.float32, flip_average)
    info = RunInfo("retrieval", str(Path(data).resolve()), str(Path(folder).resolve()),
                   {"dtype": str(clip.dtype), "flip_average": clip.flip_average})
    log = open_run(out, info, fresh=True)  # one matrix: always recomputed
    step = max(batch_size, 1)
    images = torch.cat([clip.embed_pil([load_image(r.image) for r in records[s:s + step]])
                        for s in tqdm(range(0, len(records), step), desc="images", disable=not progress, leave=False)])
    texts, owner = _flat_captions(records)
    txt = clip.embed_texts(texts)
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
        prompts = clip.embed_texts([zs.LABELS[n][0] for n in names])
        idx = torch.tensor([i for i, _ in chosen])
        result = zs.score(images[idx], prompts, [n for _, n in chosen], names)
        systems["zero-shot"] = {**result, "note": "top-1 among 10 caption-derived labels, one prompt each "
                                                  "(vlm.eval.retrieval_zeroshot)"}
    seconds = time.perf_counter() - start
    timings = {"clip": {"computed": len(records), "resumed": 0, "seconds": round(seconds, 3)}}
    path = write_report(out, info, systems, timings, len(records))
    return json.loads(path.read_text())
