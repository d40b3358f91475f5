"""Decoding benchmark: tokens/s and peak memory of one decoding step against context length and batch,
for ~130M-parameter transformer, Mamba and Jamba-style models, with the memory bandwidth each step
reaches; prefill speed (time to first token, parallel against chunked); and our Mamba and Mamba-2 step
kernels against mamba_ssm's Triton `selective_state_update` (the peer), measured in the same run.

    cp -r /work/shared/peers .peers                           # mamba_ssm; its Triton step needs no build
    python3 benchmarks/bench_generate.py --peers .peers/mamba [--out FILE]

Models (d_model 768, vocab 50304, bf16 weights and caches, tied embeddings):
    transformer  "(A F) x12"               A: 12 heads, RoPE; F: SwiGLU, hidden 2048
    mamba        "M x24"                   M: Mamba-1, d_state 16, expand 2 (d_inner 1536)
    mamba2       "M2 x24"                  M2: Mamba-2, d_state 128, headdim 64 (--models to include it)
    jamba        "(M F M F M F A F) x3"    as above, attention without positional encoding (Jamba)

Context. A real prompt of PREFILL tokens is prefilled in one parallel forward; every attention KV cache
is then filled up to the context length with copies of the prefilled keys and values and its length
set to the context (a synthetic fill: a real prefill of 64K tokens at batch 64 needs more memory than
the decode it sets up). Each timed step then attends over all `context` cached positions: the decode
does the real work at that context. Mamba states have a fixed size: the context changes nothing in
their step, which is the point. "ms/step" is the median over STEPS steps (CUDA events) after WARMUP
steps; "tok/s" = batch / step time; "graph" replays the step from a CUDA graph (every layout: KV
caches switch to fixed shapes, each step reading the whole cache under a mask); "peak GiB" is the allocator's peak during the decode steps (weights + caches + step
activations); "cache GiB" the inference state alone; "GB/s" = (weight bytes + state bytes) / step time,
a lower bound on the traffic (activations not counted), and "% peak" its fraction of --peak-bandwidth.

Prefill: one `prefill` call over a random prompt from a fresh state (parallel: the time to first
token; chunked: --prefill-chunks tokens per forward), median of PREFILL_REPS after a warm-up.
"""
from __future__ import annotations

import argparse
import gc
import re
import sys
import time
import types
from functools import partial
from pathlib import Path

import torch

from hybrid.generation import StepDecoder, generate, prefill, state_nbytes
from hybrid.layers.attention import KVCache
from hybrid.model import HybridLM
from hybrid.model_config import ModelConfig

PREFILL, WARMUP, STEPS = 128, 3, 20
PREFILL_REPS = 5  # timed prefills per cell (2 on the CPU)
PREFILL_LENGTHS, PREFILL_CHUNKS = [1024, 4096, 16384], [256, 2048]
CPU_PREFILL_LENGTHS = [256, 512]  # the smoke test's default: a long prefill on the CPU takes minutes
PEAK_BANDWIDTH = {"H200": 4800, "H100": 3350}  # GB/s, HBM, by a part of the device name
CONTEXTS = [1024, 2048, 4096, 8192, 16384, 32768, 65536]
BATCHES = [1, 8, 64]
GiB = 2**30


