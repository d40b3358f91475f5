"""Memory of a training run, estimated before anything is allocated, and whether it fits the device.

    est = estimate(root)                        # parameters counted exactly, on the meta device
    print(est.describe())
    check_fits(root, torch.device("cuda"))      # ConfigError naming what to change when it does not fit

Bytes counted (B = batch_size / accumulation, the micro-batch; L = the task's longest training
sequence, from its config's `shapes()`; e = 2 under bfloat16 autocast, else 4; P = parameters):

    weights      4 P                 float32 whatever train.dtype says (autocast casts per op, the
                                     stored weights stay float32; hybrid/training/config.py)
    gradients    4 P_trainable       float32, like the weights
    optimizer    8 P_trainable       AdamW: exp_avg and exp_avg_sq, float32
    activations  what one training step keeps for its backward, an upper-bound-ish estimate:
                 per use of a sublayer, e * B * L * (2 W + 4 d_model + S), where W sums the input
                 and output widths of its projections (each keeps its input for the backward, the
                 next elementwise op its output; the factor 2 covers gates and activation
                 functions; an expert layer counts top_k experts), 4 d_model the pre-norm and the
                 residual, and S the recurrent state per token (Mamba's d_inner x d_state, which the
                 CPU reference scan keeps and the Triton scan recomputes); an attention sublayer
                 whose backend materialises the softmax (eager, sdpa_math) adds 2 e * B * heads * L *
                 min(L, window) for its scores and probabilities (the fused kernels auto picks, SDPA's
                 on the CPU, flash on CUDA, keep none); a layer that keeps more declares it with
                 `activation_elements(L)`, float32 elements per example (mamba2's chunked SSD: its
                 (L, chunk, heads) decay and score tensors), counted as 4 B times that; then 12 B L vocab
                 for the float32 logits, their log-softmax and its gradient.
    eval         a held-out batch's forward without gradients (batch Be, length Le, the longest):
                 the same per-token terms for one sublayer at a time plus the float32 logits,
                 e * Be * Le * (2 W_max + 4 d_model + S_max) + 4 Be * Le * vocab (+ materialised
                 attention scores and declared activation elements).
    data         the held-out sets the task keeps in host memory: 16 bytes per token (int64
                 inputs and targets).

    total_bytes  weights + optimizer + max(gradients + activations, eval), plus `data` when the
                 training device is the CPU. check_fits compares it with the device's free memory
                 (and, on CUDA, `data` with the host's).

Against the measured peak resident memory of one CPU training step (Transformer, Mamba, MoE and
hybrid stacks on MQAR at 32 to 256 tokens) the estimate came out 1.1 to 1.9 times the peak.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybrid.config import RootConfig, origin_of
from hybrid.errors import ConfigError, shown
from hybrid.registry import LAYERS

SAFETY = 1.0  # check_fits refuses when total > free / SAFETY; the estimate itself is already generous
MATERIALISED = ("eager", "sdpa_math")  # attention backends that keep the (L, L) scores


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    trainable: int
    weight_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int  # one training step's saved activations (0 when the sequence length is unknown)
    eval_bytes: int  # a held-out batch's forward
    data_bytes: int  # held-out sets kept in host memory
    total_bytes: int  # on the training device (see the module docstring)
    batch_size: int  # micro-batch
    sequence_length: int | None  # longest training sequence, None when the task does not say
    activation_dtype: str

    def describe(self) -> str:
        """Two lines for `hybrid show`."""
        f = format_bytes
        head = (f"memory of a training step (float32 weights, AdamW, {self.activation_dtype} activations): weights "
                f"{f(self.weight_bytes)}, gradients {f(self.grad_bytes)}, optimizer {f(self.optimizer_bytes)}")
        if not self.sequence_length:
            return f"{head}\n  total ~{f(self.total_bytes)}; no task with known lengths: activations not counted"
        return (f"{head}, activations ~{f(self.activation_bytes)} (batch {self.batch_size} x length "
                f"{self.sequence_length})\n  total ~{f(self.total_bytes)} on the device; a held-out batch's forward "
                f"~{f(self.eval_bytes)}; held-out data {f(self.data_bytes)}")


def format_bytes(n: int | float) -> str:
    """1536 -> "1.5 KiB"; binary units, three significant digits."""
    if isinstance(n, int) and n.bit_length() > 1000:  # beyond a float: only absurd configs get here
        return f"~2^{n.bit_length() - 1} B"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB" if n < 1000 else f"{n:,.0f} PiB"


def meta_model(root: RootConfig) -> nn.Module:
    """The config's HybridLM on the meta device (no memory); a layer that cannot be built is a ConfigError."""
    from hybrid.model import HybridLM  # noqa: PLC0415

    try:
        with torch.device("meta"):
            return HybridLM(root.model, root.layout)
    except ConfigError:
        raise
    except Exception as err:  # a layer's own checks, or sizes no tensor can have
        raise _build_error(root, err) from None


