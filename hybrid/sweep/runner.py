"""Run a sweep: every run of a `SweepSpec`, sequentially in this process or in parallel worker
processes (one per GPU), skipping finished runs and resuming unfinished ones.

A run whose status is completed, early_stopped or diverged is final and skipped; a run with a
checkpoint continues from it; anything else starts afresh. With `select.enough`, runs go in rounds of
learning rates and a run whose configuration has already reached it is not run; with `select.seeds: best`,
a later seed's run waits for its configuration's first-seed runs and runs only at their best choice
(hybrid/sweep/order.py). Parallel workers take the first queued run that waits on nothing still going.
A run that raises (or whose worker dies) is marked failed with its error in `status.json` and the
sweep goes on; running the sweep again retries it. With a time limit (`stop_after`), the runs still going
get one SIGTERM each at its time and stop with a checkpoint, for the next sweep to resume. `<out>/sweep.json`
records the plan for `hybrid report`.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from hybrid.config import dump_config
from hybrid.errors import ConfigError
from hybrid.summary import format_table
from hybrid.sweep.order import Decisions, decisions, earlier_choices, scheduled
from hybrid.sweep.spec import RunSpec, SweepSpec, override_strings, resolve_run
from hybrid.training.checkpoint import CHECKPOINT
from hybrid.training.run_dir import RunDir, write_json

log = logging.getLogger(__name__)

SWEEP_PLAN = "sweep.json"
NOT_NEEDED = "not needed"  # the state reported for a run that select.enough or seeds: best made unnecessary
NOT_STARTED = "not started"  # the state reported for a run that --start-until or --stop-after kept from starting
STOPPED = "stopped at --stop-after"  # the state reported for a run --stop-after stopped (interrupted on disk)
DEFERRED = "deferred"  # the state reported for a later seed whose first seeds are unfinished and not in this sweep
STOP_GRACE_S = 60.0  # after --stop-after's SIGTERM, how long a run may take to checkpoint before it is killed
WAIT_POLL_S = 5.0  # how often a waiting worker looks again for a run that may start
DECISIONS_MAX_AGE_S = 30.0  # re-read the run folders at least this often (another sweep may share them)


def run_dir(spec: SweepSpec, run: RunSpec) -> RunDir:
    return RunDir(spec.out_dir / "runs" / run.name)


def plan_rows(spec: SweepSpec, stale: dict[str, str] | None = None) -> list[list[str]]:
    """One row per run: name, what will happen, its overrides; `stale`: finished runs whose recorded config
    differs from the planned one (`hybrid.sweep.changed.stale_runs`), said in their action."""
    rows = []
    decided = decisions(spec, run_dir)
    for run in spec.runs:
        rd = run_dir(spec, run)
        state = rd.status().get("state")
        reason = None if rd.finished else decided.unnecessary.get(run.name)
        waits = None if rd.finished else decided.waiting.get(run.name)
        changed = (stale or {}).get(run.name)
        action = (f"skip ({state}; made with another config: {changed})" if rd.finished and changed else
                  "skip (" + state + ")" if rd.finished else
                  f"skip (not needed: {reason})" if reason else
                  f"wait ({len(waits)} first-seed runs to finish), run if the first seed did best here" if waits else
                  f"resume (step {rd.status().get('step', '?')})" if rd.file(CHECKPOINT).exists() else
                  "retry (failed)" if state == "failed" else "run")
        rows.append([run.name, action, " ".join(override_strings({k: v for k, v in run.overrides.items()}))])
    return rows


# Small runs leave a GPU mostly idle; measured on an H200, the summed steps/s of tiny CUDA-graphed runs
# grew up to 8 runs per GPU and fell at 16 (benchmarks/results/train_step_nvidia_h200.md).
MAX_RUNS_PER_GPU = 8
MEMORY_SHARE = 0.8  # of a GPU's memory that packed runs may take, by their estimates


def resolve_jobs(jobs: int | str, spec: SweepSpec | None = None, runs: list[RunSpec] | None = None) -> int:
    """Runs at a time. "auto": 1 without a GPU; otherwise, per GPU, as many of the sweep's runs as fit
    in MEMORY_SHARE of the smallest GPU's memory by the largest run's memory estimate (`hybrid.estimate`),
    at most MAX_RUNS_PER_GPU. (The total, not the free memory: asking for the free memory would open a
    CUDA context on every GPU in this parent process for the whole sweep.)"""
    if jobs != "auto":
        return int(jobs)
    gpus = torch.cuda.device_count()
    if gpus == 0:
        return 1
    if spec is not None and spec.gpus_per_run > 1:  # one multi-GPU run per group of GPUs
        return max(1, gpus // spec.gpus_per_run)
    runs = spec.runs if spec is not None and runs is None else runs
    if not runs:  # nothing to size (or nothing left to run)
        return gpus
    from hybrid.estimate import estimate  # noqa: PLC0415

    largest = max(estimate(resolve_run(spec, r)).total_bytes for r in runs)
    memory = min(torch.cuda.get_device_properties(i).total_memory for i in range(gpus))
    per_gpu = max(1, min(MAX_RUNS_PER_GPU, int(MEMORY_SHARE * memory // max(largest, 1))))
    log.info("--jobs auto: %d run(s) per GPU on %d GPU(s) (largest run's estimate %.2f GiB, %.1f GiB per GPU)",
             per_gpu, gpus, largest / 2**30, memory / 2**30)
    return gpus * per_gpu


def gpu_groups(count: int, per_run: int) -> list[list[int]]:
    """The GPUs 0..count-1 in groups of `per_run` (a ConfigError when there are GPUs but too few)."""
    if count == 0:
        return []
    if count < per_run:
        raise ConfigError(f"gpus_per_run {per_run}, but this machine has {count} GPU(s)", key="gpus_per_run")
    return [list(range(i, i + per_run)) for i in range(0, count - per_run + 1, per_run)]


def _run_inprocess(spec: SweepSpec, run: RunSpec, progress: bool) -> None:
    from hybrid.training.trainer import train  # noqa: PLC0415

    root = resolve_run(spec, run)
    root.train.progress = root.train.progress and progress
    train(root, resume=True)


def worker_devices(gpus: list[int], visible: str | None) -> str:
    """CUDA_VISIBLE_DEVICES for a worker given the sweep's GPU numbers `gpus`, which count the GPUs this
    process sees: through this process's own CUDA_VISIBLE_DEVICES (`visible`) when it has one."""
    if not visible:
        return ",".join(map(str, gpus))
    seen = [d.strip() for d in visible.split(",") if d.strip()]
    return ",".join(seen[g] for g in gpus)


