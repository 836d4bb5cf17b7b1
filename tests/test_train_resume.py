"""Checkpoints: a run killed with SIGKILL after a checkpoint and resumed ends with exactly the weights of an
uninterrupted run (trainable params, optimizer, scheduler, RNG and data order all restored)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from train_fixtures import *  # noqa: F401,F403

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 12, 3


def args_for(data, llm, tower, out, cache):
    return ["--data", str(data), "--model", str(llm), "--vision", str(tower), "--out", str(out),
            "--cache-dir", str(cache), "--batch-size", "3", "--grad-accum", "2", "--max-steps", str(STEPS),
            "--save-every", str(EVERY), "--seed", "0", "--epochs", "5", "--threads", "1"]


def projector(folder: Path) -> dict:
    return {k: v for k, v in load_file(folder / "model.safetensors").items() if "multi_modal_projector" in k}


def test_sigkill_then_resume_matches_uninterrupted(llava_json, tiny_llm_dir, tiny_tower_dir, tmp_path,
                                                   reset_accelerate):
    from vlm.cli import main

    cache = tmp_path / "cache"
    # the uninterrupted reference (in-process)
    assert main(["train", "stage1", *args_for(llava_json, tiny_llm_dir, tiny_tower_dir, tmp_path / "ref", cache)]) == 0

    # the same run in a subprocess, killed as soon as its first checkpoint is complete
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "vlm.cli", "train", "stage1",
                             *args_for(llava_json, tiny_llm_dir, tiny_tower_dir, out, cache)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (out / "checkpoints" / f"step-{EVERY:07d}" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()  # it really died before the end
    done = json.loads(sorted((out / "checkpoints").glob("step-*"))[-1].joinpath("trainer_state.json").read_text())
    assert EVERY <= done["step"] < STEPS

    assert main(["train", "stage1", "--resume", *args_for(llava_json, tiny_llm_dir, tiny_tower_dir, out, cache)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["epochs"] >= 1  # the data order crossed an epoch boundary
    ref, resumed = projector(tmp_path / "ref"), projector(out)
    assert ref.keys() == resumed.keys() and ref
    for k in ref:
        assert torch.equal(ref[k], resumed[k]), k
    # the metrics log has each step once, as if never interrupted
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))
    ref_losses = [json.loads(l)["loss"] for l in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    res_losses = [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert ref_losses == res_losses
