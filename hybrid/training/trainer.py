"""The training loop: `train(root)`, from a resolved config to a finished run directory.

Per optimiser step s (0-based; "step" in logs and checkpoints counts steps done, s + 1):

    batch  = task.train_batch(s, batch_size)            pure function of (seed, s): resumable from s alone
    one optimiser step on it                            `step` (eager) or `graphed` (CUDA graphs), `modes`
    log every `log_every`, evaluate every `eval_every`, checkpoint every `checkpoint_every`

The parts: building the step (`modes`), the step itself (`step`, `graphed`), drawing batches
(`batches`), evaluation (`evaluation`), checkpoints (`checkpoint`); this module holds the loop.

A non-finite loss or gradient norm stops the run with the weights of the last finite step, marks it
"diverged" and leaves the last good checkpoint in place (an eager step finds it before the optimiser
step; a graphed step at the next log, evaluation or checkpoint step). Resuming restores the model,
optimiser, scheduler and RNG states and the step; on the CPU the resumed run's losses equal an
uninterrupted run's bit for bit (tests/training/test_resume.py). A run stopped during its final
evaluation resumes to evaluate the held-out sets not yet done (`final_eval`).
"""
from __future__ import annotations

import functools
import logging
import math
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from hybrid.config import RootConfig, dump_config, load_config
from hybrid.estimate import check_fits
from hybrid.errors import CheckpointError, ConfigError, did_you_mean
from hybrid.model import HybridLM
from hybrid.training.batches import TrainBatches
from hybrid.training.build import (autocast_dtype, build_task_of, check_eval_sets, check_vocab, inference_state_size,
                                   resolve_device, run_dir_of)
from hybrid.training.checkpoint import (load_checkpoint, save_checkpoint, set_rng_state,
                                        state_dict_mismatch)
from hybrid.training.config import TrainConfig
from hybrid.training.distributed import (Parallel, load_model_state, load_optimizer_state, optimizer_state,
                                         rank_device, resolve_mode, setup, wrap)
from hybrid.training.evaluation import GraphedStats, run_evaluation
from hybrid.training.final_eval import PARTIAL, StoppedDuringEvaluation, final_evaluation
from hybrid.training.graphed import GraphedStep
from hybrid.training.interrupt import Interrupted, StopSignals
from hybrid.training.logging import MetricsLogger, NullLogger
from hybrid.training.modes import build_step
from hybrid.training.optim import build_optimizer, build_scheduler, lr_factor
from hybrid.training.run_dir import CONFIG, DONE, FollowerRunDir, RunDir
from hybrid.training.sharded import (is_sharded, load_shards, referenced_shards, remove_stale, save_shards,
                                     shard_names)
from hybrid.training.step import EagerStep, NonFinite, Window

log = logging.getLogger(__name__)
PLAIN_EVERY_S = 60.0  # without a progress bar, a training line at most this often (and one per evaluation)


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


class RunExists(RuntimeError):
    """The run directory already holds a run and neither resume nor overwrite was asked for."""


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the run is marked failed and keeps its last checkpoint."""


def train(root: RootConfig | str | Path, overrides: list[str] | None = None, *, resume: bool = False,
          overwrite: bool = False, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train the config's model on its task; returns the results written to `<run>/results.json`.

    `resume`: continue from `<run>/checkpoint.pt` when there is one (start fresh otherwise).
    `on_step(step)` is called after every optimiser step is launched (tests use it to simulate a crash).
    Raises TrainingDiverged on a NaN/inf loss, RunExists when the run directory is taken.
    """
    if not isinstance(root, RootConfig):
        root = load_config(root, overrides)
    cfg = root.train
    parallel = setup(cfg.parallel, cfg.batch_size, cfg.accumulation, resolve_device(cfg.device))
    try:
        return _train(root, parallel, resume, overwrite, on_step)
    finally:
        parallel.end()


