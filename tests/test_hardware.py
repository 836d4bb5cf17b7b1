"""bf16 is only chosen where it is fast: AMX CPUs and bf16 GPUs."""
from __future__ import annotations

import torch

from vlm.train.lit.config import LitConfig
from vlm import hardware


def test_bf16_follows_amx_on_a_cpu(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not hardware.bf16_is_fast("cpu")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16", "amx_tile"}))
    assert hardware.bf16_is_fast("cpu")


def test_lit_resolves_automatic_bf16_and_keeps_explicit_choices(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    auto = LitConfig().resolved(torch.device("cpu"))
    assert auto.bf16 is False and auto.feature_bf16 is False
    forced = LitConfig(bf16=True, feature_bf16=True).resolved(torch.device("cpu"))
    assert forced.bf16 is True and forced.feature_bf16 is True


def test_this_machine_reads_its_flags():
    flags = hardware.cpu_flags()
    assert isinstance(flags, frozenset)
    assert hardware.bf16_is_fast("cpu") == ("amx_bf16" in flags)
