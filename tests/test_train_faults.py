"""Training faults, end to end through ``vlm train``: SIGKILL at random steps, and a full disk mid-checkpoint.

Stage 1 and stage 2 (LoRA, dropout on) run as subprocesses of the real CLI on a tiny random model over real
Flickr8k photos. Each run is killed three times at seeded random steps and moments (the step is read from
its ``metrics.jsonl`` as it trains) and resumed with ``--resume``; its final weights must equal an
uninterrupted run's bit for bit. A tmpfs filled while a run trains makes a checkpoint write fail with ENOSPC:
the run stops with one line naming the full disk, leaves no partial folder, and the previous checkpoint
resumes; a disk with room for checkpoints but not the final model stops the same way at the end; once space
is freed the run ends with the uninterrupted run's weights. A unit test injects the same failure (the
kernel's /dev/full) into ``checkpoint.save`` where a tmpfs cannot be mounted.
"""
from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import *  # noqa: F401,F403

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY, KILLS = 12, 2, 3
TIMEOUT_S = 240


def stage_args(stage: int, data, model, tower, out, cache, save_every=EVERY) -> list[str]:
    args = ["train", f"stage{stage}", "--data", str(data), "--model", str(model), "--out", str(out),
            "--cache-dir", str(cache), "--batch-size", "2", "--grad-accum", "2", "--max-steps", str(STEPS),
            "--save-every", str(save_every), "--seed", "0", "--epochs", "10", "--threads", "1"]
    if stage == 1:
        return args + ["--vision", str(tower)]
    return args + ["--lora-r", "8", "--lora-alpha", "16", "--lr", "1e-3"]


def launch(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "ab") as err:
        return subprocess.Popen([sys.executable, "-m", "vlm.cli", *args], cwd=ROOT, env=env,
                                stdout=err, stderr=subprocess.STDOUT)


def logged_steps(out: Path) -> list[int]:
    """Steps in ``metrics.jsonl`` (complete lines only: the trainer may be mid-write)."""
    try:
        text = (out / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line)["step"] for line in text.split("\n")[:-1] if line.strip()]