def model_config(name: str, d_model: int, vocab: int) -> ModelConfig:
    heads = max(1, d_model // 64)
    layers = {"M": {"type": "mamba", "d_state": 16, "d_conv": 4, "expand": 2},
              "M2": {"type": "mamba2", "d_state": 128, "headdim": 64},
              "F": {"type": "mlp", "hidden": 8 * d_model // 3 // 64 * 64 or 64},
              "A": {"type": "attention", "n_heads": heads},
              "N": {"type": "attention", "n_heads": heads, "rope_theta": None}}
    layout = {"transformer": "(A F) x12", "mamba": "M x24", "mamba2": "M2 x24", "jamba": "(M F M F M F N F) x3"}[name]
    return ModelConfig(d_model=d_model, vocab_size=vocab, layers=layers, layout=layout)


def fill_context(state, context: int) -> None:
    """Extend every KV cache from its prefilled positions to `context` positions (synthetic fill), by
    doubling: positions [n, 2n) get a copy of [0, n)."""
    for s in state:
        for cache in (s if isinstance(s, list) else [s]):
            if not isinstance(cache, KVCache):
                continue
            while cache.length < context:
                n = min(cache.length, context - cache.length)
                for t in (cache.k, cache.v):
                    t[:, cache.length:cache.length + n] = t[:, :n]
                cache.length += n


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, steps: int, device: torch.device) -> float:
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / GiB if device.type == "cuda" else float("nan")


@torch.inference_mode()
def decode_point(model, batch: int, context: int, graph: bool) -> dict:
    """Time one decoding step at (batch, context)."""
    device = model.embedding.weight.device
    # room for the eager steps and then the graphed ones (a fixed-shape step past the cache is not checked)
    state = model.init_state(batch, context + 2 * (WARMUP + STEPS) + 4, device=device)
    ids = torch.randint(0, model.config.vocab_size, (batch, min(PREFILL, context)), device=device)
    prefill(model, ids, state)
    fill_context(state, context)
    tokens = torch.randint(0, model.config.vocab_size, (batch,), device=device)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() - state_nbytes(state) - model.num_parameters() * 2
        if base > 0.05 * GiB:  # memory held from elsewhere would inflate the peak column
            print(f"note: {base / GiB:.2f} GiB allocated besides the weights and this point's caches", flush=True)
    eager = StepDecoder(model, state, batch)
    for _ in range(WARMUP):
        eager(tokens)
    row = {"ms": median_ms(lambda: eager(tokens), STEPS, device), "cache": state_nbytes(state) / GiB,
           "peak": peak_gib(device)}
    if graph and device.type == "cuda":
        step = StepDecoder(model, state, batch, cuda_graph=True)
        for _ in range(WARMUP):
            step(tokens)
        row["graph_ms"] = median_ms(lambda: step(tokens), STEPS, device)
    return row


def bandwidth_cells(nbytes: float, ms: float, peak: float | None) -> str:
    """Achieved GB/s reading `nbytes` once in `ms`, and its fraction of the peak (GB/s; None: not known)."""
    gbs = nbytes / ms / 1e6
    return f"{gbs:,.0f} | " + (f"{gbs / peak:.0%}" if peak else "-")


def decode_rows(name: str, model, contexts: list[int], batches: list[int], results: dict,
                peak: float | None = None) -> list[str]:
    params = f"{model.num_parameters() / 1e6:.0f}M"
    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights once
    lines = []
    for batch in batches:
        for context in contexts:
            gc.collect()  # the previous point's caches must be gone before the peak is reset
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            try:
                r = decode_point(model, batch, context, graph=True)
            except torch.OutOfMemoryError:
                r = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if r is None:
                lines.append(f"| {name} | {params} | {batch} | {context} | OOM | | | | | | | |")
            else:
                results[name, batch, context] = r
                g = (f"{r['graph_ms']:.3f} | {batch / r['graph_ms'] * 1e3:,.0f}" if "graph_ms" in r else "- | -")
                bw = bandwidth_cells(weights + r["cache"] * GiB, r.get("graph_ms", r["ms"]), peak)
                lines.append(f"| {name} | {params} | {batch} | {context} | {r['ms']:.3f} | "
                             f"{batch / r['ms'] * 1e3:,.0f} | {g} | {r['cache']:.3f} | {r['peak']:.2f} | {bw} |")
            print(lines[-1], flush=True)
    return lines


def load_peer(peers: str | None):
    """mamba_ssm's Triton `selective_state_update` from the peer checkout, or None and why not."""
    peer, why = None, "not given (--peers)"
    if peers:
        sys.path.insert(0, peers)
        try:
            import einops  # noqa: F401, PLC0415
        except ImportError:  # the peer imports einops at the top but its step does not use it
            stub = types.ModuleType("einops")
            stub.rearrange = stub.repeat = lambda *a, **k: (_ for _ in ()).throw(NotImplementedError("einops stub"))
            sys.modules["einops"] = stub
        try:
            from mamba_ssm.ops.triton.selective_state_update import selective_state_update as peer  # noqa: PLC0415
        except Exception as err:  # report, do not fail the whole benchmark
            why = f"import failed: {type(err).__name__}: {err}"
    return peer, why


def step_kernel_table(peer, why: str, batches: list[int], dim: int = 1536, dstate: int = 16) -> list[str]:
    """Our Triton step kernel against mamba_ssm's, at the Mamba block's call (bf16 x, dt, z, B, C; fp32 state)."""
    import triton  # noqa: PLC0415

    from hybrid.kernels.selective_scan import selective_state_update  # noqa: PLC0415

    lines = ["| batch | dim | state | ours µs | mamba_ssm µs | ours µs (graph) | mamba_ssm µs (graph) | ours/peer (graph) |",
             "|---|---|---|---|---|---|---|---|"]
    for batch in batches:
        dev, bf = "cuda", torch.bfloat16
        state = torch.randn(batch, dim, dstate, device=dev) * 0.1
        x, dt, z = (torch.randn(batch, dim, device=dev, dtype=bf) for _ in range(3))
        A = -(0.5 + torch.rand(dim, dstate, device=dev))
        B, C = (torch.randn(batch, dstate, device=dev, dtype=bf) for _ in range(2))
        D, bias = torch.randn(dim, device=dev), torch.randn(dim, device=dev) * 0.1

        def ours():
            selective_state_update(state, x, dt, A, B, C, D, z=z, dt_bias=bias, dt_softplus=True, backend="triton")

        def theirs():
            peer(state, x, dt, A, B, C, D, z=z, dt_bias=bias, dt_softplus=True)

        row = [triton.testing.do_bench(ours, return_mode="median") * 1e3]
        row += [triton.testing.do_bench(theirs, return_mode="median") * 1e3] if peer else [float("nan")]
        row += [triton.testing.do_bench_cudagraph(ours, return_mode="median") * 1e3]
        row += [triton.testing.do_bench_cudagraph(theirs, return_mode="median") * 1e3] if peer else [float("nan")]
        lines.append(f"| {batch} | {dim} | {dstate} | " + " | ".join(f"{v:.1f}" for v in row)
                     + f" | {row[2] / row[3]:.2f} |")
        print(lines[-1], flush=True)
    if peer is None:
        lines.append(f"\nmamba_ssm peer unavailable: {why}")
    return lines


def ssd_step_inputs(batch: int, heads: int, headdim: int, dstate: int, groups: int, dev: str = "cuda"):
    """A Mamba-2 step's inputs: the state, our call's arguments, and the peer's (per-head dt, A, D and
    dt_bias expanded with stride 0 over headdim and d_state, as mamba_ssm's Mamba2.step passes them)."""
    bf = torch.bfloat16
    state = torch.randn(batch, heads, headdim, dstate, device=dev) * 0.1
    x, z = (torch.randn(batch, heads, headdim, device=dev, dtype=bf) for _ in range(2))
    dt = torch.randn(batch, heads, device=dev, dtype=bf)
    A = -(0.5 + torch.rand(heads, device=dev))
    B, C = (torch.randn(batch, groups, dstate, device=dev, dtype=bf) for _ in range(2))
    D, bias = torch.randn(heads, device=dev), torch.randn(heads, device=dev) * 0.1
    ours = {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z, "dt_bias": bias}
    theirs = {**ours, "dt": dt[:, :, None].expand(-1, -1, headdim), "A": A[:, None, None].expand(-1, headdim, dstate),
              "D": D[:, None].expand(-1, headdim), "dt_bias": bias[:, None].expand(-1, headdim)}
    return state, ours, theirs


def same_step(ours, peer, state: torch.Tensor, mine: dict, theirs: dict) -> str:
    """Run both steps once from copies of `state`; "ok" when the new states and outputs agree to bf16
    tolerance (2e-2 relative to each tensor's largest value), else what differs."""
    s1, s2 = state.clone(), state.clone()
    y1, y2 = ours(s1, **mine), peer(s2, **theirs, dt_softplus=True)
    bad = [what for what, a, b in (("state", s1, s2), ("output", y1.float(), y2.float()))
           if not torch.allclose(a, b, rtol=2e-2, atol=2e-2 * b.abs().max().item())]
    return "ok" if not bad else "MISMATCH: " + ", ".join(bad)


def ssd_step_kernel_table(peer, why: str, batches: list[int], heads: int = 24, headdim: int = 64,
                          dstate: int = 128, groups: int = 1) -> list[str]:
    """Our Mamba-2 step (`ssd_state_update`) against mamba_ssm's multi-head `selective_state_update`,
    at the bench's Mamba-2 layer (d_inner 1536 = 24 heads x 64, d_state 128, 1 group)."""
    import triton  # noqa: PLC0415

    from hybrid.kernels.ssd.api import ssd_state_update  # noqa: PLC0415

    def ours(state, **args):
        return ssd_state_update(state, **args, dt_softplus=True, backend="triton")

    lines = [("| batch | heads | headdim | state | matches peer | ours µs | mamba_ssm µs | ours µs (graph) "
              "| mamba_ssm µs (graph) | ours/peer (graph) |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for batch in batches:
        state, mine, theirs = ssd_step_inputs(batch, heads, headdim, dstate, groups)
        check = same_step(ours, peer, state, mine, theirs) if peer else "-"
        cells = f"| {batch} | {heads} | {headdim} | {dstate} | {check} | "
        if check.startswith("MISMATCH"):  # a wrong step is not worth timing
            lines.append(cells + "| | | | |")
        else:
            fns = (partial(ours, state, **mine), partial(peer, state, **theirs, dt_softplus=True) if peer else None)
            row = [bench(f, return_mode="median") * 1e3 if f else float("nan")  # ours, peer; then both graphed
                   for bench in (triton.testing.do_bench, triton.testing.do_bench_cudagraph) for f in fns]
            lines.append(cells + " | ".join(f"{v:.1f}" for v in row) + f" | {row[2] / row[3]:.2f} |")
        print(lines[-1], flush=True)
    if peer is None:
        lines.append(f"\nmamba_ssm peer unavailable: {why}")
    return lines


def prefill_ms(model, ids: torch.Tensor, chunk: int | None, reps: int) -> float | None:
    """Median ms of one `prefill` of ids (batch, length) from a fresh state (built outside the timed
    region), over `reps` runs after a warm-up; None when it runs out of memory."""
    device = ids.device
    times, state = [], None
    try:
        for _ in range(reps + 1):
            state = model.init_state(ids.shape[0], ids.shape[1] + 8, device=device)
            sync(device)
            t0 = time.perf_counter()
            prefill(model, ids, state, chunk_size=chunk)  # returns the last position's logits
            sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
            state = None
    except torch.OutOfMemoryError:
        return None
    finally:
        state = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return sorted(times[1:])[reps // 2]


@torch.inference_mode()
def prefill_rows(name: str, model, lengths: list[int], batches: list[int], chunks: list[int]) -> list[str]:
    """Time to first token (one parallel prefill) and chunked prefill, in prompt tokens/s."""
    device = model.embedding.weight.device
    reps = PREFILL_REPS if device.type == "cuda" else 2
    lines = []
    for batch in batches:
        for length in lengths:
            ids = torch.randint(0, model.config.vocab_size, (batch, length), device=device)
            ms = [prefill_ms(model, ids, chunk, reps) for chunk in [None, *chunks]]
            cells = [f"{ms[0]:.1f}" if ms[0] else "OOM"]
            for i, t in enumerate(ms):
                cells.append(f"{batch * length / t * 1e3:,.0f}" if t else "OOM")
                if i:  # chunked tok/s over parallel tok/s
                    cells.append(f"{ms[0] / t:.2f}" if t and ms[0] else "-")
            lines.append(f"| {name} | {batch} | {length} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    return lines


@torch.inference_mode()
def generate_rows(name: str, model, batches: list[int], new_tokens: int = 128) -> list[str]:
    """End-to-end `generate` (a prompt of PREFILL tokens, temperature 1, top_k 50) in new tokens/s."""
    device = model.embedding.weight.device
    lines = []
    for batch in batches:
        prompt = torch.randint(0, model.config.vocab_size, (batch, PREFILL), device=device)
        row = []
        for graph in ([False, True] if device.type == "cuda" else [False]):
            generate(model, prompt, 4, temperature=1.0, top_k=50, seed=0, cuda_graph=graph)  # warm-up
            sync(device)
            t0 = time.perf_counter()
            generate(model, prompt, new_tokens, temperature=1.0, top_k=50, seed=0, cuda_graph=graph)
            sync(device)
            row.append(f"{batch * new_tokens / (time.perf_counter() - t0):,.0f}")
        lines.append(f"| {name} | {batch} | {new_tokens} | {row[0]} | {row[1] if len(row) > 1 else '-'} |")
        print(lines[-1], flush=True)
    return lines


def device_slug(name: str) -> str:
    match = re.search(r"\b([A-Z]\d{2,4})\b", name)
    return (match.group(1) if match else re.sub(r"\W+", "_", name)).lower()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="transformer,mamba,jamba")
    p.add_argument("--contexts", default=",".join(map(str, CONTEXTS)))
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--peers", default=None, help="path of the mamba_ssm peer (e.g. .peers/mamba)")
    p.add_argument("--device", default="cuda", help="cuda (the benchmark); cpu only smoke-tests the script")
    p.add_argument("--out", default=None, help="markdown file (default benchmarks/results/generate_<device>.md)")
    p.add_argument("--peak-bandwidth", type=float, default=None,
                   help="the device's peak memory bandwidth in GB/s (default: 4800 on an H200, 3350 on an H100)")
    p.add_argument("--prefill-lengths", default=None, help="prompt lengths of the prefill table (default "
                   f"{','.join(map(str, PREFILL_LENGTHS))}; {','.join(map(str, CPU_PREFILL_LENGTHS))} on the CPU)")
    p.add_argument("--prefill-chunks", default=",".join(map(str, PREFILL_CHUNKS)),
                   help="chunk sizes (tokens per forward) of the chunked prefills")
    p.add_argument("--prefill-batch", type=int, default=1, help="a batch timed besides batch 1 in the prefill table")
    return p.parse_args()


def bandwidth_note(peak: float | None) -> str:
    peak_text = (f"\"% peak\" of {peak:,.0f} GB/s" if peak
                 else "no peak bandwidth known for this device (--peak-bandwidth): GB/s only")
    return (f"Bandwidth: bytes read per step = the weights (every parameter once, in the model's dtype) + the "
            f"inference state (every cache and state read once: a fixed-shape KV step reads the whole preallocated "
            f"cache, context + {2 * (WARMUP + STEPS) + 4} positions); activations are not counted, so GB/s is a "
            f"lower bound on the traffic. From the graphed step time (eager where there is no graph); {peak_text}.\n")


def prefill_section(lengths: list[int], batches: list[int], chunks: list[int], reps: int) -> list[str]:
    head = ["\n## Prefill: time to first token and chunked prefill (prompt tokens / s)\n",
            (f"One `prefill(model, ids, state)` over a random prompt from a fresh state (`init_state(batch, "
             f"length + 8)`, built outside the timed region), returning the last position's logits: \"TTFT ms\" is "
             f"one parallel forward over the whole prompt; \"chunk C\" runs C tokens per forward (C >= the prompt: "
             f"one forward); \"/ par.\" = chunked over parallel tok/s. Median of {reps} after a warm-up, "
             f"CUDA-synchronised; prompts {', '.join(map(str, lengths))} at batch "
             f"{', '.join(map(str, batches))}.\n")]
    cols = "".join(f" chunk {c} tok/s | chunk {c} / par. |" for c in chunks)
    return head + ["| model | batch | prompt | TTFT ms | parallel tok/s |" + cols, "|---" * (5 + 2 * len(chunks)) + "|"]


def kernel_sections(peers: str | None, batches: list[int]) -> list[str]:
    """The step-kernel tables against the peer (CUDA only): Mamba, then Mamba-2."""
    peer, why = load_peer(peers)
    out = ["\n## Step kernel: ours (Triton) against mamba_ssm's Triton selective_state_update\n",
           ("Median µs from triton.testing.do_bench (with the Python call) and do_bench_cudagraph (kernel alone); "
            "bf16 x, dt, z, B, C; fp32 state, A, D, dt_bias; softplus on.\n")]
    print("\n".join(out), flush=True)
    out += step_kernel_table(peer, why, [1, 8, 64])
    head = ["\n## Mamba-2 step kernel: ours (Triton) against mamba_ssm's Triton selective_state_update\n",
            ("The bench's Mamba-2 layer: 24 heads x headdim 64 (d_inner 1536), d_state 128, 1 group. Median µs as "
            "above; fp32 state (batch, heads, headdim, d_state); bf16 x, z (batch, heads, headdim), dt (batch, heads), "
            "B, C (batch, groups, d_state); fp32 A, D, dt_bias per head, which the peer gets expanded over headdim "
            "with stride 0 (as mamba_ssm's Mamba2.step); softplus on. \"matches peer\": the updated states and "
            "outputs of one step agree to 2e-2 relative (checked per batch before timing; a mismatch is not timed).\n")]
    print("\n".join(head), flush=True)
    return out + head + ssd_step_kernel_table(peer, why, batches)


def targets(results: dict, contexts: list[int], batches: list[int]) -> list[str]:
    """The decoding issue's targets, from this run's rows: like against like (graphed against graphed)."""
    summary = ["\n## Targets\n"]
    for context in (8192, 32768):
        t, m = results.get(("transformer", 64, context)), results.get(("mamba", 64, context))
        if t and m and "graph_ms" in t and "graph_ms" in m:
            summary.append(f"- mamba / transformer at batch 64, context {context}, both graphed: "
                           f"{t['graph_ms'] / m['graph_ms']:.1f}x (eager: {t['ms'] / m['ms']:.1f}x; target >= 5x at 32K)")
        elif m:
            summary.append(f"- mamba / transformer at batch 64, context {context}: no transformer row (out of memory "
                           f"or not run)")
    graphed_b1 = {n: 1e3 / r["graph_ms"] for (n, b, _), r in results.items() if b == 1 and "graph_ms" in r}
    if graphed_b1:
        slowest = min(graphed_b1, key=graphed_b1.get)
        summary.append(f"- batch 1, graphed: slowest model {slowest} at {graphed_b1[slowest]:,.0f} tok/s (target >= 500)")
    for batch in batches:
        peaks = [r["peak"] for (n, b, _), r in results.items() if n == "mamba" and b == batch]
        if peaks:
            summary.append(f"- mamba decode peak memory at batch {batch}, contexts {contexts[0]}..{contexts[-1]}: "
                           f"{min(peaks):.3f} to {max(peaks):.3f} GiB (target: flat)")
    return summary


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_generate needs a CUDA GPU (or --device cpu for a smoke test)")
    contexts = [int(c) for c in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    names = args.models.split(",")
    lengths = PREFILL_LENGTHS if device.type == "cuda" else CPU_PREFILL_LENGTHS
    lengths = [int(n) for n in args.prefill_lengths.split(",")] if args.prefill_lengths else lengths
    chunks = [int(c) for c in args.prefill_chunks.split(",")]
    prefill_batches = sorted({1, args.prefill_batch})
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_bandwidth or next((v for k, v in PEAK_BANDWIDTH.items() if k in device_name), None)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    head = (f"# Decoding: {device_name}, torch {torch.__version__}, {str(dtype).removeprefix('torch.')} "
            f"weights and caches, d_model {args.d_model}, vocab {args.vocab}\n\n"
            f"Context: a real prefill of {PREFILL} tokens, then every KV cache filled synthetically to the "
            f"context length (each step attends over all of it); Mamba states do not depend on the context. "
            f"Median of {STEPS} steps after {WARMUP}. Models are built and measured one at a time, so the "
            f"peak holds one model's weights.\n")
    print(head + "\n" + bandwidth_note(peak), flush=True)
    table = [("| model | params | batch | context | ms/step | tok/s | graph ms/step | graph tok/s | cache GiB "
             "| peak GiB | GB/s | % peak |"), "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    e2e = ["| model | batch | new tokens | eager tok/s | graph tok/s |", "|---|---|---|---|---|"]
    pre = prefill_section(lengths, prefill_batches, chunks, PREFILL_REPS if device.type == "cuda" else 2)
    print("\n".join(table), flush=True)
    results: dict = {}
    for name in names:
        torch.manual_seed(0)
        model = HybridLM(model_config(name, args.d_model, args.vocab)).to(device, dtype).eval()
        table += decode_rows(name, model, contexts, batches, results, peak)
        e2e += generate_rows(name, model, sorted({1, max(batches)}))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        pre += prefill_rows(name, model, lengths, prefill_batches, chunks)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = [head, "## Decoding step: throughput and memory against context and batch\n", bandwidth_note(peak), *table,
           "\n## generate() end to end (prompt 128 tokens, temperature 1, top_k 50; new tokens / s)\n", *e2e, *pre]
    if device.type == "cuda":
        out += kernel_sections(args.peers, batches)
    summary = targets(results, contexts, batches)
    print("\n".join(summary), flush=True)
    out += summary
    path = Path(args.out or Path(__file__).parent / "results" / f"generate_{device_slug(device_name)}.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
