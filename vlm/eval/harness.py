"""Evaluate several systems (the model and its baselines) on one data file, side by side, resumably."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .records import Record
from .report import RunInfo, open_run, write_report
from .runner import Predictor, run_system


@dataclass
class System:
    """A named system. ``make`` builds its predictor only when some example still needs predicting, so a
    finished (resumed) run never loads a model."""

    name: str
    make: Callable[[], Predictor]
    batch_size: int = 8
    limit: int | None = None  # evaluate this system on the first N records only (slow baselines)
    note: str = ""


class _Lazy:
    def __init__(self, make: Callable[[], Predictor]):
        self.make, self.fn = make, None

    def __call__(self, batch):
        if self.fn is None:
            self.fn = self.make()
        return self.fn(batch)


def evaluate(info: RunInfo, records: Sequence[Record], systems: Sequence[System], out: str | Path, *,
             score: Callable[[list[Any], list[Record]], dict], reference: Callable[[Record], Any] | None = None,
             fresh: bool = False, progress: bool = True, extra: dict | None = None) -> dict:
    """Run every system (resuming from ``out``), score each, write ``report.json``; return the report."""
    if not systems:
        raise ValueError("no systems to evaluate")
    log = open_run(out, info, fresh=fresh)
    results, timings = {}, {}
    for system in systems:
        subset = list(records[:system.limit]) if system.limit else list(records)
        run = run_system(system.name, subset, _Lazy(system.make), log, batch_size=system.batch_size,
                         reference=reference, progress=progress)
        metrics = score(run.predictions, subset)
        metrics["examples"] = len(subset)
        if system.note:
            metrics["note"] = system.note
        results[system.name] = metrics
        timings[system.name] = run.timing()
    path = write_report(out, info, results, timings, len(records), extra)
    import json

    return json.loads(path.read_text())
