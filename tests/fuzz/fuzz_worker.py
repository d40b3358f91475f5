"""Run fuzz cases in one process, under an address-space limit and a per-case time limit.

    python tests/fuzz/fuzz_worker.py --root CHECKOUT --cases cases.json --ids 0,2,4 --out results.jsonl \
        --template DIR --work DIR
    python tests/fuzz/fuzz_worker.py --root CHECKOUT --make-template DIR

Each case goes through `hybrid.cli.main(argv)` in this process (what the `hybrid` command runs),
with stdout and stderr captured. Before a case the worker writes {"start": id} to --out, after it
one JSON line with the outcome: "returned" (with the exit code), "traceback", "memory", "hang".
RLIMIT_AS bounds the whole process (imports + MEMORY_HEADROOM); the peak resident memory of each
case is measured by resetting VmHWM (/proc/self/clear_refs) before it.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import random
import re
import resource
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASE_SECONDS = 60  # a hang detector, far above any case's time (the slowest take a few seconds)
MEMORY_HEADROOM = 3 << 30  # address space a case may add to what the imports took
TRAIN_BUDGET = 512 << 20  # a training case whose estimate exceeds this is refused as the trainer's check would
ERROR_LINE = re.compile(r"^error: (?P<file>[^:\n]+?): ", re.M)


class CaseTimeout(BaseException):
    """Raised by SIGALRM in the case that ran past CASE_SECONDS."""


def _sleep() -> None:
    time.sleep(3600)


# Cases that must fail, proving the limits hold: argv ["@CONTROL@", name]
CONTROLS = {"memory": lambda: len(bytearray(8 << 30)), "hang": _sleep, "traceback": lambda: 1 // 0}


def _timeout(signum, frame):
    raise CaseTimeout()


class _CurrentStderr:
    """Log records go to whatever sys.stderr is now (the capture of the running case)."""

    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()


def _status(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except OSError:  # e.g. a name too long to be a path
        return False


def _digests(folder: Path) -> dict[str, str]:
    out = {}
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(folder))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def _guard(argv: list[str]) -> int | None:
    """For a 1-step training case: refuse, as `check_fits` would, a config whose estimate exceeds TRAIN_BUDGET.

    Wiring that check into `hybrid train` is the trainer's part; until then this stands in for it. None: run."""
    import torch  # noqa: PLC0415

    from hybrid.config import load_config  # noqa: PLC0415
    from hybrid.errors import ConfigError  # noqa: PLC0415
    try:
        root = load_config(argv[1], [a for a in argv[2:] if "=" in a])
    except ConfigError:
        return None  # main reports it
    try:
        from hybrid.estimate import check_fits  # noqa: PLC0415
    except ImportError:  # a checkout from before the estimate existed
        return _rough_guard(root)
    try:
        check_fits(root, torch.device("cpu"), free_bytes=TRAIN_BUDGET)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return None


def _rough_guard(root) -> int | None:
    import torch  # noqa: PLC0415

    from hybrid.model import HybridLM  # noqa: PLC0415
    with torch.device("meta"):
        params = HybridLM(root.model, root.layout).num_parameters()
    task = json.dumps(root.task)
    lengths = [int(x) for x in re.findall(r'"(?:length|seq_len|context_length)": (\d+)', task)] or [1]
    examples = [int(x) for x in re.findall(r'"eval_examples": (\d+)', task)] or [1]
    size = params * 16 + root.train.batch_size * max(lengths) * (len(root.layout) * root.model.d_model * 40
                                                                  + root.model.vocab_size * 12) * 4
    size += max(examples) * sum(lengths) * 16
    if size > TRAIN_BUDGET:
        print(f"error: {root.name}: model: (fuzz guard) about {size} bytes", file=sys.stderr)
        return 2
    return None


