"""Run every fuzz case in worker processes and judge the outcomes.

    python tests/fuzz/fuzz_run.py [--root CHECKOUT] [--seed 0] [--only KIND] [--ids 3,17]

prints the failures (each with its mutation and a command that reruns it) and the counts by kind.
The test (test_fuzz.py) runs the same thing. A worker that dies or stops writing for
STALL_SECONDS is killed; its running case counts as a crash or a hang and the rest go on.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKER = HERE / "fuzz_worker.py"
STALL_SECONDS = 120
WHERE = re.compile(r"^error: (?P<file>[^:\n]+?): (?P<where>[^:\n]+?): ", re.M)
ARGPARSE_ERROR = re.compile(r"(^|\n)(usage: .*\n)?[\w ]*hybrid[\w ]*: error: |(^|\n)error: ", re.S)


def _supervise(ids: list[int], tag: str, paths: dict[str, Path], results: dict[int, dict]) -> None:
    remaining = list(ids)
    attempt = 0
    while remaining:
        attempt += 1
        out = paths["work"] / f"results-{tag}-{attempt}.jsonl"
        log = open(paths["work"] / f"worker-{tag}-{attempt}.log", "w")
        cmd = [sys.executable, str(WORKER), "--root", str(paths["root"]), "--cases", str(paths["cases"]),
               "--ids", ",".join(map(str, remaining)), "--out", str(out), "--template", str(paths["template"]),
               "--work", str(paths["work"] / tag)]
        # no GPU: a CUDA context reserves more address space than the limit allows, and CPU is what CI has
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        size, last_change = -1, time.monotonic()
        while proc.poll() is None:
            time.sleep(0.2)
            now_size = out.stat().st_size if out.exists() else 0
            if now_size != size:
                size, last_change = now_size, time.monotonic()
            elif time.monotonic() - last_change > STALL_SECONDS:
                proc.kill()
                proc.wait()
        log.close()
        started = None
        for line in (out.read_text().splitlines() if out.exists() else []):
            record = json.loads(line)
            if "start" in record:
                started = record["start"]
            else:
                results[record["id"]] = record
                started = None
        if started is not None:  # the worker died in this case
            stalled = time.monotonic() - last_change > STALL_SECONDS
            tail = (paths["work"] / f"worker-{tag}-{attempt}.log").read_text()[-2000:]
            results[started] = {"id": started, "outcome": "hang" if stalled else "crash", "rc": proc.returncode,
                                "stderr": tail, "traceback": tail, "seconds": None, "peak_mb": None}
        elif proc.returncode != 0 and not any(i in results for i in remaining):
            raise RuntimeError(f"fuzz worker failed to start: {(paths['work'] / f'worker-{tag}-{attempt}.log').read_text()[-3000:]}")
        remaining = [i for i in remaining if i not in results]


def run_cases(cases: list[dict], root: Path, work: Path, workers: int = 2) -> dict[int, dict]:
    """{case id: result} for every case, run by `workers` worker processes."""
    work.mkdir(parents=True, exist_ok=True)
    paths = {"root": root, "work": work, "cases": work / "cases.json", "template": work / "template"}
    paths["cases"].write_text(json.dumps(cases))
    if not paths["template"].exists():
        subprocess.run([sys.executable, str(WORKER), "--root", str(root), "--make-template", str(paths["template"])],
                       check=True, capture_output=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    # heavy kinds spread over the workers: deal the cases out in order
    ids = [c["id"] for c in cases]
    results: dict[int, dict] = {}
    threads = [threading.Thread(target=_supervise, args=(ids[w::workers], f"w{w}", paths, results))
               for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def verdict(case: dict, result: dict) -> str | None:
    """None when the case ended well (accepted, or exit 2 with a located `error:` line); else what went wrong.
    A control case ends well when the harness caught its deliberate failure."""
    if case["kind"] == "control":
        caught = result["outcome"] == case["expect"]
        return None if caught else f"the harness missed a deliberate {case['expect']} (outcome {result['outcome']})"
    if result["outcome"] != "returned":
        return result["outcome"]
    stderr = result.get("stderr", "")
    if "Traceback (most recent call last)" in stderr:
        return "a traceback in the output"
    rc = result["rc"]
    if rc == 0:
        return None
    if rc == 3 and case["command"] == "train" and "error: training diverged" in stderr:
        return None  # the run's outcome, reported as such
    if rc != 2:
        return f"exit code {rc}"
    if case["kind"] == "cli_args":
        return None if ARGPARSE_ERROR.search(stderr) else "exit 2 without an error: line"
    match = WHERE.search(stderr)
    if case["kind"] == "corrupted_file":
        first = next((line for line in stderr.splitlines() if line.startswith("error: ")), "")
        if case["expect_file"] not in first:
            return f"the error does not name {case['expect_file']}"
        return f"files lost: {result['lost']}" if result.get("lost") else None
    if not match:
        return "exit 2 without an `error: <file>: <key>: ...` line"
    if not result.get("error_file_exists"):
        return f"the error names {match['file']!r}, which is no file"
    return None


def describe(case: dict, result: dict, problem: str) -> str:
    files = "".join(f"\n  --- {name} ---\n" + "\n".join("  " + line for line in text.splitlines()[:40])
                    for name, text in case["files"].items() if name.endswith(".yaml") and len(text) < 4000)
    return (f"case {case['id']} [{case['kind']}] {case['target']}: {case['where']}: {case['change']}\n"
            f"  problem: {problem}\n  argv: {case['argv']}\n  setup: {case['setup']}\n"
            f"  stderr: {result.get('stderr', '')[-1500:]}\n  traceback: {result.get('traceback', '')[-2500:]}"
            f"{files}\n  rerun: python tests/fuzz/fuzz_run.py --ids {case['id']}")


def summary(cases: list[dict], results: dict[int, dict]) -> tuple[list[str], dict[str, collections.Counter]]:
    failures, counts = [], collections.defaultdict(collections.Counter)
    for case in cases:
        result = results[case["id"]]
        problem = verdict(case, result)
        kind = case["kind"]
        counts[kind]["cases"] += 1
        ok = "caught" if kind == "control" else "accepted" if result.get("rc") == 0 else "rejected"
        counts[kind][problem.split(":")[0] if problem else ok] += 1
        if problem:
            failures.append(describe(case, result, problem))
    return failures, counts


def main() -> None:
    sys.path.insert(0, str(HERE))
    import fuzz_cases  # noqa: PLC0415

    p = argparse.ArgumentParser()
    p.add_argument("--root", default=str(HERE.parents[1]))
    p.add_argument("--seed", type=int, default=int(os.environ.get("HYBRID_FUZZ_SEED", 0)))
    p.add_argument("--only", help="one kind of case")
    p.add_argument("--ids", help="comma-separated case ids")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", help="folder for the cases (default: a temporary one)")
    args = p.parse_args()
    cases = fuzz_cases.all_cases(args.seed)
    if args.only:
        cases = [c for c in cases if c["kind"] == args.only]
    if args.ids:
        wanted = set(map(int, args.ids.split(",")))
        cases = [c for c in cases if c["id"] in wanted]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = run_cases(cases, Path(args.root).resolve(), Path(args.work or tmp), args.workers)
    failures, counts = summary(cases, results)
    print("\n\n".join(failures))
    for kind, c in sorted(counts.items()):
        print(f"{kind:16s} " + ", ".join(f"{k} {v}" for k, v in c.most_common()))
    peak = max((r.get("peak_mb") or 0) for r in results.values())
    print(f"{len(cases)} cases, {len(failures)} failures, {time.perf_counter() - t0:.0f}s, peak case RSS {peak} MB")


if __name__ == "__main__":
    main()
