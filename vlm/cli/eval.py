"""``vlm eval {sroie,captions,retrieval,vqa,ocr}``: score a model and its baselines on a JSONL data file.

``vlm eval ocr`` scores OCR engines alone (no model): per-field ceilings on SROIE and speed
(:mod:`vlm.eval.ocr_ceiling`); it writes ``--out DIR/report.json`` and prints a Markdown table.

The other tasks: each run writes ``--out DIR/report.json`` (metrics of every system side by side, model, data, timings) and
``DIR/predictions.jsonl`` (one line per example and system, appended as it goes). Running the same
command again resumes: finished examples are not redone (``--fresh`` starts over).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vlm.config import GenerationOptions
from vlm.eval.captions import DEFAULT_MAX_NEW_TOKENS as CAPTION_TOKENS
from vlm.paths import data_dir

HELP = "evaluate a model against baselines (sroie, captions, retrieval, vqa), or OCR engines (ocr)"

DEFAULT_FLICKR_TRAIN = data_dir("flickr8k", "train.jsonl")

SYSTEMS = {
    "sroie": ("model", "rules", "zero-shot"),
    "captions": ("model", "nearest-neighbour"),
    "vqa": ("model", "blind", "prior", "llm"),
}


def _common(p: argparse.ArgumentParser, task: str) -> None:
    p.add_argument("--data", required=True, help="JSONL data file (image paths relative to its folder)")
    p.add_argument("--out", default=None, help=f"output folder (default: runs/eval/{task}-<data file name>)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N records only")
    p.add_argument("--fresh", action="store_true", help="discard earlier predictions in --out and start over")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _model_args(p: argparse.ArgumentParser, task: str) -> None:
    p.add_argument("--model", default="vlm-tiny", help="shipped name or model folder (default: vlm-tiny)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--levers", default=None, help="inference levers applied to the model, as in `vlm bench` "
                   "(e.g. int8, bf16, int8+reuse); default: none")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"answer budget in tokens (default: captions {CAPTION_TOKENS}; vqa the chat default, "
                        f"{GenerationOptions.max_new_tokens}, so long answers such as addresses are not cut)")
    if task != "sroie":  # extraction decodes under its JSON grammar
        from vlm.cli.common import add_decoding_arguments
        from vlm.grounding import OCR_MODES

        add_decoding_arguments(p)
        p.add_argument("--ocr", choices=OCR_MODES, default="auto",
                       help="OCR text of each image in the prompt, as chat does (vlm.grounding): auto = when OCR "
                            "finds real text, always, never (default: %(default)s)")
        p.add_argument("--no-key-fields", dest="key_fields", action="store_false",
                       help="leave the receipt rules' key fields out of a receipt's OCR text (chat puts them "
                            "above the rows; vlm.grounding)")
    p.add_argument("--systems", default=",".join(SYSTEMS[task]),
                   help=f"comma-separated systems to run (default: {','.join(SYSTEMS[task])})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")

    p = sub.add_parser("sroie", help="receipt key fields (SROIE task 3 P/R/F1) vs OCR+rules and OCR+LLM")
    _common(p, "sroie")
    _model_args(p, "sroie")
    p.add_argument("--llm", default="smollm2-135m-instruct", help="text LLM of the zero-shot baseline")
    p.add_argument("--zero-shot-limit", type=int, default=None, help="run the zero-shot baseline on the first N only")
    from vlm.cli.common import add_ocr_engine_argument

    add_ocr_engine_argument(p)

    p = sub.add_parser("captions", help="captioning (BLEU-4, CIDEr) vs nearest-neighbour captions")
    _common(p, "captions")
    _model_args(p, "captions")
    p.add_argument("--train", default=None,
                   help="training captions for the nearest-neighbour baseline (default: train.jsonl beside "
                        f"--data, else {DEFAULT_FLICKR_TRAIN})")
    p.add_argument("--prompt", default=None, help="captioning prompt")
    p.add_argument("--nn-k", type=int, default=1, help="neighbours pooled by the nearest-neighbour baseline")
    p.add_argument("--tokenizer", default="auto", choices=["auto", "ptb", "simple"],
                   help="caption tokenisation for scoring (auto: PTB if java is available)")

    p = sub.add_parser("retrieval", help="image-text retrieval R@1/5/10 of a CLIP vs chance, and a zero-shot "
                       "check (10 caption-derived labels)")
    _common(p, "retrieval")
    p.add_argument("--vision", default="vlm-tiny", help="a CLIP-interface model folder (`vlm train clip` output, "
                   "a CLIPModel), or a shipped model / parts folder that carries one in clip/ (default: %(default)s)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--flip-average", action=argparse.BooleanOptionalAction, default=None,
                   help="CLIP folders: average each image with its mirror image (default: what lit.json says)")

    p = sub.add_parser("vqa", help="visual question answering accuracy vs blind-model and answer-prior baselines")
    _common(p, "vqa")
    _model_args(p, "vqa")
    p.add_argument("--suffix", default=None, help="instruction appended to each question")
    p.add_argument("--prior-train", default=None, help="VQA file the answer prior is fitted on (e.g. "
                   "flickr8k_vqa_train.jsonl from `vlm prep qa`; default: the evaluated file, an optimistic prior)")
    p.add_argument("--llm", default="smollm2-135m-instruct",
                   help="base text LLM of the optional 'llm' system (the same prompt, no image; default: %(default)s)")
    p.set_defaults(systems="model,blind,prior")

    p = sub.add_parser("ocr", help="OCR engines on SROIE: per-field ceilings (gold value in the OCR text) and speed")
    p.add_argument("--data", required=True, help="SROIE JSONL (id, image, entities; e.g. sroie_val.jsonl from "
                   "`vlm prep sroie`) or a folder holding train.jsonl (the shared SROIE folder)")
    p.add_argument("--engines", default="rapidocr,tesseract,both", help="comma-separated engines (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: runs/eval/ocr-<data file name>)")
    p.add_argument("--limit", type=int, default=None, help="the first N receipts only (after --every)")
    p.add_argument("--every", type=int, default=1, help="every N-th receipt of the file (a spread-out sample)")
    p.add_argument("--timed", type=int, default=10, help="receipts OCR'd without the cache and timed (default: 10)")
    p.add_argument("--tesseract-psm", type=int, default=None, help="Tesseract page segmentation mode (3, 4, 6, 11...)")
    p.add_argument("--tesseract-scale", type=float, default=None, help="resize factor before Tesseract")
    p.add_argument("--tesseract-binarise", action=argparse.BooleanOptionalAction, default=None,
                   help="Otsu-binarise the image before Tesseract")
    p.add_argument("--merge-conflicts", action=argparse.BooleanOptionalAction, default=None,
                   help="'both': keep the second engine's lines that overlap but read differently")
    p.add_argument("--merge-primary", default=None, choices=["rapidocr", "tesseract"],
                   help="'both': the engine whose lines are all kept")
    p.add_argument("--progress", action="store_true", help="print a line per receipt")


def _systems(args) -> list[str]:
    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SYSTEMS[args.task]]
    if unknown or not wanted:
        raise ValueError(f"unknown system(s) {', '.join(unknown) or '(none)'} for {args.task}; "
                         f"choose from {', '.join(SYSTEMS[args.task])}")
    return wanted


def _out(args) -> Path:
    return Path(args.out) if args.out else Path("runs") / "eval" / f"{args.task}-{Path(args.data).stem}"


def _grounding(args) -> tuple[dict, dict]:
    """``(generation keyword, report settings)`` of the OCR grounding flags."""
    from vlm.grounding import GroundingOptions

    return ({"ocr": GroundingOptions(ocr=args.ocr, key_fields=args.key_fields)},
            {"ocr": args.ocr, "key_fields": args.key_fields})


def _gen(args) -> dict:
    names = ("max_new_tokens", "repetition_penalty", "no_repeat_ngram_size", "num_beams")
    return {k: getattr(args, k) for k in names if getattr(args, k, None)}


class _ModelLoader:
    """Loads the model once, on first use (a fully resumed run never loads it)."""

    def __init__(self, args):
        self.args, self.vlm = args, None

    def __call__(self):
        if self.vlm is None:
            from vlm import VLM

            levers = f"default+{self.args.levers}" if self.args.levers else "default"
            self.vlm = VLM.load(self.args.model, dtype=self.args.dtype, levers=levers)
        return self.vlm


def run(args) -> int:
    if args.task == "ocr":
        from vlm.cli.eval_ocr import run_ocr_eval

        return run_ocr_eval(args)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    task = {"sroie": _sroie, "captions": _captions, "retrieval": _retrieval, "vqa": _vqa}[args.task]
    report = task(args)
    _print_summary(report)
    print(f"report: {_out(args) / 'report.json'}")
    return 0


# --------------------------------------------------------------------------------------------- tasks
def _sroie(args) -> dict:
    from vlm.eval import sroie
    from vlm.eval.harness import System, evaluate
    from vlm.eval.records import load_eval_records
    from vlm.eval.report import RunInfo

    from vlm.ocr import check_engine

    names = _systems(args)
    engine = check_engine(args.ocr_engine)
    records = load_eval_records(args.data, ("image", "entities"), args.limit)
    load = _ModelLoader(args)
    gen = _gen(args)

    def model():
        vlm = load()
        if not hasattr(vlm, "extract"):
            raise ValueError("this vlm has no VLM.extract; run the baselines only with --systems rules,zero-shot")
        return sroie.model_predictor(vlm, ocr_engine=engine, **gen)

    def ocr(image):
        from vlm.ocr import run_ocr

        return run_ocr(image, engine=engine)

    def rules():
        from vlm.eval.baselines.rules import predictor

        return predictor(ocr)

    def zero_shot():
        from vlm.eval.baselines.zero_shot import ZeroShotExtractor

        return ZeroShotExtractor(args.llm, ocr=ocr, dtype=_torch_dtype(args.dtype))

    makers = {
        "model": System("model", model, batch_size=1, note="VLM.extract(image, template='receipt') with the model's own OCR"),
        "rules": System("rules", rules, batch_size=args.batch_size, note="OCR + regex/layout rules"),
        "zero-shot": System("zero-shot", zero_shot, batch_size=args.batch_size, limit=args.zero_shot_limit,
                            note=f"OCR + {args.llm} prompted zero-shot for JSON, no image"),
    }
    info = RunInfo("sroie", str(Path(args.data).resolve()), args.model,
                   {"dtype": args.dtype, "levers": args.levers, "llm": args.llm, "ocr_engine": engine, **gen})
    keys = {r.id: r.data["entities"] for r in records}
    return evaluate(info, records, [makers[n] for n in names], _out(args),
                    score=lambda preds, recs: sroie.score(preds, [keys[r.id] for r in recs]),
                    reference=sroie.reference, fresh=args.fresh, progress=not args.no_progress)


def _torch_dtype(name):
    if name is None:
        return None
    from vlm.api import as_dtype

    return as_dtype(name)


def _captions(args) -> dict:
    from vlm.eval import captions
    from vlm.eval.harness import System, evaluate
    from vlm.eval.records import load_eval_records
    from vlm.eval.report import RunInfo

    names = _systems(args)
    records = load_eval_records(args.data, ("image", "captions"), args.limit)
    load = _ModelLoader(args)
    grounding, grounding_settings = _grounding(args)
    gen = {"max_new_tokens": CAPTION_TOKENS, "num_beams": captions.DEFAULT_BEAMS, **_gen(args), **grounding}
    prompt = args.prompt or captions.DEFAULT_PROMPT
    train_path = _train_path(args) if "nearest-neighbour" in names else None

    def model():
        return captions.model_predictor(load(), prompt, **gen)

    def nearest():
        from vlm.eval.baselines.nearest_neighbour import NearestNeighbourCaptioner, TowerEmbedder

        evaluated = {r.image.resolve() for r in records}
        train = [r for r in load_eval_records(train_path, ("image", "captions")) if r.image.resolve() not in evaluated]
        return NearestNeighbourCaptioner(TowerEmbedder(load()), train, k=args.nn_k, progress=not args.no_progress)

    makers = {
        "model": System("model", model, batch_size=args.batch_size, note=f"ask_batch(image, {prompt!r})"),
        "nearest-neighbour": System("nearest-neighbour", nearest, batch_size=max(args.batch_size, 32),
                                    note=f"consensus caption of the {args.nn_k} nearest training image(s) "
                                         "by the model's tower features"),
    }
    info = RunInfo("captions", str(Path(args.data).resolve()), args.model,
                   {"dtype": args.dtype, "levers": args.levers, "prompt": prompt, "nn_k": args.nn_k,
                    "train": str(train_path.resolve()) if train_path else None, **gen, **grounding_settings})
    refs = {r.id: captions.reference(r) for r in records}
    return evaluate(info, records, [makers[n] for n in names], _out(args),
                    score=lambda preds, recs: captions.score(preds, [refs[r.id] for r in recs], args.tokenizer),
                    fresh=args.fresh, progress=not args.no_progress)


def _train_path(args) -> Path:
    if args.train:
        path = Path(args.train)
        if not path.is_file():
            raise FileNotFoundError(f"--train file not found: {path}")
        return path
    beside = Path(args.data).resolve().parent / "train.jsonl"
    if beside.is_file() and beside != Path(args.data).resolve():
        return beside
    if DEFAULT_FLICKR_TRAIN.is_file():
        return DEFAULT_FLICKR_TRAIN
    raise FileNotFoundError(f"no training captions for the nearest-neighbour baseline: give --train "
                            f"(looked for {beside} and {DEFAULT_FLICKR_TRAIN})")


def _vqa(args) -> dict:
    from vlm.eval import vqa
    from vlm.eval.harness import System, evaluate
    from vlm.eval.records import load_eval_records
    from vlm.eval.report import RunInfo

    names = _systems(args)
    records = load_eval_records(args.data, ("image", "question", "answer"), args.limit)
    load = _ModelLoader(args)
    # chat's own budget: the evaluation measures answers as chat gives them (a short answer ends itself)
    grounding, grounding_settings = _grounding(args)
    gen = {"max_new_tokens": GenerationOptions.max_new_tokens, **_gen(args), **grounding}
    suffix = vqa.SHORT_ANSWER if args.suffix is None else args.suffix
    if args.prior_train:
        prior_records = load_eval_records(args.prior_train, ("question", "answer"))
        prior_source = f"{Path(args.prior_train).resolve()} ({len(prior_records)} questions)"
    else:
        prior_records, prior_source = records, "the evaluated file (optimistic)"
    from vlm.text_llm import TextLLM

    makers = {
        "model": System("model", lambda: vqa.model_predictor(load(), suffix, **gen), batch_size=args.batch_size,
                        note="the model with the image"),
        "blind": System("blind", lambda: vqa.model_predictor(load(), suffix, use_image=False, **gen),
                        batch_size=args.batch_size, note="the same model and prompt without the image"),
        "prior": System("prior", lambda: vqa.prior_predictor(prior_records), batch_size=len(records),
                        note=f"most frequent answer of the question's type in {prior_source}"),
        "llm": System("llm", lambda: TextLLM(args.llm, gen["max_new_tokens"], _torch_dtype(args.dtype)).predictor(suffix),
                      batch_size=args.batch_size, note=f"the base text LLM {args.llm}, same prompt, no image"),
    }
    info = RunInfo("vqa", str(Path(args.data).resolve()), args.model,
                   {"dtype": args.dtype, "levers": args.levers, "suffix": suffix, "prior_train": prior_source,
                    "llm": args.llm if "llm" in names else None, **gen, **grounding_settings})
    answers = {r.id: r.data["answer"] for r in records}
    questions = {r.id: r.data["question"] for r in records}
    return evaluate(info, records, [makers[n] for n in names], _out(args),
                    score=lambda preds, recs: vqa.score(preds, [answers[r.id] for r in recs],
                                                        [questions[r.id] for r in recs]),
                    reference=vqa.reference, fresh=args.fresh, progress=not args.no_progress)


def _retrieval(args) -> dict:
    from vlm.eval.retrieval_task import evaluate_retrieval

    return evaluate_retrieval(args.data, args.vision, _out(args), limit=args.limit, batch_size=args.batch_size,
                              dtype=_torch_dtype(args.dtype), progress=not args.no_progress,
                              flip_average=args.flip_average)  # one matrix: always recomputed, --fresh or not


# ------------------------------------------------------------------------------------------- summary
_KEYS = {
    "sroie": lambda m: {**{f"{f}_f1": v["f1"] for f, v in m["fields"].items()}, "overall_f1": m["overall"]["f1"]},
    "captions": lambda m: {k: m[k] for k in ("bleu4", "cider", "mean_length")},
    "vqa": lambda m: {k: m[k] for k in ("accuracy", "relaxed_accuracy")},
    "retrieval": lambda m: {k: v for k, v in m.items()
                            if k.startswith(("i2t_r", "t2i_r")) or k in ("top1", "balanced_top1", "majority_top1")},
}


def _print_summary(report: dict) -> None:
    pick = _KEYS[report["task"]]
    print(f"{report['task']}: {report['examples']} examples from {report['data']}")
    for name, metrics in report["systems"].items():
        figures = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in pick(metrics).items())
        print(f"  {name:<18} n={metrics.get('examples', report['examples']):<5} {figures}")