def _build_error(root: RootConfig, err: Exception) -> ConfigError:
    """The first sublayer that fails to build on its own, located at its alias (or the model's sizes)."""
    m = root.model
    try:
        with torch.device("meta"):
            nn.Embedding(m.vocab_size, m.d_model)
    except Exception as inner:  # noqa: BLE001 - sizes no tensor can have
        key = "model.d_model" if m.d_model >= m.vocab_size else "model.vocab_size"
        return ConfigError(f"no embedding of {shown(m.vocab_size, 30)} x {shown(m.d_model, 30)} can be built "
                           f"({_what(inner)}); "
                           f"give a smaller {key.split('.')[1]}", key=key, file=origin_of(key, root.origins))
    for spec in root.layout:
        for branch in spec.branches:
            try:
                with torch.device("meta"):
                    LAYERS.get(branch.type).build(root.model.d_model, branch.config)
            except Exception as inner:  # noqa: BLE001 - reported with its type and message
                key = f"model.layers.{branch.alias}" if branch.alias in root.model.layers else "model.layout"
                return ConfigError(f"cannot build layer {branch.type!r} (alias {branch.alias!r}, sublayer "
                                   f"{spec.index}) with d_model {shown(root.model.d_model, 30)}: {_what(inner)}",
                                   key=key, file=origin_of(key, root.origins))
    return ConfigError(f"cannot build the model: {_what(err)}", key="model", file=origin_of("model", root.origins))


def _what(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def _widths(block: nn.Module, config_of: dict[int, Any]) -> tuple[int, int]:
    """(W, S) of one sublayer: projection widths per token and recurrent state per token."""
    width, state = 0, 0
    for module in block.modules():
        if isinstance(module, nn.Linear):
            width += module.in_features + module.out_features
        elif isinstance(module, nn.Conv1d):
            width += module.in_channels + module.out_channels
        elif isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 3:
            top_k = next((getattr(c, "top_k", 1) for c in config_of.values() if hasattr(c, "top_k")), 1)
            width += (module.weight.shape[-1] + module.weight.shape[-2]) * top_k  # experts
        for name, p in module.named_parameters(recurse=False):
            if name == "A_log" and p.dim() == 2:
                state += p.numel()
    return width, state


def _attention_scores(config: Any, length: int) -> int:
    """heads * L * min(L, window): the score matrix of one example, when the layer materialises it."""
    heads = getattr(config, "n_heads", None)
    if not isinstance(heads, int) or getattr(config, "backend", None) not in MATERIALISED:
        return 0
    window = getattr(config, "window", None)
    return heads * length * min(length, window or length)


def _declared(block: nn.Module, length: int) -> int:
    """float32 elements per example that the sublayer's branches declare beyond the per-token terms."""
    return sum(m.activation_elements(length) for m in getattr(block, "branches", [])
               if callable(getattr(m, "activation_elements", None)))


def _resolve(root: RootConfig, device: torch.device | None) -> tuple[torch.device, int]:
    """The training device (as the trainer resolves "auto") and the activation bytes per element."""
    if device is None:
        name = root.train.device
        device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                              "cpu" if name == "auto" else name)
    bf16 = root.train.dtype == "bfloat16" or (root.train.dtype == "auto" and device.type == "cuda")
    return device, 2 if bf16 else 4


def task_shapes(root: RootConfig) -> Any:
    """The task's `TaskShapes` from its config (nothing is drawn or read), or None when it has none."""
    if not root.task:
        return None
    from hybrid.tasks.base import check_task  # noqa: PLC0415

    try:
        config = check_task(root.task)
    except ConfigError as err:
        raise err.located(file=origin_of(err.key, root.origins)) from None
    shapes = getattr(config, "shapes", None)
    return shapes() if callable(shapes) else None