def _train(root: RootConfig, parallel: Parallel, resume: bool, overwrite: bool,
           on_step: Callable[[int], None] | None) -> dict[str, Any]:
    # under torchrun, rank 0 alone writes the run directory; the other ranks read it
    run = RunDir(run_dir_of(root)) if parallel.main else FollowerRunDir(run_dir_of(root))
    if not parallel.main:
        logging.getLogger("hybrid").setLevel(logging.WARNING)
    exists = run.file(CONFIG).exists()
    parallel.barrier()  # every rank has looked before rank 0 writes
    if exists and not (resume or overwrite):
        raise RunExists(f"{run.path} already holds a run ({run.status().get('state', 'unknown state')}); "
                        f"continue it with `hybrid train --resume {run.path}`, or pass --overwrite, "
                        f"or choose another train.run_dir / name")
    if overwrite and not resume and parallel.main:
        for name in ("checkpoint.pt", "checkpoint.prev.pt", "metrics.jsonl", "results.json", "status.json",
                     PARTIAL):
            run.file(name).unlink(missing_ok=True)
    run.create()
    try:
        session = _setup(root, run, resume, parallel)
        if isinstance(session, dict):  # resumed a finished run
            return session
        with StopSignals() as stop:
            finishing = session.finishing  # stopped during its final evaluation: only that is left,
            if finishing and finishing["ending"] == "completed" and session.start < session.cfg.steps:
                finishing = session.finishing = None  # unless train.steps has grown since
            if finishing:
                step, ending = session.start, finishing["ending"]
                session.stopped_by = finishing.get("stopped_by")
            else:
                step, ending = _loop(session, on_step, stop)
            # a signal from here stops the final evaluation between held-out sets (one process), else waits
            return _finish(session, step, ending, stop)
    except (TrainingDiverged, Interrupted):
        raise
    except torch.OutOfMemoryError as err:  # building the model, or the final evaluation
        message = _out_of_memory_message(root.train, run, err, None, None)
        run.set_status("failed", error=message)
        raise OutOfMemory(message) from None
    except BaseException as err:
        # "interrupted" too: a resumed run that fails before its loop starts still shows the old state
        state = run.status().get("state")
        if not isinstance(err, (KeyboardInterrupt, SystemExit)) and state in ("running", "interrupted"):
            run.set_status("failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise


@dataclass
class _Session:
    """Everything one run's loop reads and updates."""

    root: RootConfig
    run: RunDir
    device: torch.device
    amp: torch.dtype | None
    task: Any
    model: HybridLM
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_step: EagerStep | GraphedStep
    logger: MetricsLogger
    start: int
    t_start: float
    best: float | None = None
    max_length: int = 0
    plateau: tuple[float | None, int] = (None, 0)  # (the best by min_delta, evaluations since it): patience
    stopped_by: str | None = None  # "target" or "plateau" once the run stops early
    train_time: float = 0.0
    train_tokens: int = 0
    eval_stats: GraphedStats | None = None
    parallel: Parallel = field(default_factory=Parallel)
    finishing: dict[str, Any] | None = None  # {"ending", "stopped_by", "token"}: the final evaluation began
    warned_metric: bool = False  # an evaluation lacked train.early_stop.metric, and the log said so
    plain: bool = False  # no progress bar (train.progress off, or stderr not a terminal): plain log lines instead
    last_line: float = 0.0  # when the last plain training line was logged (perf_counter)

    @property
    def cfg(self) -> TrainConfig:
        return self.root.train

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start


def _setup(root: RootConfig, run: RunDir, resume: bool, parallel: Parallel) -> _Session | dict[str, Any]:
    """Build the model, optimiser, schedule and step; restore a checkpoint. A finished run's results instead."""
    cfg = root.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = rank_device(resolve_device(cfg.device), parallel)
    amp = autocast_dtype(cfg, device)
    task = build_task_of(root)
    check_vocab(root, task)
    check_eval_sets(root, task)

    est = check_fits(root, device)  # weights, optimiser state and activations against the device's free memory
    resolve_mode(parallel, est.weight_bytes + est.grad_bytes + est.optimizer_bytes, device)
    if parallel.mode == "fsdp" and cfg.lm_loss == "fused":
        raise ConfigError("train.lm_loss fused applies the LM head outside the model's forward, where FSDP keeps its "
                          "weight sharded; use train.lm_loss plain with fsdp, or train.parallel ddp",
                          key="train.lm_loss")
    torch.manual_seed(root.seed)
    model = HybridLM(root.model, root.layout).to(device)
    wrapped = wrap(model, parallel, device)  # DDP around it, or the model sharded in place (FSDP)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    state = load_checkpoint(run.path, map_location=device) if resume else None
    start, extra = 0, {}
    if state is not None:
        _restore(run, model, optimizer, state, parallel)
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start, extra = state["step"], state["extra"]
        log.info("resuming %s at step %d", run.path, start)
        if run.status().get("state") in DONE and run.results():
            log.info("%s is already %s", run.path, run.status()["state"])
            return run.results()
    run.write_config(dump_config(root))
    run.write_meta(device, resumed_at=start if state is not None else None)
    run.set_status("running", step=start)
    logger = MetricsLogger(run.path, tensorboard=cfg.tensorboard) if parallel.main else NullLogger()
    logger.truncate_after(start)
    log.info("%s: %s parameters, %d sublayers, device %s%s%s", root.name, f"{model.num_parameters():,}",
             len(root.layout), device, f", autocast {amp}" if amp else "",
             f", {parallel.mode} over {parallel.world} ranks" if parallel.world > 1 else "")
    data_parallel = parallel if parallel.world > 1 else None
    train_step = build_step(cfg, model, optimizer, scheduler, task, amp, device, start, data_parallel,
                            wrapped if parallel.mode == "ddp" else None)
    session = _Session(root, run, device, amp, task, model, optimizer, scheduler, train_step, logger, start,
                       time.perf_counter() - extra.get("elapsed", 0.0), extra.get("best"), extra.get("max_length", 0),
                       parallel=parallel)
    session.plateau = tuple(extra.get("plateau", (None, 0)))
    session.finishing = extra.get("finishing")
    session.eval_stats = train_step.evaluation_stats(task)
    return session


def _restore(run: RunDir, model: HybridLM, optimizer: torch.optim.Optimizer, state: dict[str, Any],
             parallel: Parallel) -> None:
    """A checkpoint's model and optimiser state, full or sharded, after checking it is of this model."""
    sharded = is_sharded(state)
    weights = ({k: torch.empty(shape, device="meta") for k, shape in shard_names(run.path, state["model"]).items()}
               if sharded else state["model"])
    problems = state_dict_mismatch(model.state_dict(), weights)
    if problems:
        raise CheckpointError(f"holds a model of another layout or size than the run's config: {problems}. "
                              f"Resume with the config it was written with, or start afresh (--overwrite)",
                              file=str(run.file("checkpoint.pt")))
    if sharded:
        load_shards(run.path, state["model"], model, optimizer)
        return
    load_model_state(model, state["model"], parallel)
    if state["optimizer"] is not None:
        load_optimizer_state(model, optimizer, state["optimizer"], parallel)
    elif run.status().get("state") not in DONE:  # `hybrid slim` slims finished runs only: copied or by hand
        raise CheckpointError("holds no optimiser state (slimmed: `hybrid slim` keeps the weights of finished runs "
                              "only), so this unfinished run cannot resume from it. Delete it to restart the run "
                              "from step 0 (or --overwrite)", file=str(run.file("checkpoint.pt")))


def _checkpoint(s: _Session, step: int, rotate: bool = True, finishing: dict[str, Any] | None = None) -> None:
    data = s.task.position(step, s.cfg.batch_size) if hasattr(s.task, "position") else {"step": step}
    optimizer, scheduler = s.train_step.state_dicts(step)
    if s.parallel.mode == "fsdp":  # every rank writes its shards (hybrid.training.sharded)
        model = optimizer = save_shards(s.run.path, step, s.model, s.optimizer, s.parallel.main, s.parallel.barrier)
    else:  # full state dicts, parameters by name: resumable on any number of ranks
        model, optimizer = s.model.state_dict(), optimizer_state(s.model, s.optimizer, optimizer)
    if s.parallel.main:
        save_checkpoint(s.run.path, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                        extra={"elapsed": s.elapsed(), "best": s.best, "max_length": s.max_length, "data": data,
                               "plateau": list(s.plateau), **({"finishing": finishing} if finishing else {})},
                        rotate=rotate)
        if s.parallel.mode == "fsdp":
            remove_stale(s.run.path, referenced_shards(s.run.path))
    s.parallel.barrier()


def _evaluate(s: _Session, max_batches: int | None, sets: list[str] | None = None, **resume: Any) -> dict[str, float]:
    """The held-out sets (`resume`: run_evaluation's start and after_set, for the final evaluation)."""
    return run_evaluation(s.model, s.task, s.device, s.amp, max_batches, s.eval_stats, sets, s.parallel.eval_split(),
                          **resume)


def _log_window(s: _Session, step: int, window: Window, last_eval: dict[str, float], bar: Any) -> None:
    metrics = {"train/loss": window.loss, "train/lr": s.cfg.lr * lr_factor(step - 1, s.cfg),
               "train/tokens_per_s": s.train_tokens / max(s.train_time, 1e-9)}
    if window.grad_norm is not None:
        metrics["train/grad_norm"] = window.grad_norm
    metrics.update({f"train/aux/{k}": v for k, v in window.aux.items()})
    s.logger.log(step, metrics, s.elapsed())
    shown = {"acc": f"{last_eval['eval/all/accuracy']:.3f}"} if "eval/all/accuracy" in last_eval else {}
    bar.set_postfix(loss=f"{window.loss:.4f}", **shown, tok_s=f"{metrics['train/tokens_per_s']:.0f}", refresh=False)
    if s.plain and s.parallel.main and (time.perf_counter() - s.last_line >= PLAIN_EVERY_S or step == s.cfg.steps):
        s.last_line = time.perf_counter()
        log.info("%s: step %d/%d, loss %.4f, %s tokens/s", s.root.name, step, s.cfg.steps, window.loss,
                 f"{metrics['train/tokens_per_s']:,.0f}")


def _log_evaluation(s: _Session, step: int, metrics: dict[str, float]) -> None:
    """Without a progress bar, a log line per periodic evaluation: its pooled accuracy and loss, and the
    early-stopping metric where that is another."""
    if not (s.plain and s.parallel.main):
        return
    keys = dict.fromkeys(k for k in ("eval/all/accuracy", "eval/all/loss", s.cfg.early_stop.metric) if k in metrics)
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in keys)
    log.info("%s: step %d/%d, evaluation: %s", s.root.name, step, s.cfg.steps, shown or "no metrics")


