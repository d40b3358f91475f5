"""Inference for any layout: caches from declared state kinds, prefill, one-token steps, sampling.

Caches
------
There are no per-model cache classes. `HybridLM.init_state(batch, max_length, device, dtype)` asks
each residual sublayer for a fresh state, and each layer builds the state its registered kind
(`hybrid.registry`) promises:

    none       MLP, MoE: nothing; forward(x, state) ignores `state`
    kv         attention: `KVCache`, keys and values of every position, (batch, max_length, kv_heads, head_dim):
               memory and step time grow with the context
    kv_window  sliding-window attention: `KVWindowCache`, a ring buffer of the last `window` positions
    recurrent  Mamba: `MambaState`, the last d_conv - 1 conv inputs (batch, d_inner, d_conv - 1) and the SSM
               state (batch, d_inner, d_state) fp32; S4D: its diagonal state. Constant memory and time per token

A sublayer used by a shared block keeps one state per use (its weights are shared, its history is
not); a parallel sublayer keeps a list with one state per branch.

Contract for a third-party layer
--------------------------------
A layer registered with `hybrid.registry.register_layer` gets caching and generation by:

1. declaring its kind: `@register_layer("mine", config=MineConfig, state="recurrent")`, or a function of
   its config returning the kind (attention is "kv_window" only when a window is set);
2. implementing `init_state(batch_size, max_length, device=None, dtype=None)`, returning any object that
   holds tensors (a dataclass reads best); `max_length` bounds the positions the state will see (a
   recurrent layer ignores it); `dtype=None` means the layer's parameter dtype;
3. implementing `forward(x, state)`, x (batch, length, d_model): with a state, x continues the
   sequence the state has seen, and the layer updates the state in place. Any length >= 1 must work
   (a whole prompt from a fresh state, a chunk of one, a single token), and the outputs must match
   one stateless forward over the whole sequence up to rounding: that is what the tests check for
   every registered layer. A fast path for length 1 is the layer's business (Mamba calls its step kernel).

Every row of a batch sits at the same position (see "prompts of different lengths" below), so a state
may keep one position counter for the whole batch. For CUDA-graph decoding (`cuda_graph=True`), a
step must also have static shapes and keep everything that changes in tensors written in place
(`copy_`, `mul_`, kernels writing into them): no reassigned attributes, no Python counters.
Recurrent layers written that way qualify. A state whose shapes change (a KV cache's growing key
range) qualifies by implementing `make_static()`, after which its one-token steps have fixed shapes;
attention's caches do (the length becomes a device scalar, each step reads the whole preallocated
cache under a mask of the filled slots). Graphs are refused, naming the sublayer, for any other
state. The generator never looks inside a state except to list its tensors (memory accounting,
restoring a state after a graph's warm-up: `snapshot_steps(steps)`, where a state defines it, saves only
what that many steps write) and to call `make_static`.

Prompts of different lengths
----------------------------
Prompts are a list of 1-D tensors. The common prefix length L_min = min_i L_i is prefilled in one
parallel forward (or in chunks); then every step feeds one token per row at the same position p:
row i's own prompt token while p < L_i, else the token sampled from its logits at p - 1. Shorter
prompts start sampling while longer ones still read their prompts, positions stay aligned, and no
padding ever passes through a recurrent state or an attention cache: each row computes exactly what
it would alone. Prompts far apart in length cost steps (L_max - L_min one-token steps); sort and
batch similar lengths together when that matters.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from hybrid.registry import LAYERS

log = logging.getLogger(__name__)

Prompt = Tensor | Sequence[int]
Callback = Callable[[list], None]


# ---------------------------------------------------------------------------------------------------
# States: what the layers declared, and what they hold


def state_kinds(model) -> list[list[str]]:
    """The declared state kind of every branch of every sublayer, e.g. [["recurrent"], ["none"], ...]."""
    return [[LAYERS.get(b.type).state_kind(b.config) for b in spec.branches] for spec in model.layout]


def check_cacheable(model) -> None:
    """Raise if a layer declares a state kind but cannot build the state (it would decode wrongly:
    without a state every step would see a fresh one-token sequence)."""
    for spec, block in zip(model.layout, model.blocks):
        for branch, module in zip(spec.branches, block.branches):
            kind = LAYERS.get(branch.type).state_kind(branch.config)
            if kind != "none" and not callable(getattr(module, "init_state", None)):
                raise TypeError(
                    f"sublayer {spec.index} ({spec.alias!r}): layer type {branch.type!r} declares inference state "
                    f"{kind!r}, but {type(module).__qualname__} has no init_state(batch_size, max_length, device, "
                    f"dtype). Implement it, or register the layer with state='none' if it keeps no history "
                    f"(see the contract in hybrid/generation.py)")


def make_static(model, state: list[Any]) -> None:
    """Switch every growing cache in `state` to fixed-shape one-token steps (CUDA-graph decoding), or
    raise naming the first sublayer whose state has no such mode."""
    for spec, block_state in zip(model.layout, state):
        branch_states = block_state if len(spec.branches) > 1 else [block_state]
        for branch, branch_state in zip(spec.branches, branch_states):
            kind = LAYERS.get(branch.type).state_kind(branch.config)
            if kind in ("none", "recurrent"):
                continue
            if not callable(getattr(branch_state, "make_static", None)):
                raise ValueError(
                    f"cuda_graph=True: sublayer {spec.index} ({spec.alias!r}, layer type {branch.type!r}) keeps a "
                    f"{kind!r} state whose shape changes from step to step ({type(branch_state).__qualname__} has "
                    f"no make_static()); decode this layout without a CUDA graph")
            branch_state.make_static()


def _walk(state: Any, visit: Callable[[Any], bool]) -> None:
    """Call `visit` on every object inside a model state (lists, tuples, dicts, dataclass fields, plain
    objects' attributes), each once; where it returns True the walk does not look inside that object."""
    seen: set[int] = set()

    def walk(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if visit(obj) or isinstance(obj, Tensor):
            return
        if isinstance(obj, (list, tuple)):
            items = list(obj)
        elif isinstance(obj, dict):
            items = list(obj.values())
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            items = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            items = list(vars(obj).values())
        else:
            items = []
        for item in items:
            walk(item)

    walk(state)


def state_tensors(state: Any) -> list[Tensor]:
    """Every tensor inside a model state (lists, tuples, dicts, dataclasses, plain objects), each once."""
    found: list[Tensor] = []

    def visit(obj: Any) -> bool:
        if isinstance(obj, Tensor):
            found.append(obj)
        return False  # _walk itself does not look inside a tensor

    _walk(state, visit)
    return found


def snapshot(state: Any, steps: int) -> Callable[[], None]:
    """A function that puts `state` back as it is now after at most `steps` one-token steps (a CUDA
    graph's warm-up). An object with `snapshot_steps(steps)` (the fixed-shape KV caches) saves only
    what those steps write; every other tensor is copied whole. So a 70 GiB cache is not cloned."""
    restores: list[Callable[[], None]] = []

    def visit(obj: Any) -> bool:
        if callable(getattr(obj, "snapshot_steps", None)):
            restores.append(obj.snapshot_steps(steps))
            return True
        if isinstance(obj, Tensor):
            saved = obj.clone()
            restores.append(lambda t=obj, value=saved: t.copy_(value))
        return False

    _walk(state, visit)

    def restore() -> None:
        for undo in restores:
            undo()
    return restore


def state_nbytes(state: Any) -> int:
    """Bytes held by a model state (for memory accounting: a recurrent state does not grow)."""
    return sum(t.numel() * t.element_size() for t in state_tensors(state))


# ---------------------------------------------------------------------------------------------------
# Prefill and the decoding step


def prefill(model, input_ids: Tensor, state: list[Any], chunk_size: int | None = None) -> Tensor:
    """Run input_ids (batch, length) through the model from `state`, updating it in place; return the
    logits of the last position (batch, vocab). With `chunk_size`, the prompt goes through in chunks
    of that many tokens (bounding activation memory; same result up to rounding)."""
    length = input_ids.shape[1]
    if length == 0:
        raise ValueError("prefill: input_ids has no tokens")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"prefill: chunk_size must be a positive number of tokens or None, got {chunk_size}")
    step = length if chunk_size is None else chunk_size
    for start in range(0, length, step):
        logits = model(input_ids[:, start:start + step], state, num_last_tokens=1)[:, -1]  # (batch, vocab)
    return logits


class StepDecoder:
    """One-token forward over a state: tokens (batch,) -> logits (batch, vocab), state updated in place.

    With `cuda_graph=True` the step is captured once in a CUDA graph and replayed, removing the
    per-kernel launch cost that dominates small-batch decoding. Capture needs every state to keep fixed
    shapes: "none" and "recurrent" ones do, and KV caches switch to it (`make_static`: the length in a
    device tensor, each step attending over the whole preallocated cache with a mask). The returned
    logits are a static buffer then: read them before the next call.
    """

    def __init__(self, model, state: list[Any], batch_size: int, cuda_graph: bool = False):
        self.model, self.state = model, state
        self.graph = None
        if cuda_graph:
            self._capture(batch_size)

    def _capture(self, batch_size: int) -> None:
        device = self.model.embedding.weight.device
        if device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the model on a CUDA device; it is on {device}")
        make_static(self.model, self.state)  # KV caches: a device position and masked full-cache steps
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        warmup = 2
        restore = snapshot(self.state, warmup)  # warm-up steps advance the state; it is put back below
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # compile kernels and allocate workspaces outside the capture
            for _ in range(warmup):
                self.model(self.tokens, self.state)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.model(self.tokens, self.state)[:, -1]  # (batch, vocab)
        restore()

    def __call__(self, tokens: Tensor) -> Tensor:
        if self.graph is None:
            return self.model(tokens[:, None], self.state)[:, -1]
        self.tokens.copy_(tokens[:, None])
        self.graph.replay()
        return self.logits


# ---------------------------------------------------------------------------------------------------
# Sampling


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row from logits (batch, vocab) -> (batch,) int64.

    temperature 0 (or top_k 1) is greedy. top_k keeps the k largest logits; top_p keeps the smallest
    set of tokens whose probability reaches top_p (nucleus sampling, Holtzman et al. 2020), the most
    likely token always included. The draw is argmax_i p_i / E_i with E_i ~ Exp(1), which picks i with
    probability p_i (the exponential race) without a host synchronisation.
    """
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (batch, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    race = torch.empty_like(probs).exponential_(generator=generator).clamp_(min=torch.finfo(probs.dtype).tiny)
    return (probs / race).argmax(dim=-1)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int) -> None:
    """Raise ValueError, naming the setting, when a sampling setting is out of range."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")


# ---------------------------------------------------------------------------------------------------
# generate


def _as_prompts(prompt_ids: Any, vocab_size: int, device: torch.device) -> tuple[list[Tensor], str]:
    """Prompts as a list of 1-D int64 tensors on `device`, and the input form ("1d", "2d" or "list")."""
    if isinstance(prompt_ids, Tensor):
        if prompt_ids.dim() == 1:
            prompts, form = [prompt_ids], "1d"
        elif prompt_ids.dim() == 2:
            prompts, form = list(prompt_ids), "2d"
        else:
            raise ValueError(f"prompt_ids: a tensor prompt must be (length,) or (batch, length), "
                             f"got shape {tuple(prompt_ids.shape)}")
    elif isinstance(prompt_ids, (list, tuple)) and prompt_ids and all(isinstance(t, int) for t in prompt_ids):
        prompts, form = [torch.tensor(prompt_ids)], "1d"
    elif isinstance(prompt_ids, (list, tuple)) and prompt_ids:
        prompts, form = [torch.as_tensor(p) for p in prompt_ids], "list"
    else:
        raise ValueError("prompt_ids must be a 1-D tensor, a (batch, length) tensor, or a non-empty list of "
                         "1-D tensors / lists of token ids")
    out = []
    for i, p in enumerate(prompts):
        if p.dim() != 1 or p.numel() == 0 or p.dtype.is_floating_point:
            raise ValueError(f"prompt {i}: need a non-empty 1-D sequence of integer token ids, got "
                             f"shape {tuple(p.shape)} {p.dtype}")
        low, high = int(p.min()), int(p.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"prompt {i}: token ids must lie in [0, {vocab_size}) (the model's vocab_size); "
                             f"found {low if low < 0 else high}")
        out.append(p.to(device=device, dtype=torch.long))
    return out, form