def _run_subprocess(spec: SweepSpec, run: RunSpec, gpus: list[int] | None, stop: "_Stop | None" = None) -> None:
    """Train in a worker process (`hybrid train --resume DIR`), its output in `<run>/train.log`; with
    gpus_per_run > 1 a torchrun job of that many ranks, one per GPU in `gpus` (gloo ranks without GPUs).
    `stop`: the sweep's --stop-after, which signals the worker when its time comes."""
    rd = run_dir(spec, run).create()
    root = resolve_run(spec, run)
    rd.write_config(dump_config(root))
    env = dict(os.environ)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = worker_devices(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    before = rd.status()
    launch = [sys.executable]
    if spec.gpus_per_run > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={spec.gpus_per_run}"]
    cmd = [*launch, "-m", "hybrid", "train", "--resume", str(rd.path), "train.progress=false"]
    with open(rd.file("train.log"), "a") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        if stop is not None:
            stop.track(proc)
        try:
            code = proc.wait()
        finally:
            if stop is not None:
                stop.untrack(proc)
    if code != 0 and not rd.finished:
        tail = rd.file("train.log").read_text().strip().splitlines()[-5:]
        status = rd.status()
        if status.get("state") == "interrupted":  # SIGINT/SIGTERM: checkpointed, resumes next time
            raise RuntimeError(f"interrupted at step {status.get('step')}")
        failed_now = status.get("state") == "failed" and status != before  # written by this attempt
        if stop is not None and stop.fired and not failed_now:
            # stopped while starting (before its training loop listens for the signal), killed after the
            # grace, or a torchrun job (which exits 1 once its ranks stop): not a failure; the next sweep
            # resumes it from the last checkpoint it wrote, if any
            rd.set_status("interrupted")
            raise RuntimeError(f"stopped by --stop-after (worker exit code {code})")
        if status.get("state") != "failed":
            rd.set_status("failed", error=f"worker exited with code {code}: " + " | ".join(tail))
        raise RuntimeError(status.get("error") or f"worker exited with code {code}")


def run_sweep(spec: SweepSpec, *, jobs: int | str | None = None, progress: bool = True,
              only: list[RunSpec] | None = None, start_until: float | None = None,
              stop_after: float | None = None) -> dict[str, str]:
    """Run every run of `spec` (or of `only`, a subset; the plan written for reports stays the whole
    sweep); returns {run name: final state}. Never raises for a failed run. `start_until`: seconds
    from now after which no run starts (those already going go on), for a sweep that runs in pieces
    under a time limit: a run started just before the limit would be cut anyway. `stop_after`: seconds
    from now at which every run still going is stopped with a checkpoint (state interrupted; the next
    sweep resumes it) and no other starts, for a time limit that cuts the job: with it, runs go in
    worker processes even one at a time."""
    started = time.monotonic()
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(spec.out_dir / SWEEP_PLAN, spec.to_dict())
    chosen = spec.runs if only is None else only
    todo = scheduled(spec, [r for r in chosen if not run_dir(spec, r).finished])
    jobs = resolve_jobs(jobs if jobs is not None else spec.jobs, spec, todo)
    picked = "" if only is None else f", {len(chosen)} chosen by --only"
    log.info("sweep %s: %d runs%s (%d finished, %d to run) in %s, %d at a time", spec.name, len(spec.runs), picked,
             len(chosen) - len(todo), len(todo), spec.out_dir, jobs)
    # One slot per run at a time, a slot being gpus_per_run GPUs; with more jobs than slots, runs share
    # them round-robin (small models leave a GPU mostly idle, waiting on the host).
    groups = gpu_groups(torch.cuda.device_count(), spec.gpus_per_run)
    free = [groups[i % len(groups)] for i in range(jobs)] if groups else [None] * jobs
    lock = threading.Lock()
    queue = _Queue(spec, todo, lock, started, start_until, stop_after)
    stop = None if stop_after is None else _Stop(stop_after)
    in_process = jobs == 1 and spec.gpus_per_run == 1 and stop is None

    def one(index: int, run: RunSpec) -> None:
        t0 = time.perf_counter()
        log.info("[%d/%d] %s", index + 1, len(todo), run.name)
        rd = run_dir(spec, run)
        try:
            if in_process:
                _run_inprocess(spec, run, progress)
            else:
                with lock:
                    device = free.pop(0)
                try:
                    _run_subprocess(spec, run, device, stop)
                finally:
                    with lock:
                        free.append(device)
        except Exception as err:  # isolate the failure: record it, go on with the others
            if rd.status().get("state") not in ("failed", "diverged", "interrupted"):
                rd.create().set_status("failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
            status = rd.status()
            if status.get("state") == "interrupted" and stop is not None and stop.fired:
                stop.stopped.add(run.name)
                step = status.get("step")
                log.info("run %s stopped by --stop-after %s; the next sweep resumes it", run.name,
                         f"at step {step}" if step is not None else "before its first checkpoint")
            else:
                log.error("run %s %s: %s", run.name, status.get("state"), status.get("error", err))
        else:
            log.info("run %s %s in %.1fs", run.name, rd.status().get("state"), time.perf_counter() - t0)

    def worker() -> None:
        while (taken := queue.take()) is not None:
            try:
                one(*taken)
            finally:
                queue.done(taken[1].name)

    try:
        _execute(jobs, worker, queue)
    finally:
        if stop is not None:
            stop.cancel()
    decided = decisions(spec, run_dir)
    stopped = set() if stop is None else stop.stopped
    return {r.name: NOT_STARTED if r.name in queue.too_late else DEFERRED if r.name in queue.deferred
            else STOPPED if r.name in stopped else state_of(spec, r, decided) for r in chosen}


def _execute(jobs: int, worker, queue: "_Queue") -> None:
    """`worker` on this thread (one job), or on `jobs` threads until each returns."""
    if jobs == 1:
        worker()  # a run at a time: in this process, or in a worker (torchrun with gpus_per_run > 1, --stop-after)
    else:
        pool = ThreadPoolExecutor(max_workers=jobs)
        try:
            for future in [pool.submit(worker) for _ in range(jobs)]:
                future.result()
        except KeyboardInterrupt:  # the workers got the signal too and checkpoint; start no more runs
            queue.close()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()


class _Queue:
    """The runs still to start, in schedule order. `take` gives the first that may start now (and drops
    those the decisions make unnecessary, logging why): not a later seed whose configuration's first
    seeds are still to finish (`select.seeds: best`), nor a later choice whose earlier choices are
    (`select.enough`); it waits while every queued run waits on runs still going. A later seed whose
    first seeds are unfinished but not in this sweep (failed, or left out by --only) is dropped: deferred
    to the next sweep. Past `start_until` seconds from `started`, or at `stop_after`, no run starts (the
    remaining needed ones are recorded in `too_late`)."""

    def __init__(self, spec: SweepSpec, runs: list[RunSpec], lock: threading.Lock, started: float,
                 start_until: float | None, stop_after: float | None = None):
        self.spec, self.runs, self.lock = spec, list(runs), lock
        self.stop_after = stop_after
        self.pending = {run.name for run in runs}  # not yet done: a later run may wait for them
        self.index = {run.name: i for i, run in enumerate(runs)}
        self.earlier = earlier_choices(spec)
        self.started, self.start_until = started, start_until
        self.too_late: set[str] = set()
        self.deferred: set[str] = set()
        self._decided: Decisions | None = None  # the decisions, kept until a run finishes or they age
        self._decided_at = 0.0

    def done(self, name: str) -> None:
        """A run of this sweep has finished (or stopped): it is no longer waited on, and the decisions
        are read again from the run folders."""
        with self.lock:
            self.pending.discard(name)
            self._decided = None

    def close(self) -> None:
        with self.lock:
            self.runs.clear()

    def take(self) -> tuple[int, RunSpec] | None:
        while True:
            with self.lock:
                if not self.runs:
                    return None
                if self._decided is None or time.monotonic() - self._decided_at > DECISIONS_MAX_AGE_S:
                    self._decided, self._decided_at = decisions(self.spec, run_dir), time.monotonic()
                decided = self._decided
                elapsed = time.monotonic() - self.started
                if self.stop_after is not None and elapsed >= self.stop_after:
                    self._too_late(decided, "at --stop-after")
                    return None
                if self.start_until is not None and elapsed > self.start_until:
                    self._too_late(decided, f"past --start-until {self.start_until:g}s")
                    return None
                for run in list(self.runs):
                    ready = self._ready(run, decided)
                    if ready is None:  # unnecessary or deferred: never started here
                        self.runs.remove(run)
                        self.pending.discard(run.name)
                    elif ready:
                        self.runs.remove(run)
                        return self.index[run.name], run
            time.sleep(WAIT_POLL_S)

    def _ready(self, run: RunSpec, decided: Decisions) -> bool | None:
        """True if `run` may start now, False if it waits on runs going in this sweep, None if it is not
        needed or deferred to the next sweep."""
        if run.name in decided.unnecessary:
            log.info("run %s not needed: %s", run.name, decided.unnecessary[run.name])
            return None
        waits = decided.waiting.get(run.name)
        if waits and not any(n in self.pending for n in waits):
            log.info("run %s deferred: the first-seed runs %s are unfinished and not in this sweep; "
                     "run the sweep again once they finish", run.name, ", ".join(waits))
            self.deferred.add(run.name)
            return None
        return not waits and not any(n in self.pending for n in self.earlier.get(run.name, ()))

    def _too_late(self, decided: Decisions, why: str) -> None:
        for run in self.runs:
            if run.name not in decided.unnecessary:
                log.info("run %s not started: %s; the next sweep runs it", run.name, why)
                self.too_late.add(run.name)
            self.pending.discard(run.name)
        self.runs.clear()


class _Stop:
    """--stop-after: `seconds` from now every worker process still going gets one SIGTERM (its training loop
    finishes the step in flight, writes a checkpoint and stops as interrupted, for the next sweep to
    resume), and one still alive STOP_GRACE_S later is killed; the queue starts no run from that time on
    (its own check). `stopped`: the runs it stopped, filled in by the sweep. A torchrun job (gpus_per_run
    > 1) passes the signal to its ranks and kills them itself after 30 s, its own limit."""

    def __init__(self, seconds: float):
        self.fired, self.stopped = False, set()
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self._cancelled = False
        self._timers = [threading.Timer(seconds, self._fire)]
        self._timers[0].daemon = True
        self._timers[0].start()

    def track(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)
            late = self.fired
        if late:  # started as the time came
            _signal(proc, signal.SIGTERM)

    def untrack(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            timers = list(self._timers)
        for timer in timers:
            timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self.fired = True
            procs = list(self._procs)
            kill = threading.Timer(STOP_GRACE_S, self._kill)
            kill.daemon = True
            self._timers.append(kill)
        for proc in procs:
            _signal(proc, signal.SIGTERM)
        log.info("--stop-after: stopped %d run(s) (each checkpoints at the step it is on); starting no other",
                 len(procs))
        kill.start()

    def _kill(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            log.warning("--stop-after: a run's worker (pid %d) still going %gs after SIGTERM: killed", proc.pid,
                        STOP_GRACE_S)
            _signal(proc, signal.SIGKILL)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except (ProcessLookupError, OSError):  # it has just exited
        pass


def state_of(spec: SweepSpec, run: RunSpec, decided: Decisions) -> str:
    """The run's state, NOT_NEEDED for an unfinished run that select.enough or seeds: best makes unnecessary
    (`decided`: the sweep's decisions, computed once for every run asked about)."""
    rd = run_dir(spec, run)
    if not rd.finished and run.name in decided.unnecessary:
        return NOT_NEEDED
    return rd.status().get("state", "missing")


def summary_table(spec: SweepSpec) -> str:
    """name, state, the selection metric at the end of each run, wall time."""
    rows = []
    decided = decisions(spec, run_dir)
    for run in spec.runs:
        rd = run_dir(spec, run)
        res: dict[str, Any] = rd.results()
        value = (res.get("final") or {}).get(spec.metric)
        state = state_of(spec, run, decided).replace("missing", "-")
        rows.append([run.name, state, f"{value:.4f}" if isinstance(value, float) else "-",
                     f"{res['wall_time_s']:.0f}s" if res.get("wall_time_s") else "-",
                     (rd.status().get("error") or "")[:80]])
    return format_table(["run", "state", spec.metric, "wall", "error"], rows, align_right={2, 3})
