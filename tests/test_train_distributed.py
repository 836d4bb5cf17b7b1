"""Training under a launcher, unchanged: 2 CPU processes (gloo) end with identical weights; shipped accelerate
configs parse."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from train_fixtures import *  # noqa: F401,F403

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def test_two_cpu_processes_end_with_identical_weights(llava_json, tiny_llm_dir, tiny_tower_dir, tmp_path):
    accelerate = shutil.which("accelerate")
    assert accelerate, "accelerate's launcher is not on PATH"
    out = tmp_path / "ddp"
    cmd = [accelerate, "launch", "--config_file", str(ROOT / "configs/accelerate/ddp_cpu.yaml"),
           "-m", "vlm.cli", "train", "stage1", "--data", str(llava_json), "--model", str(tiny_llm_dir),
           "--vision", str(tiny_tower_dir), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
           "--batch-size", "2", "--max-steps", "3", "--lr", "1e-2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["samples"] == 3 * 2 * 2  # steps x per-process batch x processes
    hashes = summary["trainable_sha256_by_rank"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    # features were computed once, split between the ranks, and the projector really trained
    assert summary["feature_cache"]["computed_rank0"] == 12
    assert summary["first_loss"] != summary["final_loss"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_accelerate_configs_parse(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 2 and config.compute_environment.value == "LOCAL_MACHINE"
    if "deepspeed" in path.name:
        assert config.deepspeed_config["zero_stage"] in (2, 3)
    if "fsdp" in path.name:
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def test_accelerate_configs_cover_the_documented_setups():
    assert {p.name for p in CONFIGS} >= {"ddp_cpu.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"}
