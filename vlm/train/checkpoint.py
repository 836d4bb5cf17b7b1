"""Atomic training checkpoints and exact resume.

``<out>/checkpoints/step-000123/`` holds the trainable parameters (safetensors), the optimizer and
scheduler state, every rank's RNG states and ``trainer_state.json`` (step, epoch, batch within the epoch,
samples seen, elapsed time). A checkpoint is written into ``.tmp-step-...``, every file and the folder are
fsynced, and only then is it renamed with ``os.replace`` (and the parent folder fsynced), so a run killed
or a machine losing power at any moment leaves only whole checkpoints. Older checkpoints are pruned only
after the new one is in place. A write that fails (a full disk, a quota, an I/O error) removes its partial
folder and raises :class:`CheckpointWriteError`, whose message names the problem, the free space and the
previous checkpoint, which is left intact for ``--resume``. Resuming restores all of it; since the batch
order depends only on ``(seed, epoch)``, the resumed run replays the same data.
"""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from .durable import fsync_path, write_file

PREFIX = "step-"
TMP_PREFIX = ".tmp-"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class CheckpointWriteError(RuntimeError):
    """A checkpoint or the final model could not be written; earlier checkpoints are untouched.

    ``disk_full`` is true for ENOSPC/EDQUOT; the original ``OSError`` is the ``__cause__``."""

    def __init__(self, message: str, disk_full: bool):
        super().__init__(message)
        self.disk_full = disk_full


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    samples: int = 0  # samples seen, all ranks
    elapsed: float = 0.0  # seconds of training before this process started
    threads: int = 0  # torch intra-op threads of the run that wrote it (0: not recorded)


def thread_mismatch(saved: TrainerState, threads: int) -> str | None:
    """Why a resume with ``threads`` torch threads will not be bit-identical to the run that saved ``saved``."""
    if not saved.threads or saved.threads == threads:
        return None
    return (f"resuming with {threads} torch threads, but the checkpoint was written with {saved.threads}: the run "
            f"continues correctly, but float sums split differently across threads, so its weights will not be "
            f"bit-identical to an uninterrupted run's (pass --threads {saved.threads} for that)")


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
    """CPU views of the trainable parameters (copies only off the CPU); serialise before the next step."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def checkpoints(out: Path) -> list[Path]:
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest(out: Path) -> Path | None:
    found = [p for p in checkpoints(out) if (p / "trainer_state.json").exists()]
    return found[-1] if found else None


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())


def human_bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"


def write_failure(exc: OSError, what: str, where: Path, out: Path) -> CheckpointWriteError:
    """The error a user sees when ``what`` could not be written under ``where``: cause, space, way back."""
    disk_full = exc.errno in DISK_FULL
    cause = "the disk is full" if exc.errno == errno.ENOSPC else \
        "the disk quota is exceeded" if exc.errno == errno.EDQUOT else "the write failed"
    detail = f"{cause} ({exc.strerror or exc}"
    try:
        detail += f"; {human_bytes(shutil.disk_usage(where).free)} free there"
    except OSError:
        pass
    remedy = "free some space" if disk_full else "fix that"
    previous = latest(out)
    if previous is not None:
        detail += f"; a checkpoint takes about {human_bytes(folder_bytes(previous))})"
        way_back = (f"The last complete checkpoint, {previous}, is intact: {remedy} and run the same "
                    f"command with --resume to continue from it.")
    else:
        detail += ")"
        way_back = f"There is no earlier checkpoint: {remedy} and run the command again."
    return CheckpointWriteError(f"could not write {what} in {where}: {detail}. {way_back}", disk_full)


def remove_partial(out: Path) -> list[Path]:
    """Delete half-written ``.tmp-step-*`` folders a killed run left behind."""
    root = Path(out) / "checkpoints"
    partial = [p for p in root.iterdir() if p.name.startswith(TMP_PREFIX)] if root.is_dir() else []
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return partial


def save(accelerator, model, optimizer, scheduler, state: TrainerState, out: Path, keep: int = 2) -> Path:
    """Write a checkpoint collectively (every rank calls this; rank 0 writes the shared parts).

    Raises :class:`CheckpointWriteError` (partial folder removed, older checkpoints kept) when a write fails.
    """
    root = Path(out) / "checkpoints"
    name = f"{PREFIX}{state.step:07d}"
    tmp, final = root / f"{TMP_PREFIX}{name}", root / name
    main = accelerator.is_main_process
    try:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        rng = json.dumps(rng_state()).encode()
        write_file(tmp / f"rng-{accelerator.process_index}.json", lambda f: f.write(rng))
        accelerator.wait_for_everyone()
        if main:
            weights = safetensors_bytes(trainable_state(accelerator.unwrap_model(model)))
            write_file(tmp / "trainable.safetensors", lambda f: f.write(weights))
            del weights
            write_file(tmp / "optimizer.pt", lambda f: torch.save(optimizer.state_dict(), f))
            write_file(tmp / "scheduler.pt", lambda f: torch.save(scheduler.state_dict(), f))
            trainer = json.dumps(asdict(state), indent=2).encode()
            write_file(tmp / "trainer_state.json", lambda f: f.write(trainer))  # last: marks it complete
            fsync_path(tmp)
            if final.exists():  # the same step saved before (a rerun): swap it out only once the new one is whole
                old = root / f"{TMP_PREFIX}old-{name}"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            fsync_path(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(exc, f"checkpoint {name}", root, out) from exc
    if main:
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


def resume(accelerator, model, optimizer, scheduler, out: Path, log) -> TrainerState:
    """``--resume``: the latest checkpoint under ``out`` restored (:func:`restore`), or a fresh state when there
    is none; says which in ``log``, and warns when the thread count differs from the saved run's."""
    ckpt = latest(out)
    if ckpt is None:
        log(f"--resume: no checkpoint under {out / 'checkpoints'}; starting from scratch")
        return TrainerState()
    state = restore(accelerator, model, optimizer, scheduler, ckpt)
    log(f"resumed from {ckpt} (step {state.step}, epoch {state.epoch}, batch {state.batch_in_epoch})")
    mismatch = thread_mismatch(state, torch.get_num_threads())
    if mismatch:
        log(f"warning: {mismatch}")
    return state