def _improves(s: _Session, value: float | None) -> bool:
    stop = s.cfg.early_stop
    return value is not None and math.isfinite(value) and (
        s.best is None or (value > s.best if stop.mode == "max" else value < s.best))


def _reached_target(s: _Session, metrics: dict[str, float], step: int) -> bool:
    """Record the early-stopping metric of an evaluation; True once it reaches the target."""
    stop = s.cfg.early_stop
    if stop.metric not in metrics:
        _unknown_metric(s, metrics)
    value = metrics.get(stop.metric)
    if _improves(s, value):
        s.best = value
    if value is None or not math.isfinite(value):
        return False
    if stop.target is not None and (value >= stop.target if stop.mode == "max" else value <= stop.target):
        log.info("%s: %s = %.4f reached the target %s at step %d", s.root.name, stop.metric, value, stop.target, step)
        s.stopped_by = "target"
        return True
    if stop.patience is not None and _on_plateau(s, value, step):
        s.stopped_by = "plateau"
        return True
    return False


def _unknown_metric(s: _Session, metrics: dict[str, float]) -> None:
    """An evaluation without the early-stopping metric: a misspelt name, which would leave the target and the
    plateau rule unwatched for the whole budget. An error where either is set; a warning (once) where the
    metric only picks results.json's "best"."""
    stop = s.cfg.early_stop
    names = sorted(k for k in metrics if k.startswith("eval/"))
    message = (f"{stop.metric!r} is not among the metrics this run's evaluations log"
               f"{did_you_mean(stop.metric, names)}; they are: {', '.join(names[:12])}"
               + (" ..." if len(names) > 12 else ""))
    if stop.target is not None or stop.patience is not None:
        raise ConfigError(message + " (the early stop would never be checked)", key="train.early_stop.metric",
                          file=str(s.run.file(CONFIG)))
    if not s.warned_metric:
        s.warned_metric = True
        log.warning("train.early_stop.metric: %s; results.json's best stays empty", message)