def estimate(root: RootConfig, device: torch.device | None = None, *, model: nn.Module | None = None
             ) -> MemoryEstimate:
    """The memory of training `root` for one step (see the module docstring for every term).

    `device` decides the autocast dtype of train.dtype "auto" and whether the held-out data counts
    (default: the config's train.device, "auto" resolved as the trainer does). `model`: the config's
    model already built by `meta_model` (built here otherwise)."""
    model = model if model is not None else meta_model(root)
    params = {id(p): p for p in model.parameters()}.values()
    n_params = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    device, e = _resolve(root, device)
    shapes = task_shapes(root)
    d, vocab = root.model.d_model, root.model.vocab_size
    b = max(1, root.train.batch_size // root.train.accumulation)
    length = shapes.train_length if shapes else 0
    eb, el = (shapes.eval_batch, shapes.eval_length) if shapes else (0, 0)
    widths: dict[int, tuple[int, int]] = {}
    train_tokens = eval_tokens = train_scores = eval_scores = train_declared = eval_declared = 0
    for spec, block in zip(root.layout, model.blocks):
        if id(block) not in widths:
            widths[id(block)] = _widths(block, {i: br.config for i, br in enumerate(spec.branches)})
        w, s = widths[id(block)]
        train_tokens += 2 * w + 4 * d + s
        eval_tokens = max(eval_tokens, 2 * w + 4 * d + s)
        train_scores += sum(_attention_scores(br.config, length) for br in spec.branches)
        eval_scores = max(eval_scores, sum(_attention_scores(br.config, el) for br in spec.branches))
        train_declared += _declared(block, length)
        eval_declared = max(eval_declared, _declared(block, el))
    activations = (e * b * length * train_tokens + 2 * e * b * train_scores + 4 * b * train_declared
                   + 12 * b * length * vocab)
    eval_ = e * eb * el * eval_tokens + 2 * e * eb * eval_scores + 4 * eb * eval_declared + 4 * eb * el * vocab
    data = 16 * shapes.heldout_tokens if shapes else 0
    weights, grads, optimizer = 4 * n_params, 4 * trainable, 8 * trainable
    total = weights + optimizer + max(grads + activations, eval_) + (data if device.type == "cpu" else 0)
    return MemoryEstimate(n_params, trainable, weights, grads, optimizer, activations, eval_, data, total, b,
                          length or None, "bfloat16" if e == 2 else "float32")


def free_memory(device: torch.device) -> int | None:
    """Bytes free on `device`: CUDA's mem_get_info; on the CPU MemAvailable (/proc/meminfo), capped by
    this process's address-space limit (RLIMIT_AS); None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] if torch.cuda.is_available() else None
    if device.type != "cpu":
        return None
    available = _meminfo("MemAvailable")
    try:
        import resource  # noqa: PLC0415  (POSIX only)
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            room = soft - (_self_status("VmSize") or 0)
            available = room if available is None else min(available, room)
    except (ImportError, OSError, ValueError):
        pass
    return available


def _meminfo(field: str, path: str = "/proc/meminfo") -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path(path).read_text(), re.M)
    except OSError:
        return None
    return int(match[1]) * 1024 if match else None


def _self_status(field: str) -> int | None:
    return _meminfo(field, "/proc/self/status")


def check_fits(root: RootConfig, device: torch.device, free_bytes: int | None = None) -> MemoryEstimate:
    """The estimate, or a ConfigError (at the key to change, with the numbers) when it exceeds what
    `device` has free (`free_bytes` when given, else `free_memory(device)`; unknown: not checked).
    On CUDA the held-out data is also checked against the host's free memory."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available() and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"{device} asked for, but this machine has {torch.cuda.device_count()} GPU(s) "
                          f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})", key="train.device",
                          file=origin_of("train.device", root.origins))
    est = estimate(root, device)
    free = free_bytes if free_bytes is not None else free_memory(device)
    if free is not None and est.total_bytes > free / SAFETY:
        raise _too_big(root, est, device, free)
    if device.type == "cuda" and free_bytes is None:
        host = free_memory(torch.device("cpu"))
        if host is not None and est.data_bytes > host:
            raise _too_big(root, dataclasses.replace(est, total_bytes=est.data_bytes), torch.device("cpu"), host)
    return est


def _too_big(root: RootConfig, est: MemoryEstimate, device: torch.device, free: int) -> ConfigError:
    parts = {"model": est.weight_bytes + est.grad_bytes + est.optimizer_bytes,
             "train.batch_size": est.activation_bytes, "task.eval_batch_size": est.eval_bytes,
             "task.eval_examples": est.data_bytes if device.type == "cpu" else 0}
    if est.total_bytes == est.data_bytes:
        parts = {"task.eval_examples": est.data_bytes}
    key = max(parts, key=parts.get)
    advice = {
        "model": "use a smaller model: model.d_model, fewer sublayers in model.layout, or a smaller model.vocab_size",
        "train.batch_size": "lower train.batch_size or raise train.accumulation (activations scale with the "
                            "micro-batch), or train on shorter sequences",
        "task.eval_batch_size": "lower task.eval_batch_size or the task's longest held-out length",
        "task.eval_examples": "lower task.eval_examples or hold out fewer or shorter settings",
    }[key]
    f = format_bytes
    length = f" (micro-batch {est.batch_size} x length {est.sequence_length})" if est.sequence_length else ""
    return ConfigError(
        f"training needs about {f(est.total_bytes)} on {device} but {f(free)} is free: "
        f"{est.parameters:,} parameters (weights {f(est.weight_bytes)}, gradients {f(est.grad_bytes)}, AdamW state "
        f"{f(est.optimizer_bytes)}), activations ~{f(est.activation_bytes)}{length}, held-out forward "
        f"~{f(est.eval_bytes)}, held-out data {f(est.data_bytes)}; {advice}",
        key=key, file=origin_of(key, root.origins))
