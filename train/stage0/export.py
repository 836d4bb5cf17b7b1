"""Write a trained stage-0 tower folder that ``VLM.build(vision=DIR)`` and retrieval evaluation accept."""
from __future__ import annotations

import json
from pathlib import Path

from vlm.eval.retrieval import HEAD_FILE, RetrievalSpec, TextSide


def save_preprocessor(folder: Path, size: int, mean: list[float], std: list[float]) -> None:
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=list(mean), image_std=list(std), resample=3)
    proc.save_pretrained(str(folder))


def export_tower(student, folder: str | Path, spec: RetrievalSpec, text_side: TextSide, mean: list[float],
                 std: list[float], extra: dict | None = None, head_state: dict | None = None) -> Path:
    """config.json + model.safetensors (CLIPVisionModel), preprocessor_config.json, retrieval head, text side
    and spec. ``head_state`` replaces the student's trained image head (e.g. a ridge fit)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    student.tower.save_pretrained(str(tmp), safe_serialization=True)
    save_preprocessor(tmp, student.tower.config.image_size, mean, std)
    head = {k: v.detach().float().contiguous() for k, v in (head_state or student.image_head.state_dict()).items()}
    save_file(head, str(tmp / HEAD_FILE))
    spec.save(tmp)
    text_side.save(tmp)
    train_heads = {f"spatial_head.{k}": v for k, v in student.spatial_head.state_dict().items()}
    train_heads.update({f"pooled_head.{k}": v for k, v in student.pooled_head.state_dict().items()})
    save_file({k: v.detach().float().contiguous() for k, v in train_heads.items()}, str(tmp / "stage0_heads.safetensors"))
    if extra:
        (tmp / "stage0.json").write_text(json.dumps(extra, indent=2, default=str))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder
