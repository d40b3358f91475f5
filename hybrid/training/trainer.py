"""The training loop: one function, `train(root)`, from a resolved config to a finished run directory.

Per optimiser step s (0-based; "step" in logs and checkpoints counts steps done, s + 1):

    batch  = task.train_batch(s, batch_size)            pure function of (seed, s): resumable from s alone
    loss   = sum_micro  CE_sum(micro) / scored(batch)   + aux_losses (MoE load balancing) / accumulation
    clip the global gradient norm, AdamW step, scheduler step (warmup + cosine, `optim`)
    log every `log_every`, evaluate every `eval_every`, checkpoint every `checkpoint_every`

A non-finite loss or gradient norm stops the run before the optimiser step (the weights stay
finite), marks it "diverged" and leaves the last good checkpoint in place. Resuming restores the
model, optimiser, scheduler and RNG states and the step; on the CPU the resumed run's losses equal
an uninterrupted run's bit for bit (tests/training/test_resume.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from hybrid.config import RootConfig, dump_config, load_config, origin_of
from hybrid.errors import ConfigError
from hybrid.model import HybridLM
from hybrid.training.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from hybrid.training.config import TrainConfig
from hybrid.training.logging import MetricsLogger
from hybrid.training.optim import build_optimizer, build_scheduler
from hybrid.training.run_dir import CONFIG, RunDir

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # as hybrid.tasks.base


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


class RunExists(RuntimeError):
    """The run directory already holds a run and neither resume nor overwrite was asked for."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available; use train.device=cpu or auto",
                          key="train.device")
    return device


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """None means no autocast (float32)."""
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"float32": None, "bfloat16": torch.bfloat16}[cfg.dtype]


def run_dir_of(root: RootConfig) -> Path:
    return Path(root.train.run_dir) if root.train.run_dir else Path(root.train.out_dir) / (root.name or "run")


def inference_state_size(model: HybridLM, length: int) -> int:
    """Elements of the inference state one sequence of `length` tokens leaves behind (KV caches grow
    with the length; recurrent states do not), as Zoology's "state size" compares architectures."""
    def count(obj: Any) -> int:
        if isinstance(obj, Tensor):
            return obj.numel()
        if isinstance(obj, (list, tuple)):
            return sum(count(o) for o in obj)
        if isinstance(obj, dict):
            return sum(count(o) for o in obj.values())
        if dataclasses.is_dataclass(obj):
            return sum(count(getattr(obj, f.name)) for f in dataclasses.fields(obj))
        if hasattr(obj, "__dict__"):
            return sum(count(o) for o in vars(obj).values())
        return 0

    try:
        with torch.device("meta"):
            return count(model.init_state(1, length, device="meta"))
    except Exception as err:  # a custom layer without a meta-friendly init_state
        log.debug("state size unavailable: %s", err)
        return -1


def _check_vocab(root: RootConfig, task: Any) -> None:
    if task.vocab_size > root.model.vocab_size:
        raise ConfigError(f"the task's tokens go up to {task.vocab_size - 1} but the model's vocabulary has "
                          f"{root.model.vocab_size} entries; set model.vocab_size: {task.vocab_size} (or "
                          f"`vocab_size: ${{task.vocab_size}}` under model: when the task sets vocab_size)",
                          key="model.vocab_size", file=origin_of("model.vocab_size", root.origins))


def build_task_of(root: RootConfig) -> Any:
    from hybrid.tasks.base import build_task  # noqa: PLC0415

    if not root.task:
        raise ConfigError("no task: add `task: {type: mqar, ...}` (see `hybrid tasks`)", key="task")
    try:
        return build_task(root.task, root.seed)
    except ConfigError as err:
        raise err.located(file=origin_of(err.key, root.origins)) from None


def _batch_loss(model_fn: Callable[[Tensor], Tensor], inputs: Tensor, targets: Tensor, scored: int) -> Tensor:
    """Summed next-token cross-entropy of a micro-batch over the scored positions of the whole batch."""
    logits = model_fn(inputs)  # (batch, length, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum") / max(scored, 1)


def train(root: RootConfig | str | Path, overrides: list[str] | None = None, *, resume: bool = False,
          overwrite: bool = False, on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train the config's model on its task; returns the results written to `<run>/results.json`.

    `resume`: continue from `<run>/checkpoint.pt` when there is one (start fresh otherwise).
    `on_step(step, loss)` is called after every optimiser step (tests use it to simulate a crash).
    Raises TrainingDiverged on a NaN/inf loss, RunExists when the run directory is taken.
    """
    if not isinstance(root, RootConfig):
        root = load_config(root, overrides)
    run = RunDir(run_dir_of(root))
    if run.file(CONFIG).exists() and not (resume or overwrite):
        raise RunExists(f"{run.path} already holds a run ({run.status().get('state', 'unknown state')}); "
                        f"continue it with `hybrid train --resume {run.path}`, or pass --overwrite, "
                        f"or choose another train.run_dir / name")
    if overwrite and not resume:
        for name in ("checkpoint.pt", "metrics.jsonl", "results.json", "status.json"):
            run.file(name).unlink(missing_ok=True)
    run.create()
    try:
        return _train(root, run, resume, on_step)
    except TrainingDiverged:
        raise
    except BaseException as err:
        if not isinstance(err, (KeyboardInterrupt, SystemExit)) and run.status().get("state") == "running":
            run.set_status("failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise


def _train(root: RootConfig, run: RunDir, resume: bool, on_step) -> dict[str, Any]:
    from hybrid.tasks.evaluate import evaluate, flatten  # noqa: PLC0415

    cfg = root.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    amp = autocast_dtype(cfg, device)
    task = build_task_of(root)
    _check_vocab(root, task)

    torch.manual_seed(root.seed)
    model = HybridLM(root.model, root.layout).to(device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    model_fn = torch.compile(model) if cfg.compile else model

    state = load_checkpoint(run.path, map_location=device) if resume else None
    start, elapsed, best, max_length = 0, 0.0, None, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start = state["step"]
        extra = state["extra"]
        elapsed, best, max_length = extra.get("elapsed", 0.0), extra.get("best"), extra.get("max_length", 0)
        log.info("resuming %s at step %d", run.path, start)
        if run.status().get("state") in ("completed", "early_stopped") and run.results():
            log.info("%s is already %s", run.path, run.status()["state"])
            return run.results()
    run.write_config(dump_config(root))
    run.write_meta(device, {"resumed_at_step": start} if state is not None else None)
    run.set_status("running", step=start)
    logger = MetricsLogger(run.path, tensorboard=cfg.tensorboard)
    logger.truncate_after(start)

    n_params = model.num_parameters()
    log.info("%s: %s parameters, %d sublayers, device %s%s", root.name, f"{n_params:,}", len(root.layout), device,
             f", autocast {amp}" if amp else "")
    stop = cfg.early_stop
    t_start = time.perf_counter() - elapsed
    train_time, train_tokens = 0.0, 0
    window_loss, window_aux, window_steps = 0.0, {}, 0
    last_eval: dict[str, float] = {}
    ending = "completed"

    def amp_ctx():
        return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()

    def checkpoint(step: int) -> None:
        data = task.position(step, cfg.batch_size) if hasattr(task, "position") else {"step": step}
        save_checkpoint(run.path, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                        extra={"elapsed": time.perf_counter() - t_start, "best": best, "max_length": max_length,
                               "data": data})

    def run_eval(max_batches: int | None) -> dict[str, float]:
        model.eval()
        try:
            result = evaluate(model, task, device, max_batches=max_batches, autocast_dtype=amp)
        finally:
            model.train()
        return flatten(result)

    from tqdm.auto import tqdm  # noqa: PLC0415

    bar = tqdm(total=cfg.steps, initial=start, disable=not cfg.progress, desc=root.name, dynamic_ncols=True,
               mininterval=0.5)
    model.train()
    step = start
    try:
        for s in range(start, cfg.steps):
            t0 = time.perf_counter()
            batch = task.train_batch(s, cfg.batch_size, device)
            inputs, targets = batch.inputs.to(device), batch.targets.to(device)
            max_length = max(max_length, inputs.shape[1])
            scored = int((targets != IGNORE_INDEX).sum())
            lr = optimizer.param_groups[0]["lr"]
            loss_sum = torch.zeros((), device=device)
            aux_sums: dict[str, Tensor] = {}
            for inp, tgt in zip(inputs.chunk(cfg.accumulation), targets.chunk(cfg.accumulation)):
                with amp_ctx():
                    loss = _batch_loss(model_fn, inp, tgt, scored)
                    aux = model.aux_losses()
                total = loss + sum(v.float() for v in aux.values()) / cfg.accumulation if aux else loss
                # On the calling thread: autograd's hand-off to its CUDA worker thread buys nothing on one
                # device and costs host time (cold caches, two context switches), which small models see.
                with torch.autograd.set_multithreading_enabled(False):
                    total.backward()
                loss_sum += loss.detach()
                for k, v in aux.items():
                    aux_sums[k] = aux_sums.get(k, 0.0) + v.detach().float() / cfg.accumulation
            loss_value = float(loss_sum)
            grad_norm = (float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                         if cfg.grad_clip is not None else None)
            if not math.isfinite(loss_value) or (grad_norm is not None and not math.isfinite(grad_norm)):
                what = f"loss {loss_value}" if not math.isfinite(loss_value) else f"gradient norm {grad_norm}"
                message = (f"{what} at step {s + 1} (lr {lr:.3g}); stopped before the optimiser step. The last good "
                           f"checkpoint is {run.file('checkpoint.pt')} " +
                           ("(none written yet)" if not run.file("checkpoint.pt").exists() else "") +
                           "; try a lower train.lr, a longer train.warmup or train.grad_clip")
                run.set_status("diverged", step=s, error=message)
                raise TrainingDiverged(message)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step = s + 1
            train_time += time.perf_counter() - t0
            train_tokens += inputs.numel()
            window_loss += loss_value
            window_steps += 1
            for k, v in aux_sums.items():
                window_aux[k] = window_aux.get(k, 0.0) + float(v)
            if on_step is not None:
                on_step(step, loss_value)

            if step % cfg.log_every == 0 or step == cfg.steps:
                metrics = {"train/loss": window_loss / window_steps, "train/lr": lr,
                           "train/tokens_per_s": train_tokens / max(train_time, 1e-9)}
                if grad_norm is not None:
                    metrics["train/grad_norm"] = grad_norm
                metrics.update({f"train/aux/{k}": v / window_steps for k, v in window_aux.items()})
                logger.log(step, metrics, time.perf_counter() - t_start)
                bar.set_postfix(loss=f"{metrics['train/loss']:.4f}",
                                **({"acc": f"{last_eval['eval/all/accuracy']:.3f}"} if "eval/all/accuracy" in last_eval else {}),
                                tok_s=f"{metrics['train/tokens_per_s']:.0f}", refresh=False)
                window_loss, window_aux, window_steps = 0.0, {}, 0
            bar.update(1)

            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                last_eval = run_eval(cfg.eval_batches)
                logger.log(step, last_eval, time.perf_counter() - t_start)
                value = last_eval.get(stop.metric)
                if value is not None and math.isfinite(value):
                    if best is None or (value > best if stop.mode == "max" else value < best):
                        best = value
                    if stop.target is not None and (value >= stop.target if stop.mode == "max" else value <= stop.target):
                        log.info("%s: %s = %.4f reached the target %s at step %d", root.name, stop.metric, value,
                                 stop.target, step)
                        ending = "early_stopped"
                        break
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != cfg.steps:
                checkpoint(step)
                run.set_status("running", step=step)
    finally:
        bar.close()

    final: dict[str, float] = {}
    if cfg.final_eval:
        final = run_eval(None)
        logger.log(step, {**final, "final": 1}, time.perf_counter() - t_start)
        value = final.get(stop.metric)
        if value is not None and math.isfinite(value) and (best is None or (value > best if stop.mode == "max" else value < best)):
            best = value
    checkpoint(step)
    wall = time.perf_counter() - t_start
    results = {
        "name": root.name, "state": ending, "step": step, "steps": cfg.steps,
        "final": final, "best": {stop.metric: best},
        "parameters": n_params, "parameters_no_embedding": model.num_parameters(exclude_embedding=True),
        "state_size": inference_state_size(model, max_length or 1), "state_length": max_length,
        "tokens_per_s": train_tokens / train_time if train_time else None,
        "wall_time_s": wall, "device": str(device),
    }
    run.write_results(results)
    run.set_status(ending, step=step, wall_time_s=wall)
    logger.close()
    return results


def resume_run(run_dir: Path | str, overrides: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Continue the run in `run_dir` from its checkpoint, with its recorded config (plus `overrides`)."""
    run_dir = Path(run_dir)
    config = run_dir / CONFIG
    if not config.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG}); start it with `hybrid train CONFIG`")
    root = load_config(config, [f"train.run_dir={run_dir}", *(overrides or [])])
    return train(root, resume=True, **kwargs)