@torch.inference_mode()
def generate(model, prompt_ids: Any, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, eos_id: int | None = None, *, seed: int | None = None,
             generator: torch.Generator | None = None, callback: Callback | None = None,
             prefill_chunk: int | None = None, cuda_graph: bool = False) -> Any:
    """Continue each prompt by up to `max_new_tokens` tokens, decoding through the inference caches.

    prompt_ids: a 1-D tensor or list of ids (one prompt); a (batch, length) tensor (equal lengths);
        or a list of 1-D tensors (prompts of different lengths, exact without padding: module docstring).
    temperature, top_k, top_p: sampling (temperature 0: greedy); see `sample_next`.
    eos_id: a row stops after emitting it (the eos is kept in the output).
    seed / generator: the random stream of the draws (a seed makes runs repeatable; neither: torch's global one).
    callback: called after every step with a list holding, per prompt, the token it emitted at this
        step or None (still reading its prompt, or finished): streaming output.
    prefill_chunk: prefill in chunks of this many tokens. cuda_graph: replay the decoding step from a
        CUDA graph (on a GPU, for layouts whose states have fixed shapes; see `StepDecoder`).

    Returns the prompts followed by their new tokens, in the input's form: a 1-D tensor; a
    (batch, length + max_new_tokens) tensor, rows that stopped early filled with eos_id; or a list of 1-D tensors.
    """
    check_sampling(temperature, top_k, top_p, max_new_tokens)
    check_cacheable(model)
    device = model.embedding.weight.device
    prompts, form = _as_prompts(prompt_ids, model.config.vocab_size, device)
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    lengths = [p.numel() for p in prompts]
    batch, shortest, longest = len(prompts), min(lengths), max(lengths)
    total = longest + max_new_tokens
    fill = eos_id if eos_id is not None else 0
    seqs = torch.full((batch, total), fill, dtype=torch.long, device=device)  # prompt, then new tokens
    for i, p in enumerate(prompts):
        seqs[i, :p.numel()] = p
    start = torch.tensor(lengths, device=device)  # (batch,) position of each row's first new token
    end = start + max_new_tokens                   # one past its last
    last = max(lengths) + max_new_tokens - 1       # the last position any row may fill

    was_training = model.training
    model.eval()
    try:
        state = model.init_state(batch, total, device=device)
        logits = prefill(model, seqs[:, :shortest], state, prefill_chunk)  # logits at position shortest - 1
        step = StepDecoder(model, state, batch, cuda_graph=cuda_graph)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        for pos in range(shortest, last + 1):
            drawn = sample_next(logits, temperature, top_k, top_p, generator)  # (batch,)
            emit = (pos >= start) & (pos < end) & ~finished
            token = torch.where(pos < start, seqs[:, pos], torch.where(emit, drawn, fill))
            seqs[:, pos] = token
            if eos_id is not None:
                finished |= emit & (token == eos_id)
            if callback is not None:
                callback([t if e else None for t, e in zip(token.tolist(), emit.tolist())])
            if pos == last or (eos_id is not None and bool((finished | (pos + 1 >= end)).all())):
                break
            logits = step(token)
    finally:
        model.train(was_training)

    if form == "2d":
        return seqs if pos == last else seqs[:, :pos + 1].clone()
    rows = seqs.cpu()
    out = []
    for i, n in enumerate(lengths):
        new = rows[i, n:n + max_new_tokens]
        stop = (new == eos_id).nonzero() if eos_id is not None else new[:0]
        keep = int(stop[0]) + 1 if len(stop) else min(max_new_tokens, pos + 1 - n)
        out.append(seqs[i, :n + keep])
    return out[0] if form == "1d" else out
