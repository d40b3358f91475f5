"""Metric logs: JSON lines always, TensorBoard event files when `torch.utils.tensorboard` imports.

Each line of metrics.jsonl is `{"step": s, "time": seconds since the run started, <name>: value}`;
names are "train/loss", "train/lr", "train/aux/<name>", "eval/<group>/<metric>", ... Floats are
written with Python's repr, which round-trips exactly, so two runs' losses compare bitwise.

On resume, `truncate_after(step)` drops the lines a killed run wrote after its last checkpoint,
so the log of a resumed run reads as that of an uninterrupted one. A torn last line (the writer
was killed mid-line) is skipped; a damaged line anywhere else is a `RunFileError` naming the file
and the line, raised before anything is rewritten.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from hybrid.errors import RunFileError

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf": valid JSON, still readable
    return value


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file; a torn last line (a killed writer) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = path.read_bytes()
        lines = data.decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise RunFileError(f"cannot be read ({getattr(err, 'strerror', None) or err}); restore it or delete it "
                           "(the run's other files are intact)", file=str(path)) from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            record = None
        if isinstance(record, dict) and isinstance(record.get("step", 0), int):
            records.append(record)
        elif number == len(lines) and not data.endswith(b"\n"):
            continue  # torn by a killed writer: that step is logged again after resuming
        else:
            raise RunFileError(f"line {number} is not a metrics record ({line[:60]!r}); {_ADVICE}", file=str(path))
    return records


_ADVICE = "fix or delete that line (the other lines and the run's other files are intact)"


class MetricsLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = Path(run_dir) / METRICS
        self._file = None
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
            except Exception:  # ImportError, or a broken tensorboard install
                log.info("TensorBoard logging is off (torch.utils.tensorboard does not import); metrics go to %s",
                         self.path)
            else:
                self._tb = SummaryWriter(str(Path(run_dir) / "tb"))

    def truncate_after(self, step: int) -> None:
        """Keep only the records with step <= `step` (resuming from a checkpoint taken at `step`)."""
        if not self.path.is_file():
            return
        records = read_metrics(self.path)
        kept = [r for r in records if r.get("step", 0) <= step]
        text = self.path.read_text()
        if len(kept) == len(records) == text.count("\n") and text.endswith("\n"):
            return  # nothing past the checkpoint, no cut last line: the file stays as it is
        from hybrid.training.checkpoint import atomic_write  # noqa: PLC0415
        payload = "".join(json.dumps(r) + "\n" for r in kept).encode()
        atomic_write(self.path, lambda f: f.write(payload))  # a failed write leaves the old file whole

    def log(self, step: int, metrics: dict[str, Any], elapsed: float | None = None) -> None:
        record = {"step": step}
        if elapsed is not None:
            record["time"] = round(elapsed, 3)
        record.update({k: _clean(v) for k, v in metrics.items()})
        if self._file is None:
            self._file = open(self.path, "a")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class NullLogger:
    """MetricsLogger's interface writing nothing (the ranks other than 0 of a data-parallel job)."""

    def truncate_after(self, step: int) -> None:
        pass

    def log(self, step: int, metrics: dict[str, Any], elapsed: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass
