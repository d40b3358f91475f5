"""The `train:` section of a config: every trainer setting, typed and documented.

    train:
      steps: 2000
      batch_size: 64
      lr: 1.0e-3
      warmup: 100
      eval_every: 200
      early_stop: {metric: eval/all/accuracy, target: 0.99}

Batches are a pure function of (seed, step, batch_size), so `batch_size` is the optimiser's
batch whatever `accumulation` is: a step's batch is split into `accumulation` micro-batches
whose gradients add up to the full batch's (the loss is normalised by the scored tokens of the
whole batch, not per micro-batch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

MAX_LR = 1e6  # a larger learning rate is a typo: AdamW's steps overflow float32 or diverge at once


@dataclass
class EarlyStopConfig:
    metric: str = field(default="eval/all/accuracy", metadata={
        "help": "logged metric to watch, as written in metrics.jsonl (e.g. eval/all/accuracy, eval/val/loss)"})
    target: float | None = field(default=None, metadata={"help": "stop once the metric reaches this (null: never stop early)"})
    mode: Literal["max", "min"] = field(default="max", metadata={"help": "max: stop when metric >= target; min: when <= target"})
    patience: int | None = field(default=None, metadata={
        "help": "also stop after this many evaluations in a row without the metric beating its best by min_delta "
                "(a plateau; null: never). Plateaus can break late: leave it off where they do"})
    min_delta: float = field(default=0.0, metadata={"help": "the least change that counts as an improvement for patience"})

    def __post_init__(self):
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 evaluations or null, got {self.patience}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta}")


@dataclass
class TrainConfig:
    steps: int = field(default=1000, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=64, metadata={"help": "examples per optimiser step (split over `accumulation` micro-batches)"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW decoupled weight decay on matrices"})
    decay_embeddings: bool = field(default=False, metadata={"help": "also decay the embedding (and tied LM head)"})
    decay_norms_and_biases: bool = field(default=False, metadata={"help": "also decay norm weights and biases"})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95], metadata={"help": "AdamW (beta1, beta2)"})
    eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    warmup: int = field(default=0, metadata={"help": "linear warmup steps from 0 to lr"})
    schedule: Literal["cosine", "constant"] = field(default="cosine", metadata={
        "help": "after warmup: cosine decay to min_lr_ratio * lr at the last step, or constant"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final lr as a fraction of lr (cosine schedule)"})
    grad_clip: float | None = field(default=1.0, metadata={"help": "clip the global gradient norm to this (null: no clipping)"})
    accumulation: int = field(default=1, metadata={"help": "micro-batches per optimiser step (must divide batch_size)"})
    eval_every: int = field(default=200, metadata={"help": "evaluate on the held-out sets every N steps (0: only at the end)"})
    eval_batches: int | None = field(default=2, metadata={
        "help": "batches per held-out set in periodic evaluations (null: all); the final evaluation uses all"})
    eval_sets: list[str] | None = field(default=None, metadata={
        "help": "held-out sets of the periodic evaluations, by name (null: all); the final evaluation uses every set"})
    final_eval: bool = field(default=True, metadata={"help": "evaluate on every held-out batch when training ends"})
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig, metadata={"help": "stop once a metric reaches a target"})
    checkpoint_every: int = field(default=500, metadata={"help": "write a checkpoint every N steps (0: only at the end)"})
    log_every: int = field(default=10, metadata={"help": "write training metrics every N steps"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available, else cpu), cpu, cuda, cuda:1, ..."})
    dtype: Literal["auto", "float32", "bfloat16"] = field(default="auto", metadata={
        "help": "autocast dtype of the forward pass (auto: bfloat16 on GPU, float32 on CPU); weights stay float32"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model (inside the CUDA graph too when both are on)"})
    cuda_graph: Literal["auto", True, False] = field(default="auto", metadata={
        "help": "capture the whole training step (forward, loss, backward, clipping, AdamW, schedule) and the "
                "evaluation forward in CUDA graphs: auto = on a CUDA device when every layer is capturable "
                "(the log says which and why); true fails naming the layer that cannot be captured"})
    graph_shapes: Literal["each", "pad"] = field(default="each", metadata={
        "help": "training batches of several lengths (a task mixture) under cuda_graph: one graph per shape "
                "(the same numbers as eager), or pad every batch to the longest training length (one graph "
                "when every example of a setting scores as many positions; padded positions are not scored; "
                "refused with MoE, whose auxiliary losses would count them)"})
    lm_loss: Literal["plain", "fused"] = field(default="plain", metadata={
        "help": "a batch scored at every position (language modelling): plain = F.cross_entropy over the full fp32 "
                "logits; fused = hybrid.kernels.linear_cross_entropy, which never holds them (9.5 GiB at 8 x 2048 "
                "x 50,304; Liger-Kernel's kernel on CUDA when installed)"})
    parallel: Literal["auto", "none", "ddp", "fsdp"] = field(default="auto", metadata={
        "help": "data parallelism under torchrun (hybrid/training/distributed.py): auto = none in one process, ddp "
                "under torchrun, fsdp when weights, gradients and optimiser state would not fit; batch_size stays "
                "the global batch"})
    threads: int | None = field(default=None, metadata={"help": "CPU threads (torch.set_num_threads); null: torch's default"})
    out_dir: str = field(default="runs", metadata={"help": "root of run directories: a run writes to <out_dir>/<name>"})
    run_dir: str | None = field(default=None, metadata={"help": "the run directory itself (overrides out_dir/name)"})
    progress: bool = field(default=True, metadata={
        "help": "a tqdm progress bar where stderr is a terminal; otherwise, or false: plain log lines (one per "
                "evaluation, a training one at most every minute)"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard event files when torch.utils.tensorboard imports"})

    def __post_init__(self):
        positive = {"steps": self.steps, "batch_size": self.batch_size, "accumulation": self.accumulation,
                    "log_every": self.log_every}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"train.{name} must be >= 1, got {value}")
        for name in ("eval_every", "checkpoint_every", "warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size % self.accumulation:
            raise ValueError(f"train.accumulation ({self.accumulation}) must divide train.batch_size ({self.batch_size})")
        if not 0 < self.lr <= MAX_LR:  # past float32's range AdamW's step cannot even be formed
            raise ValueError(f"train.lr must be in (0, {MAX_LR:g}], got {self.lr}")
        if not self.weight_decay >= 0:  # a negative decay grows the weights; nan is refused too
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.betas must be two numbers in [0, 1), got {self.betas}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"train.grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.eval_batches is not None and self.eval_batches < 1:
            raise ValueError(f"train.eval_batches must be >= 1 or null, got {self.eval_batches}")
