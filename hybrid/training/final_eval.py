"""A run's final evaluation, resumable set by set.

A study's final evaluation can take many minutes (an extrapolation study scores every length up to
2^20), longer than what is left of a time-capped piece. The trainer checkpoints the trained weights
before it starts; after each held-out set the sums so far go to `<run>/final_eval.partial.json`
(written atomically), and a SIGINT/SIGTERM received during the evaluation stops it after the set in
progress (not after the last). Resumed, the run evaluates only the sets not yet done and reports the
same metrics as an evaluation run whole; a partial file of another list of sets is not used. Under
data parallelism each rank holds a share of the sums: the evaluation then runs whole, and a signal
waits for its end, as before.
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


def final_evaluation(run: RunDir, token: str, evaluate: Callable[..., dict[str, float]], resumable: bool,
                     received: Callable[[], str | None]) -> dict[str, float]:
    """`evaluate(start=..., after_set=...)` (run_evaluation with its other arguments bound), resumed from
    the run's partial file when that file carries `token`: the one the trainer drew for this final
    evaluation and put in the checkpoint written before it, so that a partial file of an earlier run in
    the folder (one overwritten, or retrained from an older checkpoint) is never taken for this one.
    `received()`: the name of a stop signal, or None."""
    path = run.file(PARTIAL)
    start = None
    if resumable:
        saved = read_json(path, None, expect=dict, what="delete it to run the final evaluation whole")
        if saved and saved.get("token") == token and isinstance(saved.get("sets"), list) \
                and isinstance(saved.get("totals"), dict):
            start = {k: saved.get(k) for k in ("sets", "planned", "totals")}
            log.info("%s: the final evaluation resumes after %d held-out set(s) done", run.path, len(saved["sets"]))

    def after_set(progress: dict[str, Any]) -> None:
        write_json(path, {"token": token, **progress})
        signal_name = received()
        if signal_name is not None and len(progress["sets"]) < len(progress["planned"]):
            raise StoppedDuringEvaluation(signal_name, len(progress["sets"]))

    result = evaluate(start=start, after_set=after_set if resumable else None)
    if resumable:
        path.unlink(missing_ok=True)
    return result
