"""Atomic training checkpoints and exact resume.

``<out>/checkpoints/step-000123/`` holds the trainable parameters (safetensors), the optimizer and
scheduler state, every rank's RNG states and ``trainer_state.json`` (step, epoch, batch within the epoch,
samples seen, elapsed time). A checkpoint is written into ``.tmp-step-...`` and renamed with ``os.replace``
once complete, so a run killed at any moment leaves only whole checkpoints. Resuming restores all of it;
since the batch order depends only on ``(seed, epoch)``, the resumed run replays the same data.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PREFIX = "step-"


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    samples: int = 0  # samples seen, all ranks
    elapsed: float = 0.0  # seconds of training before this process started


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": _jsonable(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def checkpoints(out: Path) -> list[Path]:
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest(out: Path) -> Path | None:
    found = [p for p in checkpoints(out) if (p / "trainer_state.json").exists()]
    return found[-1] if found else None


def save(accelerator, model, optimizer, scheduler, state: TrainerState, out: Path, keep: int = 2) -> Path:
    """Write a checkpoint collectively (every rank calls this; rank 0 writes the shared parts)."""
    root = Path(out) / "checkpoints"
    name = f"{PREFIX}{state.step:07d}"
    tmp, final = root / f".tmp-{name}", root / name
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    (tmp / f"rng-{accelerator.process_index}.json").write_text(json.dumps(rng_state()))
    accelerator.wait_for_everyone()
    if main:
        unwrapped = accelerator.unwrap_model(model)
        save_file(trainable_state(unwrapped), tmp / "trainable.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoints(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def restore(accelerator, model, optimizer, scheduler, ckpt: Path) -> TrainerState:
    """Load a checkpoint into the (prepared) model, optimizer and scheduler; set this rank's RNG."""
    unwrapped = accelerator.unwrap_model(model)
    saved = load_file(ckpt / "trainable.safetensors")
    params = dict(unwrapped.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in saved]
    unknown = [n for n in saved if n not in params]
    if missing or unknown:
        raise ValueError(
            f"checkpoint {ckpt} does not match this run's trainable parameters "
            f"(missing {missing[:3]}, unexpected {unknown[:3]}); was it made with another recipe?"
        )
    with torch.no_grad():
        for n, t in saved.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng_file = ckpt / f"rng-{accelerator.process_index}.json"
    if rng_file.exists():
        set_rng_state(json.loads(rng_file.read_text()))
    return TrainerState(**json.loads((ckpt / "trainer_state.json").read_text()))
