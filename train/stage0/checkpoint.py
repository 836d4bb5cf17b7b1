"""Stage-0 training state: exact resume (``--resume``) and warm starts from a tower folder (``--init-tower``).

``<out_dir>.checkpoint/`` is rewritten every ``save_every`` steps (atomically: written beside it, then
renamed). It holds the whole student (tower and training heads, safetensors), the optimizer state, and
``state.json``: step, images seen, training seconds used (the time budget continues from there), the epoch
permutation and position, the data generator's and the process's RNG states, the best dev result and the
evaluation history. Resuming restores all of it, so the resumed run draws the same batches and views and
ends where an uninterrupted run would; only settings that don't change the run's maths
(:data:`RESUMABLE_CHANGES`) may differ from the checkpoint's.

A warm start loads the weights of a tower folder (``vlm train stage0`` output, or ``<out_dir>.last``) and
starts a fresh schedule from them: the tower always, the distillation heads when the folder has
``stage0_heads.safetensors``, and the image head and temperature when its retrieval head is the trained
(contrastive) one.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from train.checkpoint import rng_state, set_rng_state

#: config fields a resumed run may change (budget, threads, cadences, where things are written or cached)
RESUMABLE_CHANGES = frozenset({"resume", "init_tower", "time_budget_min", "max_steps", "threads", "eval_every",
                               "save_every", "log_every", "out_dir", "cache_dir"})


@dataclass
class LoopState:
    step: int = 0
    seen: int = 0
    elapsed_s: float = 0.0  # training seconds used before this process (evaluations included)
    perm: list[int] = field(default_factory=list)
    pos: int = 0
    best: dict | None = None
    history: list[dict] = field(default_factory=list)


def checkpoint_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".checkpoint")


def save_checkpoint(folder: Path, student, optimizer, generator: torch.Generator, state: LoopState,
                    config: dict) -> Path:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()},
              str(tmp / "student.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    meta = {"state": state.__dict__, "config": config, "generator": generator.get_state().tolist(),
            "rng": rng_state()}
    (tmp / "state.json").write_text(json.dumps(meta))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def _changed(saved: dict, current: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_CHANGES and not prefix:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed(a, b, f"{prefix}{key}.")
        elif json.loads(json.dumps(a)) != json.loads(json.dumps(b)):  # tuples vs lists
            out.append(f"{prefix}{key}")
    return out


def restore_checkpoint(folder: Path, student, optimizer, generator: torch.Generator, config: dict) -> LoopState:
    """Load ``folder`` into the student, optimizer and generator (and this process's RNG); the loop's state."""
    meta = json.loads((folder / "state.json").read_text())
    changed = _changed(meta["config"], config)
    if changed:
        raise ValueError(f"cannot resume from {folder}: these settings differ from the checkpoint's: "
                         f"{', '.join(changed)} (only {', '.join(sorted(RESUMABLE_CHANGES))} may change)")
    student.load_state_dict(load_file(str(folder / "student.safetensors")))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    generator.set_state(torch.tensor(meta["generator"], dtype=torch.uint8))
    set_rng_state(meta["rng"])
    return LoopState(**meta["state"])


def warm_start(student, folder: str | Path) -> list[str]:
    """Copy a tower folder's weights into the student; returns what was loaded (see the module docstring)."""
    from vlm.eval.retrieval import HEAD_FILE, RetrievalSpec

    folder = Path(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"--init-tower {folder}: no model.safetensors (not a vision tower folder)")
    ours = student.tower.state_dict()
    theirs = load_file(str(weights))
    mismatched = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
    if mismatched:
        raise ValueError(f"--init-tower {folder}: its tower does not match the configured tower shape "
                         f"(e.g. {mismatched[0]}); set the --tower-* flags to its config.json")
    student.tower.load_state_dict({k: theirs[k].float() for k in ours})
    loaded = ["tower"]
    heads = folder / "stage0_heads.safetensors"
    if heads.is_file():
        t = load_file(str(heads))
        for name in ("spatial_head", "pooled_head"):
            part = {k[len(name) + 1:]: v.float() for k, v in t.items() if k.startswith(name + ".")}
            if part and all(part[k].shape == v.shape for k, v in getattr(student, name).state_dict().items()):
                getattr(student, name).load_state_dict(part)
                loaded.append(name)
    try:
        spec = RetrievalSpec.load(folder)
    except FileNotFoundError:
        return loaded
    head = folder / HEAD_FILE
    if spec.head == "contrastive" and head.is_file():
        t = load_file(str(head))
        if all(t.get(k) is not None and t[k].shape == v.shape for k, v in student.image_head.state_dict().items()):
            student.image_head.load_state_dict({k: v.float() for k, v in t.items()})
            with torch.no_grad():
                student.log_logit_scale.fill_(float(torch.tensor(spec.logit_scale).log()))
            loaded.append("image_head")
    return loaded