def run_case(case: dict, root: Path, template: Path, work: Path) -> dict:
    import fuzz_corrupt  # noqa: PLC0415
    from hybrid.cli import main  # noqa: PLC0415

    case_dir = work / f"case{case['id']}"
    shutil.rmtree(case_dir, ignore_errors=True)
    case_dir.mkdir(parents=True)

    def subst(text: str) -> str:
        return text.replace("@CASE@", str(case_dir)).replace("@REPO@", str(root))

    for name, text in case["files"].items():
        (case_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (case_dir / name).write_text(subst(text))
    setup = json.loads(subst(json.dumps(case["setup"])))
    fuzz_corrupt.apply_setup(case_dir, template, setup, random.Random(case["id"]))
    before = _digests(case_dir) if case["kind"] == "corrupted_file" else {}
    argv = [subst(a) for a in case["argv"]]
    out, err = io.StringIO(), io.StringIO()
    result = {"id": case["id"], "outcome": "returned", "rc": None, "traceback": ""}
    _reset_peak()
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, case.get("seconds", CASE_SECONDS))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if argv[:1] == ["@CONTROL@"]:
                result["rc"] = CONTROLS[argv[1]]()
            else:
                guarded = _guard(argv) if case.get("guard") else None
                result["rc"] = guarded if guarded is not None else main(argv)
    except SystemExit as exit_:  # argparse
        result["rc"] = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except CaseTimeout:
        result["outcome"] = "hang"
    except MemoryError:
        result.update(outcome="memory", traceback=traceback.format_exc()[-3000:])
    except BaseException:  # noqa: BLE001 - the point: any escaping exception is a finding
        tb = traceback.format_exc()
        result.update(outcome="memory" if "can't allocate memory" in tb else "traceback", traceback=tb[-4000:])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    result["peak_mb"] = round(_status("VmHWM") / 2**20)
    stderr = err.getvalue()
    result["stderr"] = stderr if len(stderr) <= 6000 else f"{stderr[:3000]}\n[...]\n{stderr[-3000:]}"
    match = ERROR_LINE.search(stderr)
    result["error_file_exists"] = bool(match and (match["file"] == "<command line>" or _exists(match["file"])))
    if before and result["rc"] not in (0, None):
        after = set(_digests(case_dir).values())
        result["lost"] = [p for p, h in before.items() if h not in after and not p.endswith("status.json")]
    shutil.rmtree(case_dir, ignore_errors=True)
    return result


def make_template(folder: Path) -> None:
    import fuzz_corrupt  # noqa: PLC0415
    from hybrid.cli import main  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    for name, text in fuzz_corrupt.template_files().items():
        (folder / name).write_text(text)
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["sweep", str(folder / "sweep.yaml"), "--no-progress"])
    if code != 0:
        raise SystemExit(f"the template sweep failed with exit code {code}")


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("--root", "--cases", "--ids", "--out", "--template", "--work", "--make-template"):
        p.add_argument(name)
    args = p.parse_args()
    root = Path(args.root).resolve()
    sys.path[:0] = [str(root), str(HERE)]
    os.chdir(root)
    import torch  # noqa: PLC0415
    torch.set_num_threads(1)
    import hybrid.cli  # noqa: F401, PLC0415
    if not Path(hybrid.cli.__file__).resolve().is_relative_to(root):
        raise SystemExit(f"imported {hybrid.cli.__file__}, not the checkout {root}")
    logging.basicConfig(level=logging.WARNING, handlers=[logging.StreamHandler(_CurrentStderr())])
    if args.make_template:
        make_template(Path(args.make_template))
        return
    signal.signal(signal.SIGALRM, _timeout)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_status("VmSize") + MEMORY_HEADROOM, hard))
    cases = {c["id"]: c for c in json.loads(Path(args.cases).read_text())}
    with open(args.out, "a") as out:
        for i in map(int, args.ids.split(",")):
            out.write(json.dumps({"start": i}) + "\n")
            out.flush()
            result = run_case(cases[i], root, Path(args.template), Path(args.work))
            out.write(json.dumps(result) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
