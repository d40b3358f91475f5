"""A run's final evaluation, resumable set by set.

A study's final evaluation can take many minutes (an extrapolation study scores every length up to
2^20), longer than what is left of a time-capped piece. The trainer checkpoints the trained weights
before it starts; after each held-out set the sums so far go to `<run>/final_eval.partial.json`
(written atomically), and a SIGINT/SIGTERM received during the evaluation stops it after the set in
progress. Resumed, the run evaluates only the sets not yet done and reports the same metrics as an
evaluation run whole. Under data parallelism each rank holds a share of the sums: the evaluation then
runs whole, and a signal waits for its end, as before.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from hybrid.training.run_dir import RunDir, read_json, write_json

log = logging.getLogger(__name__)

PARTIAL = "final_eval.partial.json"


class StoppedDuringEvaluation(Exception):
    """A signal stopped the final evaluation after `sets` of its held-out sets."""

    def __init__(self, signal_name: str, sets: int):
        super().__init__(f"{signal_name} during the final evaluation, after {sets} held-out set(s)")
        self.signal_name = signal_name
        self.sets = sets


def final_evaluation(run: RunDir, step: int, evaluate: Callable[..., dict[str, float]], resumable: bool,
                     received: Callable[[], str | None]) -> dict[str, float]:
    """`evaluate(start=..., after_set=...)` (run_evaluation's arguments bound but those two), resumed from
    the run's partial file when it is of this step. `received()`: the name of a stop signal, or None."""
    path = run.file(PARTIAL)
    start = None
    if resumable:
        saved = read_json(path, None, expect=dict, what=f"delete it to run the final evaluation whole")
        if saved and saved.get("step") == step and isinstance(saved.get("sets"), list) \
                and isinstance(saved.get("totals"), dict):
            start = {"sets": saved["sets"], "totals": saved["totals"]}
            log.info("%s: the final evaluation resumes after %d held-out set(s) done", run.path, len(saved["sets"]))

    def after_set(progress: dict[str, Any]) -> None:
        write_json(path, {"step": step, **progress})
        signal_name = received()
        if signal_name is not None:
            raise StoppedDuringEvaluation(signal_name, len(progress["sets"]))

    result = evaluate(start=start, after_set=after_set if resumable else None)
    path.unlink(missing_ok=True)
    return result
