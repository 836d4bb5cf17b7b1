"""Evaluation outputs: a JSONL of per-example predictions (appended as we go, so runs resume) and a JSON report.

Layout of ``--out DIR``::

    DIR/run.json           what produced the predictions (task, data file, model); checked on resume
    DIR/predictions.jsonl  {"system", "id", "prediction", "reference", ...} one line per example and system
    DIR/report.json        metrics of every system side by side, plus model, data and timings
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vlm.records import read_jsonl

PREDICTIONS = "predictions.jsonl"
REPORT = "report.json"
RUN = "run.json"


class PredictionLog:
    """Append-only predictions file. ``done(system)`` lists ids already predicted (for resume).

    Each line is flushed and fsync'ed as soon as it is written, so an interrupted run loses at most the
    batch in flight. A truncated last line (a kill mid-write) is ignored on reading.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._rows: dict[tuple[str, str], dict] = {}
        if self.path.exists():
            for _, row in read_jsonl(self.path, strict=False):  # None: a torn write, that example is redone
                if isinstance(row, dict) and "system" in row and "id" in row:
                    self._rows[(row["system"], str(row["id"]))] = row

    def done(self, system: str) -> set[str]:
        return {rid for (sys_name, rid) in self._rows if sys_name == system}

    def get(self, system: str, rid: str) -> dict | None:
        return self._rows.get((system, str(rid)))

    def append(self, system: str, rid: str, prediction: Any, **extra) -> dict:
        row = {"system": system, "id": str(rid), "prediction": prediction, **extra}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        needs_newline = self.path.exists() and self.path.stat().st_size > 0 and not self._ends_with_newline()
        with self.path.open("a", encoding="utf-8") as fh:
            if needs_newline:
                fh.write("\n")
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._rows[(system, str(rid))] = row
        return row

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"


@dataclass
class RunInfo:
    """What a predictions file belongs to. A resumed run must match it (else ``--fresh`` or another ``--out``)."""

    task: str
    data: str
    model: str | None
    settings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"task": self.task, "data": self.data, "model": self.model, "settings": self.settings}


def open_run(out: str | Path, info: RunInfo, fresh: bool = False) -> PredictionLog:
    """Prepare ``out`` and return its prediction log, resuming unless ``fresh``.

    Raises ``ValueError`` when ``out`` holds predictions of a different task, data file, model or
    settings, rather than mixing them.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_file, pred_file = out / RUN, out / PREDICTIONS
    if fresh:
        for name in (PREDICTIONS, REPORT, RUN):
            (out / name).unlink(missing_ok=True)
    elif run_file.exists() and pred_file.exists():
        old = json.loads(run_file.read_text())
        new = info.as_dict()
        diff = [k for k in new if old.get(k) != new[k]]
        if diff:
            details = "; ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in diff)
            raise ValueError(
                f"{out} holds predictions of another run ({details}); pass --fresh to start over or choose another --out"
            )
    run_file.write_text(json.dumps(info.as_dict(), indent=2) + "\n")
    return PredictionLog(pred_file)


def write_report(out: str | Path, info: RunInfo, systems: dict[str, dict], timings: dict[str, dict],
                 n_examples: int, extra: dict | None = None) -> Path:
    """Write ``report.json``: every system's metrics side by side, with the model, data and timings."""
    report = {
        "task": info.task,
        "data": info.data,
        "model": info.model,
        "examples": n_examples,
        "settings": info.settings,
        "systems": systems,
        "time": timings,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        **(extra or {}),
    }
    path = Path(out) / REPORT
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path