def wait_until(proc: subprocess.Popen, done, log: Path, what: str) -> None:
    deadline = time.time() + TIMEOUT_S
    while not done():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {what}:\n{log.read_text()[-3000:]}"
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def weights(out: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the output folder's top-level safetensors files, keyed by file and name."""
    found = {f"{f.name}:{k}": v for f in sorted(out.glob("*.safetensors")) for k, v in load_file(f).items()}
    assert found, f"no weights in {out}"
    return found


def assert_same_run(ref: Path, out: Path) -> None:
    a, b = weights(ref), weights(out)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"
    losses = [[json.loads(l)["loss"] for l in (d / "metrics.jsonl").read_text().splitlines()] for d in (ref, out)]
    assert losses[0] == losses[1]
    assert logged_steps(out) == list(range(1, STEPS + 1))
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


def run_here(args: list[str]) -> int:
    """``vlm ARGS`` in this process, through the same entry point as the command."""
    from accelerate.state import AcceleratorState

    from vlm.cli import main

    try:
        return main(args)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def reference(stage: int, base: Path, tower: Path, data: Path, root: Path) -> Path:
    """The uninterrupted run."""
    out = root / f"ref-stage{stage}"
    assert run_here(stage_args(stage, data, base, tower, out, root / "cache")) == 0
    return out


@pytest.fixture(scope="module")
def refs(tmp_path_factory, llava_json, tiny_llm_dir, tiny_tower_dir, tiny_stage1) -> dict:
    root = tmp_path_factory.mktemp("faults")
    return {"root": root, 1: reference(1, tiny_llm_dir, tiny_tower_dir, llava_json, root),
            2: reference(2, tiny_stage1, tiny_tower_dir, llava_json, root)}


@pytest.mark.parametrize("stage", [1, 2])
def test_three_sigkills_at_random_steps_then_resume_is_bit_identical(stage, refs, llava_json, tiny_llm_dir,
                                                                   tiny_tower_dir, tiny_stage1, tmp_path, capsys):
    base = tiny_llm_dir if stage == 1 else tiny_stage1
    out, log = tmp_path / "run", tmp_path / "run.log"
    args = stage_args(stage, llava_json, base, tiny_tower_dir, out, refs["root"] / "cache")
    rng = random.Random(1400 + stage)
    last, kills = 0, []
    for k in range(KILLS):
        # a step past everything an earlier process logged, so the wait sees this process's progress
        target = last + rng.randint(1, 3)
        proc = launch(args + (["--resume"] if k else []), log)
        wait_until(proc, lambda: (logged_steps(out) or [0])[-1] >= target, log, f"step {target}")
        time.sleep(rng.uniform(0, 0.05))  # a random moment within the step (forward, backward, checkpoint)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        assert not (out / "summary.json").exists(), "the run finished before it could be killed"
        last = logged_steps(out)[-1]
        kills.append(last)
        assert last < STEPS
    assert run_here(args + ["--resume"]) == 0  # the last resume runs here: another process, same result
    printed = log.read_text() + capsys.readouterr().out
    resumed = [line for line in printed.splitlines() if line.startswith(("resumed from", "--resume"))]
    assert len(resumed) == KILLS, resumed
    assert "warning: resuming with" not in printed
    resumed_at = [int(n) for n in re.findall(r"resumed from \S+ \(step (\d+)", printed)]
    with capsys.disabled():
        print(f"stage {stage}: killed after steps {kills}; resumed from steps {resumed_at}")
    assert_same_run(refs[stage], out)


def test_resuming_with_another_thread_count_warns_that_it_will_not_be_bit_identical(refs, llava_json, tiny_llm_dir,
                                                                                   tiny_tower_dir, tmp_path, capsys):
    from vlm.train import checkpoint

    args = stage_args(1, llava_json, tiny_llm_dir, tiny_tower_dir, tmp_path / "run", refs["root"] / "cache",
                      save_every=1)
    with_steps = lambda n, threads: [*args, "--max-steps", str(n), "--threads", str(threads)]  # last flag wins
    assert run_here(with_steps(2, 1)) == 0
    assert checkpoint.TrainerState(**json.loads((checkpoint.latest(tmp_path / "run") / "trainer_state.json")
                                                .read_text())).threads == 1
    capsys.readouterr()
    assert run_here([*with_steps(3, 2), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "warning: resuming with 2 torch threads, but the checkpoint was written with 1" in out
    assert "pass --threads 1" in out


@pytest.fixture
def tmpfs(tmp_path):
    """A 64 MiB tmpfs (needs root or CAP_SYS_ADMIN; skipped otherwise)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(b"\0" * size)


def test_full_disk_mid_checkpoint_stops_cleanly_and_the_previous_checkpoint_resumes(
        refs, tmpfs, llava_json, tiny_llm_dir, tiny_tower_dir, tmp_path, capsys):
    from vlm.train import checkpoint

    out, log = tmpfs / "run", tmp_path / "run.log"
    args = stage_args(1, llava_json, tiny_llm_dir, tiny_tower_dir, out, refs["root"] / "cache", save_every=1)
    # keep every checkpoint: with rotation, a trainer already past step 3 when it is stopped frees old
    # checkpoints after the disk is filled and writes on (a race seen in CI); without it the next write fails
    args += ["--keep-checkpoints", "0"]
    proc = launch(args, log)
    try:
        third = out / "checkpoints" / f"step-{3:07d}" / "trainer_state.json"
        wait_until(proc, third.exists, log, "the third checkpoint")
        proc.send_signal(signal.SIGSTOP)  # hold the trainer while something else fills its disk
        size = checkpoint.folder_bytes(third.parent)
        filler = tmpfs / "filler"
        fill(filler, shutil.disk_usage(tmpfs).free - size // 2)  # leave room for about half a checkpoint
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=TIMEOUT_S) == 1
    finally:
        proc.kill()
        proc.wait()
    err = log.read_text()
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("vlm train stage1: error:")]
    assert len(errors) == 1, err[-3000:]
    message = errors[0]
    with capsys.disabled():
        print(message)
    assert message.startswith("vlm train stage1: error: could not write checkpoint step-")
    assert "the disk is full (No space left on device" in message and "--resume" in message
    previous = checkpoint.latest(out)
    assert previous is not None and str(previous) in message
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    assert not (out / "summary.json").exists()

    # room for the remaining checkpoints (~0.1 MiB each) but not for the final model (~16 MiB)
    filler.unlink()
    fill(filler, shutil.disk_usage(tmpfs).free - 2 * 2**20)
    capsys.readouterr()
    assert run_here(args + ["--resume"]) == 1
    printed = capsys.readouterr()
    assert f"resumed from {previous}" in printed.out
    message = printed.err.strip().splitlines()[-1]
    with capsys.disabled():
        print(message)
    assert message.startswith(f"vlm train stage1: error: could not write the final model in {out}: the disk is full")
    last = checkpoint.latest(out)
    assert f"The last complete checkpoint, {last}, is intact" in message and last.name == f"step-{STEPS - 1:07d}"

    filler.unlink()
    assert run_here(args + ["--resume"]) == 0
    assert f"resumed from {last}" in capsys.readouterr().out
    assert_same_run(refs[1], out)  # the reference checkpointed every second step: cadence changes nothing


full_device = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")


@full_device
def test_library_writes_to_a_full_disk_surface_as_enospc(tmp_path):
    """/dev/full fails every write with ENOSPC, as a full disk does, without root."""
    from safetensors.torch import save as safetensors_bytes
    from safetensors.torch import save_file

    from vlm.train.durable import os_error_of, write_file

    tensors = {"w": torch.randn(64, 64)}
    for fill in (lambda f: torch.save(tensors, f), lambda f: f.write(safetensors_bytes(tensors))):
        with pytest.raises(OSError) as caught:
            write_file(Path("/dev/full"), fill)
        assert caught.value.errno == errno.ENOSPC
    # save_file (as save_pretrained uses it) writes a temp file and renames it over the target, so it must never
    # be pointed at /dev/full; its error for a folder that is not there carries the errno the same way as ENOSPC
    with pytest.raises(Exception) as caught:
        save_file(tensors, tmp_path / "not-there" / "w.safetensors")
    assert not isinstance(caught.value, OSError) and os_error_of(caught.value).errno == errno.ENOENT
    assert os_error_of(ValueError("not an I/O problem")) is None
    write_file(tmp_path / "ok.bin", lambda f: f.write(b"abc"))
    assert (tmp_path / "ok.bin").read_bytes() == b"abc"


@full_device
def test_checkpoint_save_on_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, reset_accelerate):
    """The optimizer file of the second checkpoint is written to /dev/full (a real ENOSPC mid-checkpoint)."""
    from accelerate import Accelerator
    from torch import nn

    from vlm.train import checkpoint, durable

    acc = Accelerator(cpu=True)
    torch.manual_seed(0)

    def fresh():
        model = nn.Linear(8, 4)
        opt = torch.optim.AdamW(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
        model, opt = acc.prepare(model, opt)
        return model, opt, sched

    def step(model, opt, sched):
        model(torch.randn(5, 8)).pow(2).mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()

    model, opt, sched = fresh()
    step(model, opt, sched)
    first = checkpoint.save(acc, model, opt, sched, checkpoint.TrainerState(step=1), tmp_path)
    killed = tmp_path / "checkpoints" / ".tmp-step-0000005"  # what a SIGKILL during a write leaves
    killed.mkdir()
    (killed / "trainable.safetensors").write_bytes(b"half a fi")
    assert checkpoint.latest(tmp_path) == first
    assert checkpoint.remove_partial(tmp_path) == [killed] and not killed.exists()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    step(model, opt, sched)

    real_open = open
    monkeypatch.setattr(durable, "open", lambda path, mode="r": real_open(
        "/dev/full" if Path(path).name == "optimizer.pt" else path, mode), raising=False)
    with pytest.raises(checkpoint.CheckpointWriteError) as caught:
        checkpoint.save(acc, model, opt, sched, checkpoint.TrainerState(step=2), tmp_path)
    monkeypatch.undo()
    message = str(caught.value)
    assert caught.value.disk_full and isinstance(caught.value.__cause__, OSError)
    assert "could not write checkpoint step-0000002" in message and "the disk is full" in message
    assert str(first) in message and "--resume" in message
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [first.name]  # no partial folder
    assert checkpoint.latest(tmp_path) == first

    model, opt, sched = fresh()
    state = checkpoint.restore(acc, model, opt, sched, first)
    assert state.step == 1 and sched.last_epoch == 1
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
