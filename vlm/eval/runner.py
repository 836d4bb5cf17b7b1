"""Run one system over the records in batches, with a progress bar, logging each prediction as it lands."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .records import Record
from .report import PredictionLog

Predictor = Callable[[Sequence[Record]], Sequence[Any]]


@dataclass
class SystemRun:
    """Predictions of one system for every record (in record order) and how long the new ones took."""

    name: str
    predictions: list[Any]
    computed: int  # examples predicted in this call (the rest came from the log)
    seconds: float

    def timing(self) -> dict:
        per = self.seconds / self.computed if self.computed else None
        return {"computed": self.computed, "resumed": len(self.predictions) - self.computed,
                "seconds": round(self.seconds, 3), "seconds_per_example": None if per is None else round(per, 4)}


def run_system(name: str, records: Sequence[Record], predict: Predictor, log: PredictionLog, *,
               batch_size: int = 8, reference: Callable[[Record], Any] | None = None,
               progress: bool = True) -> SystemRun:
    """Predict every record not already in ``log`` for ``name`` and return all predictions.

    ``predict`` maps a batch of records to one prediction each (JSON-serialisable). Each batch is
    appended to the log before the next starts, so stopping (Ctrl-C, a kill) and running again redoes
    at most one batch.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    done = log.done(name)
    todo = [r for r in records if r.id not in done]
    start = time.perf_counter()
    with tqdm(total=len(records), initial=len(records) - len(todo), desc=name, unit="ex",
              disable=not progress, leave=False) as bar:
        for i in range(0, len(todo), batch_size):
            batch = todo[i:i + batch_size]
            preds = list(predict(batch))
            if len(preds) != len(batch):
                raise RuntimeError(f"system {name!r} returned {len(preds)} predictions for {len(batch)} records")
            for rec, pred in zip(batch, preds):
                extra = {"reference": reference(rec)} if reference is not None else {}
                log.append(name, rec.id, pred, **extra)
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    predictions = [log.get(name, r.id)["prediction"] for r in records]
    return SystemRun(name, predictions, len(todo), seconds)
