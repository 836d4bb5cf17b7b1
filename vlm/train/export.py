"""``vlm export``: turn a stage-2 adapter folder (or a parts folder) into a shippable model, and a CLIP into
its compact form or back.

``--format llava`` (default) merges the LoRA into the LLM and writes a plain HF llava folder that stock
``transformers`` loads (``LlavaForConditionalGeneration`` + ``AutoProcessor``). ``--format parts`` writes
the compact parts folder (:mod:`vlm.parts`) over a registered base LLM (and registered tower, with
``--base-vision``), LoRA left unmerged. ``--format clip-parts`` writes a LiT CLIP folder (``vlm train clip``
output) without its registered tower (:mod:`vlm.clip_parts`; ``--out PARTS/clip`` makes it a parts folder's
CLIP); ``--format clip`` materialises such a compact CLIP (or a parts folder's ``clip/``) as a plain
``VisionTextDualEncoderModel`` folder again.
"""
from __future__ import annotations

import json
from pathlib import Path

HELP = ("merge a stage-2 LoRA adapter into a plain llava folder (or write a compact parts folder); "
        "write a CLIP without its registered tower (clip-parts) or back as a stock folder (clip); "
        "write a whole model as standalone ONNX graphs for ONNX Runtime (onnx)")


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="stage-2 adapter folder or parts folder; clip-parts: a "
                        "`vlm train clip` folder; clip: a compact CLIP folder or a parts folder with clip/; "
                        "onnx: any model name or folder vlm loads (e.g. vlm-tiny)")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--format", choices=["llava", "parts", "clip-parts", "clip", "onnx"],
                        default="llava", help="onnx: llm.onnx + vision.onnx + embedding table + processor files, run "
                        "by vlm.engines.onnx_export.OnnxVLM or any ONNX Runtime (docs in that module)")
    parser.add_argument("--base-llm", default=None,
                        help="--format parts: the registered base LLM name (e.g. smollm2-135m-instruct)")
    parser.add_argument("--base-vision", default=None,
                        help="--format parts / clip-parts: the registered tower the model was built on (e.g. "
                             "dinov2-vits14); it is fetched on load instead of stored (parts default: store the "
                             "tower; clip-parts default: the tower lit.json names)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="llava, clip-parts: weights dtype (clip-parts bfloat16: half the size, rounded weights)")


def export_llava(model_dir, out, dtype) -> Path:
    """Merge and save. Works on adapter folders and parts folders."""
    model_dir, out = Path(model_dir), Path(out)
    if (model_dir / "adapter_config.json").exists():
        from vlm.loading import load_merged

        model, processor = load_merged(model_dir, dtype)
    elif (model_dir / "vlm_parts.json").exists():
        from vlm.parts import load_parts

        model, processor = load_parts(model_dir, dtype, merge=True)
    else:
        raise ValueError(f"{model_dir} is neither an adapter folder (adapter_config.json) nor a parts folder "
                         "(vlm_parts.json); a plain llava folder needs no export")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def export_parts(model_dir, out, base_llm: str, base_vision: str | None = None) -> Path:
    from vlm import compose
    from vlm.loading import load_peft
    from vlm.parts import save_parts

    model_dir = Path(model_dir)
    if not (model_dir / "adapter_config.json").exists():
        raise ValueError(f"{model_dir} is not an adapter folder (no adapter_config.json)")
    peft_model, processor = load_peft(model_dir)
    base, _ = compose.load_llm(base_llm)
    base_rows = base.get_input_embeddings().weight
    llava = peft_model.base_model.model
    ours = llava.model.language_model.state_dict()
    n = base_rows.shape[0]
    for name, tensor in base.model.state_dict().items():
        mine = ours.get(name)
        if name.endswith("embed_tokens.weight"):
            mine = mine[:n] if mine is not None else None
        if mine is None or "lora_" in name:
            continue
        if mine.shape != tensor.shape or not torch_equal(mine, tensor):
            raise ValueError(f"the adapter's base LLM differs from {base_llm!r} at {name}; ship it as a llava folder")
    return save_parts(peft_model, processor, out, base_llm, n, base_vision)


def export_clip_parts(model_dir, out, base_vision: str | None = None, dtype: str = "float32") -> Path:
    """A LiT CLIP folder -> its compact form (:func:`vlm.clip_parts.save_clip_parts`)."""
    from transformers import VisionTextDualEncoderModel, VisionTextDualEncoderProcessor

    from vlm.clip_parts import DTYPES, LIT_FILE, save_clip_parts
    from vlm.clip import is_clip_folder
    from vlm.clip_parts import is_clip_parts

    model_dir = Path(model_dir)
    if not is_clip_folder(model_dir) or is_clip_parts(model_dir):
        raise ValueError(f"{model_dir} is not a CLIP folder (`vlm train clip` output)")
    lit = json.loads((model_dir / LIT_FILE).read_text()) if (model_dir / LIT_FILE).is_file() else None
    base_vision = base_vision or (lit or {}).get("vision")
    if not base_vision:
        raise ValueError(f"--format clip-parts needs --base-vision (no {LIT_FILE} in {model_dir} names the tower)")
    model = VisionTextDualEncoderModel.from_pretrained(model_dir).eval()
    processor = VisionTextDualEncoderProcessor.from_pretrained(model_dir)
    return save_clip_parts(model, processor, out, base_vision, DTYPES[dtype], lit)


def export_clip(model_dir, out) -> Path:
    """A compact CLIP (or a parts folder's ``clip/``) -> a plain ``VisionTextDualEncoderModel`` folder."""
    from vlm.clip_parts import MANIFEST, is_clip_parts, save_stock
    from vlm.clip import find_clip

    folder = find_clip(model_dir)
    if not is_clip_parts(folder):
        raise ValueError(f"{folder} is not a compact CLIP folder (no {MANIFEST})")
    return save_stock(folder, out)


def torch_equal(a, b) -> bool:
    import torch

    # the parts are stored in bf16; a run whose frozen LLM was loaded in bf16 equals the base at that precision
    return torch.equal(a.to(torch.bfloat16), b.to(torch.bfloat16))


def run(args) -> int:
    import torch

    if args.format == "parts":
        if not args.base_llm:
            raise ValueError("--format parts needs --base-llm (a registered LLM name)")
        path = export_parts(args.model, args.out, args.base_llm, args.base_vision)
    elif args.format == "clip-parts":
        path = export_clip_parts(args.model, args.out, args.base_vision, args.dtype)
    elif args.format == "clip":
        path = export_clip(args.model, args.out)
    elif args.format == "onnx":
        from vlm import VLM
        from vlm.engines.onnx_export import export_vlm

        path = export_vlm(VLM.load(args.model, levers=None), args.out)
    else:
        path = export_llava(args.model, args.out, {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype])
    print(path)
    return 0