def _on_plateau(s: _Session, value: float, step: int) -> bool:
    """Count the evaluations since the metric last beat its best by min_delta; True at `patience`."""
    stop = s.cfg.early_stop
    ref, since = s.plateau
    better = ref is None or (value > ref + stop.min_delta if stop.mode == "max" else value < ref - stop.min_delta)
    s.plateau = (value, 0) if better else (ref, since + 1)
    if s.plateau[1] >= stop.patience:
        log.info("%s: %s has not beaten %.4f by %g in %d evaluations: stopping on a plateau at step %d",
                 s.root.name, stop.metric, ref, stop.min_delta, stop.patience, step)
        return True
    return False


def _out_of_memory_message(cfg: TrainConfig, run: RunDir, err: BaseException, step: int | None,
                           length: int | None) -> str:
    asked = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    checkpoint = run.file("checkpoint.pt")
    tokens = f" of {length} tokens" if length else ""
    where = f"at step {step}" if step is not None else "outside the training steps (building, final evaluation)"
    return (f"out of memory {where} with train.batch_size {cfg.batch_size} in "
            f"{cfg.accumulation} micro-batch(es) of sequences{tokens} on {cfg.device}: {asked}. Use a smaller "
            f"train.batch_size, a larger train.accumulation (the same batch in smaller pieces), shorter sequences "
            f"or a smaller model; the last checkpoint "
            + (f"is {checkpoint}, and --resume continues from it" if checkpoint.exists() else "was not written yet"))


