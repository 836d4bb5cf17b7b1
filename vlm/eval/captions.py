"""Image captioning: BLEU-4 and CIDEr (coco-caption's scorers from ``pycocoevalcap``), mean caption length.

Tokenisation: coco-caption's Stanford PTB tokenizer (lower case, punctuation tokens removed) when
``java`` is on the PATH, else :func:`vlm.eval.text_norm.simple_caption_tokens` (lower case, punctuation
stripped). The report names the one used, since scores move a little between them. BLEU-4 is
coco-caption's corpus BLEU ("closest" reference length); CIDEr is coco-caption's CIDEr-D, whose
document frequencies come from the references of the evaluated set.
"""
from __future__ import annotations

import shutil
from collections.abc import Sequence

from .records import Record
from .text_norm import simple_caption_tokens

DEFAULT_PROMPT = "Write a one-sentence caption for this photo."  # one of the stage-1 training prompts
# Beam search, as captioning evaluations usually decode; on Flickr8k dev (200 images) vlm-tiny v1 scored
# CIDEr 0.147 with 3 beams and 0.120 greedy (`--num-beams 1`).
DEFAULT_BEAMS = 3
DEFAULT_MAX_NEW_TOKENS = 40  # a Flickr8k caption is about 12 words


def _ptb_tokenize(texts: dict[str, list[str]]) -> dict[str, list[str]] | None:
    """coco-caption's PTB tokenisation, or None when it cannot run (no java, a failure, lost lines)."""
    if shutil.which("java") is None:
        return None
    try:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        # PTB drops empty lines, which would shift every later caption: give them a placeholder token.
        data = {k: [{"caption": t if t.strip() else "<empty>"} for t in v] for k, v in texts.items()}
        out = PTBTokenizer().tokenize(data)
    except (OSError, ValueError, UnicodeError):
        return None
    if set(out) != set(texts) or any(len(out[k]) != len(v) for k, v in texts.items()):
        return None
    return {k: [("" if not texts[k][i].strip() else s) for i, s in enumerate(v)] for k, v in out.items()}


def tokenize(texts: dict[str, list[str]], tokenizer: str = "auto") -> tuple[dict[str, list[str]], str]:
    """Tokenise ``{id: [caption, ...]}``. ``tokenizer``: "auto" (PTB if possible), "ptb" or "simple"."""
    if tokenizer not in ("auto", "ptb", "simple"):
        raise ValueError(f"unknown tokenizer {tokenizer!r}; use auto, ptb or simple")
    if tokenizer in ("auto", "ptb"):
        out = _ptb_tokenize(texts)
        if out is not None:
            return out, "ptb"
        if tokenizer == "ptb":
            raise ValueError("the PTB tokenizer needs java on the PATH (or use --tokenizer simple)")
    return {k: [simple_caption_tokens(t) for t in v] for k, v in texts.items()}, "simple"


def score(predictions: Sequence[str], references: Sequence[Sequence[str]], tokenizer: str = "auto") -> dict:
    """BLEU-1..4, CIDEr(-D) and mean predicted length (in tokens) for parallel predictions/references."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference sets")
    if not predictions:
        raise ValueError("no predictions to score")
    if any(not refs for refs in references):
        raise ValueError("every example needs at least one reference caption")
    keys = [str(i) for i in range(len(predictions))]
    both = {f"r{k}": list(refs) for k, refs in zip(keys, references)}
    both.update({f"p{k}": [str(p or "")] for k, p in zip(keys, predictions)})
    tokens, used = tokenize(both, tokenizer)
    gts = {k: tokens[f"r{k}"] for k in keys}
    res = {k: tokens[f"p{k}"] for k in keys}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    lengths = [len(res[k][0].split()) for k in keys]
    return {
        "bleu1": float(bleu[0]), "bleu2": float(bleu[1]), "bleu3": float(bleu[2]), "bleu4": float(bleu[3]),
        "cider": float(cider),
        "mean_length": sum(lengths) / len(lengths),
        "empty": sum(1 for n in lengths if n == 0),
        "tokenizer": used,
    }


def reference(record: Record) -> list[str]:
    return list(record.data["captions"])


def model_predictor(vlm, prompt: str = DEFAULT_PROMPT, **gen):
    """The model as a captioner: one batched ``ask_batch`` call per batch of images."""

    def predict(batch: Sequence[Record]) -> list[str]:
        return vlm.ask_batch([(rec.image, prompt) for rec in batch], **gen)

    return predict
