"""A run directory: everything needed to know what ran, where, and how it ended.

    <run>/config.yaml      the resolved config (what `hybrid train --resume` reads back)
    <run>/meta.json        git commit (and whether the tree was dirty), versions, device, command line
    <run>/status.json      state: running | completed | early_stopped | diverged | failed | interrupted, step, error
    <run>/metrics.jsonl    one JSON object per logged step (see `hybrid.training.logging`)
    <run>/results.json     final metrics, parameters, state size, tokens/s, wall time
    <run>/checkpoint.pt    the latest checkpoint (see `hybrid.training.checkpoint`)
    <run>/checkpoint.prev.pt   the one before (a damaged latest one falls back to it)
    <run>/tb/              TensorBoard event files, when tensorboard is installed

The status and results files are rewritten atomically, so a reader never sees half a file. One
that was damaged anyway (a disk error, an editor) is a `RunFileError` naming it and saying what to
do, and is never overwritten: the run's other files stay as they are.
"""
from __future__ import annotations

import json
import logging
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from hybrid.errors import RunFileError
from hybrid.training.checkpoint import atomic_write

log = logging.getLogger(__name__)
CONFIG, META, STATUS, RESULTS = "config.yaml", "meta.json", "status.json", "results.json"
FINAL_STATES = ("completed", "early_stopped", "diverged")  # a sweep does not run these again
DONE = ("completed", "early_stopped")  # the final states whose runs `hybrid train` returns without training


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return repr(value)


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, default=_json_default, allow_nan=True) + "\n"
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def read_json(path: Path, default: Any = None, *, expect: type | None = None, what: str = "") -> Any:
    """The JSON value in `path` (`default` when there is no such file), or a RunFileError when it cannot
    be read or (with `expect`) is not of that type. `what` tells the user what to do about it."""
    path = Path(path)
    if not path.exists():
        return default
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0][:160]
        raise RunFileError(f"cannot be read as JSON ({reason}); {what or 'restore it or delete it'}",
                           file=str(path)) from None
    if expect is not None and not isinstance(value, expect):
        kind = "object" if expect is dict else expect.__name__
        raise RunFileError(f"holds {type(value).__name__} where a JSON {kind} belongs; "
                           f"{what or 'restore it or delete it'}", file=str(path))
    return value


def git_info(start: Path | None = None) -> dict[str, Any]:
    """Commit and dirtiness of the checkout holding this package (empty when not a git checkout)."""
    where = start or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        if not commit:
            return {}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {}


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    else:
        info.update(name=platform.processor() or platform.machine())
    return info


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    for name in ("numpy", "omegaconf", "triton"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    try:
        from importlib.metadata import version  # noqa: PLC0415
        out["hybrid"] = version("hybrid")
    except Exception:  # not installed: running from a source checkout
        pass
    return out


_STATUS_ADVICE = ("the run's other files are intact: delete status.json and `hybrid train --resume <run>` "
                  "continues from the checkpoint (a sweep then resumes the run)")
_RESULTS_ADVICE = ("the run's other files are intact: delete results.json and `hybrid train --resume <run>` "
                   "writes it again from the last checkpoint")


class RunDir:
    """The files of one run (see the module header)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def create(self) -> "RunDir":
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (OSError, ValueError) as err:
            raise RunFileError(f"cannot create the run directory ({getattr(err, 'strerror', None) or err}); set "
                               "train.out_dir or train.run_dir to a folder you can write", key="train.run_dir",
                               file=str(self.path)) from None
        return self

    def file(self, name: str) -> Path:
        return self.path / name

    # -- what ran
    def write_config(self, yaml_text: str) -> None:
        atomic_write(self.file(CONFIG), lambda f: f.write(yaml_text.encode()))

    def write_meta(self, device: torch.device, extra: dict[str, Any] | None = None,
                   resumed_at: int | None = None) -> None:
        """Where, how and from what the run started. A resume (`resumed_at`: the checkpoint's step) keeps the
        first start's record and appends its own to "resumes", so the commit and command line that made the
        earlier steps are not lost."""
        meta = {"git": git_info(), "versions": versions(), "device": device_info(device),
                "host": socket.gethostname(), "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **(extra or {})}
        first = {}
        if resumed_at is not None:
            try:
                first = read_json(self.file(META), {}, expect=dict)
            except RunFileError as err:  # a damaged record of the first start must not stop the resume
                log.warning("%s; it is rewritten with this resume's record only", err)
        if first:
            meta = {**first, "resumes": [*first.get("resumes", []), {"at_step": resumed_at, **meta}]}
        elif resumed_at is not None:
            meta["resumed_at_step"] = resumed_at  # no record of the first start (an older run, or it was lost)
        write_json(self.file(META), meta)

    # -- how it went
    def status(self) -> dict[str, Any]:
        status = read_json(self.file(STATUS), {}, expect=dict, what=_STATUS_ADVICE) or {}
        if not isinstance(status.get("state", ""), str) or not isinstance(status.get("step", 0), int):
            raise RunFileError(f"has a state {status.get('state')!r} and a step {status.get('step')!r}; a state is a "
                               f"string and a step an integer. {_STATUS_ADVICE}", file=str(self.file(STATUS)))
        return status

    def set_status(self, state: str, **fields: Any) -> None:
        status = {**self.status(), "state": state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if state not in ("failed", "diverged"):
            status.pop("error", None)
            status.pop("traceback", None)
        status.update(fields)
        write_json(self.file(STATUS), status)

    def results(self) -> dict[str, Any]:
        """The final results ({} before the run ends); a RunFileError when results.json lacks what
        `write_results` always writes, with those types."""
        results = read_json(self.file(RESULTS), {}, expect=dict, what=_RESULTS_ADVICE) or {}
        if results:
            types = {"name": str, "state": str, "step": int, "final": dict, "wall_time_s": (int, float)}
            wrong = [k for k, t in types.items() if not isinstance(results.get(k), t) or isinstance(results[k], bool)]
            if wrong:
                raise RunFileError(f"lacks {', '.join(wrong)} (or has them of the wrong type). {_RESULTS_ADVICE}",
                                   file=str(self.file(RESULTS)))
        return results

    def write_results(self, results: dict[str, Any]) -> None:
        write_json(self.file(RESULTS), results)

    @property
    def finished(self) -> bool:
        return self.status().get("state") in FINAL_STATES


class FollowerRunDir(RunDir):
    """The run directory as a rank other than 0 of a data-parallel job sees it: read, never written
    (rank 0 writes the config, status, metrics, results and checkpoints)."""

    def create(self) -> "RunDir":
        return self

    def write_config(self, yaml_text: str) -> None:
        pass

    def write_meta(self, device: torch.device, extra: dict[str, Any] | None = None,
                   resumed_at: int | None = None) -> None:
        pass

    def set_status(self, state: str, **fields: Any) -> None:
        pass

    def write_results(self, results: dict[str, Any]) -> None:
        pass