def _loop(s: _Session, on_step: Callable[[int], None] | None, stop: StopSignals) -> tuple[int, str]:
    """The optimiser steps from `s.start`; returns (steps done, "completed" | "early_stopped")."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    cfg = s.cfg
    batches = TrainBatches(s.task, cfg.batch_size, cfg.accumulation, s.device,
                           s.parallel if s.parallel.world > 1 else None)
    s.plain = not (cfg.progress and sys.stderr.isatty())  # a bar's \r frames would garble a log file
    bar = tqdm(total=cfg.steps, initial=s.start, disable=s.plain or not s.parallel.main, desc=s.root.name,
               dynamic_ncols=True, mininterval=0.5)
    s.model.train()
    step, last_eval, mark = s.start, {}, time.perf_counter()

    def synced() -> None:  # at a point where the GPU has caught up: count the training time since `mark`
        nonlocal mark
        now = time.perf_counter()
        s.train_time, mark = s.train_time + now - mark, now

    try:
        for i in range(s.start, cfg.steps):
            inputs, targets, capacity = batches.take(i)
            s.max_length = max(s.max_length, inputs.shape[1])
            s.train_step(i, inputs, targets, capacity)
            if i + 1 < cfg.steps:
                batches.prefetch(i + 1)  # drawn while the GPU runs step i
            step = i + 1
            s.train_tokens += inputs.numel() * s.parallel.world
            if on_step is not None:
                on_step(step)
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                window = s.train_step.read(step)  # waits for the GPU
                synced()
                _log_window(s, step, window, last_eval, bar)
            evaluating = cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps
            checkpointing = cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != cfg.steps
            received = _agreed_signal(s, step, stop.received)
            if received is not None:
                _stop_on_signal(s, step, received)
            if evaluating or checkpointing:
                s.train_step.check(step)  # a non-finite step since the last read stops the run here
                synced()
            if evaluating:
                last_eval = _evaluate(s, cfg.eval_batches, cfg.eval_sets)
                s.logger.log(step, last_eval, s.elapsed())
                _log_evaluation(s, step, last_eval)
                if _reached_target(s, last_eval, step):
                    return step, "early_stopped"
            if checkpointing:
                _checkpoint(s, step)
                s.run.set_status("running", step=step)
            if evaluating or checkpointing:
                mark = time.perf_counter()
    except NonFinite as err:
        _diverged(s, err)
    except torch.OutOfMemoryError as err:
        message = _out_of_memory_message(cfg, s.run, err, step + 1, s.max_length)
        s.run.set_status("failed", error=message)
        raise OutOfMemory(message) from None
    finally:
        bar.close()
    return step, "completed"


def _agreed_signal(s: _Session, step: int, received: str | None) -> str | None:
    """The signal to stop on at this step. Under data parallelism every rank must stop at the same step
    (a checkpoint is a collective): the ranks agree at log steps, stopping if any of them got one."""
    if s.parallel.world == 1:
        return received
    if step % s.cfg.log_every and step != s.cfg.steps:
        return None
    flag = s.parallel.total(torch.tensor(float(received is not None), device=s.device))
    return (received or "a signal to another rank") if flag.item() > 0 else None


def _stop_on_signal(s: _Session, step: int, name: str) -> None:
    s.train_step.check(step)  # never checkpoint after a non-finite step
    _checkpoint(s, step)
    s.run.set_status("interrupted", step=step)
    message = (f"{name} at step {step}: checkpoint written to {s.run.file('checkpoint.pt')}; continue with "
               f"`hybrid train --resume {s.run.path}`")
    log.warning("%s", message)
    raise Interrupted(message, step)


def _diverged(s: _Session, err: NonFinite) -> None:
    checkpoint = s.run.file("checkpoint.pt")
    when = ("stopped before the optimiser step" if err.detected_at is None else
            f"found at step {err.detected_at} (a CUDA-graphed run checks at log, evaluation and checkpoint steps; "
            f"the optimiser skipped step {err.step} and every later one)")
    message = (f"{err}; {when}. The last good checkpoint is {checkpoint} "
               + ("(none written yet)" if not checkpoint.exists() else "")
               + "; try a lower train.lr, a longer train.warmup or train.grad_clip")
    s.run.set_status("diverged", step=err.step - 1, error=message)
    raise TrainingDiverged(message) from None


def _finish(s: _Session, step: int, ending: str, stop: StopSignals) -> dict[str, Any]:
    """Final evaluation, checkpoint and results."""
    final: dict[str, float] = {}
    if s.cfg.final_eval:
        # The trained weights first: a run stopped during a long final evaluation (every length of an
        # extrapolation study) resumes at its last step and only evaluates the sets not yet done.
        if not s.finishing:  # a new token: no partial evaluation of an earlier run in this folder is taken
            s.finishing = {"ending": ending, "stopped_by": s.stopped_by, "token": uuid.uuid4().hex}
            _checkpoint(s, step, finishing=s.finishing)
        s.run.set_status("running", step=step)
        try:
            final = final_evaluation(s.run, str(s.finishing.get("token")), functools.partial(_evaluate, s, None),
                                     s.parallel.world == 1, lambda: stop.received)
        except StoppedDuringEvaluation as err:
            s.run.set_status("interrupted", step=step)
            message = (f"{err}: the sets done are kept in {s.run.file(PARTIAL)}; continue with "
                       f"`hybrid train --resume {s.run.path}`")
            log.warning("%s", message)
            raise Interrupted(message, step) from None
        s.logger.log(step, {**final, "final": 1}, s.elapsed())
        value = final.get(s.cfg.early_stop.metric)
        if _improves(s, value):
            s.best = value
    # after a final evaluation the same step again, still marked as finishing (a crash before the status
    # is written must not resume an early-stopped run into more training)
    _checkpoint(s, step, rotate=not s.cfg.final_eval, finishing=s.finishing)
    wall = s.elapsed()
    model = s.model
    results = {
        "name": s.root.name, "state": ending, "step": step, "steps": s.cfg.steps,
        "final": final, "best": {s.cfg.early_stop.metric: s.best},
        "parameters": model.num_parameters(), "parameters_no_embedding": model.num_parameters(exclude_embedding=True),
        "state_size": inference_state_size(model, s.max_length or 1), "state_length": s.max_length,
        "tokens_per_s": s.train_tokens / s.train_time if s.train_time else None,
        "steps_per_s": (step - s.start) / s.train_time if s.train_time else None,
        "train_step": s.train_step.mode,
        "wall_time_s": wall, "device": str(s.device),
    }
    if ending == "early_stopped" and s.stopped_by:  # a target reached, or a plateau (patience) left
        results["early_stop"] = s.stopped_by
    if s.device.type == "cuda":  # this process's peak since it started (one rank's share under ddp / fsdp)
        results["peak_memory_gib"] = torch.cuda.max_memory_allocated(s.device) / 2**30
    s.run.write_results(results)
    s.run.set_status(ending, step=step, wall_time_s=wall)
    s.logger.close()
    return results


def resume_run(run_dir: Path | str, overrides: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Continue the run in `run_dir` from its checkpoint, with its recorded config (plus `overrides`)."""
    run_dir = Path(run_dir)
    config = run_dir / CONFIG
    if not config.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG}); start it with `hybrid train CONFIG`")
    root = load_config(config, [f"train.run_dir={run_dir}", *(overrides or [])])
    return train(root, resume=True, **kwargs)
