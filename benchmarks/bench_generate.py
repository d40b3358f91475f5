"""Decoding benchmark: tokens/s and peak memory of one decoding step against context length and batch,
for ~130M-parameter transformer, Mamba and Jamba-style models; and our Mamba step kernel against
mamba_ssm's Triton `selective_state_update` (the peer), measured in the same run.

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
activations); "cache GiB" the inference state alone.
"""
from __future__ import annotations

import argparse
import gc
import re
import sys
import time
import types
from pathlib import Path

import torch

from hybrid.generation import StepDecoder, generate, prefill, state_nbytes
from hybrid.layers.attention import KVCache
from hybrid.model import HybridLM
from hybrid.model_config import ModelConfig

PREFILL, WARMUP, STEPS = 128, 3, 20
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


def decode_rows(name: str, model, contexts: list[int], batches: list[int], results: dict) -> list[str]:
    params = f"{model.num_parameters() / 1e6:.0f}M"
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
                lines.append(f"| {name} | {params} | {batch} | {context} | OOM | | | | | |")
            else:
                results[name, batch, context] = r
                g = (f"{r['graph_ms']:.3f} | {batch / r['graph_ms'] * 1e3:,.0f}" if "graph_ms" in r else "- | -")
                lines.append(f"| {name} | {params} | {batch} | {context} | {r['ms']:.3f} | "
                             f"{batch / r['ms'] * 1e3:,.0f} | {g} | {r['cache']:.3f} | {r['peak']:.2f} |")
            print(lines[-1], flush=True)
    return lines


def step_kernel_table(peers: str | None, batches: list[int], dim: int = 1536, dstate: int = 16) -> list[str]:
    """Our Triton step kernel against mamba_ssm's, at the Mamba block's call (bf16 x, dt, z, B, C; fp32 state)."""
    import triton  # noqa: PLC0415

    from hybrid.kernels.selective_scan import selective_state_update  # noqa: PLC0415

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="transformer,mamba,jamba")
    p.add_argument("--contexts", default=",".join(map(str, CONTEXTS)))
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--peers", default=None, help="path of the mamba_ssm peer (e.g. .peers/mamba)")
    p.add_argument("--device", default="cuda", help="cuda (the benchmark); cpu only smoke-tests the script")
    p.add_argument("--out", default=None, help="markdown file (default benchmarks/results/generate_<device>.md)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_generate needs a CUDA GPU (or --device cpu for a smoke test)")
    contexts = [int(c) for c in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    names = args.models.split(",")
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    head = (f"# Decoding: {device_name}, torch {torch.__version__}, {str(dtype).removeprefix('torch.')} "
            f"weights and caches, d_model {args.d_model}, vocab {args.vocab}\n\n"
            f"Context: a real prefill of {PREFILL} tokens, then every KV cache filled synthetically to the "
            f"context length (each step attends over all of it); Mamba states do not depend on the context. "
            f"Median of {STEPS} steps after {WARMUP}. Models are built and measured one at a time, so the "
            f"peak holds one model's weights.\n")
    print(head, flush=True)
    table = ["| model | params | batch | context | ms/step | tok/s | graph ms/step | graph tok/s | cache GiB "
             "| peak GiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    e2e = ["| model | batch | new tokens | eager tok/s | graph tok/s |", "|---|---|---|---|---|"]
    print("\n".join(table), flush=True)
    results: dict = {}
    for name in names:
        torch.manual_seed(0)
        model = HybridLM(model_config(name, args.d_model, args.vocab)).to(device, dtype).eval()
        table += decode_rows(name, model, contexts, batches, results)
        e2e += generate_rows(name, model, sorted({1, max(batches)}))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = [head, "## Decoding step: throughput and memory against context and batch\n", *table,
           "\n## generate() end to end (prompt 128 tokens, temperature 1, top_k 50; new tokens / s)\n", *e2e]
    if device.type == "cuda":
        out += ["\n## Step kernel: ours (Triton) against mamba_ssm's Triton selective_state_update\n",
                "Median µs from triton.testing.do_bench (with the Python call) and do_bench_cudagraph (kernel alone); "
                "bf16 x, dt, z, B, C; fp32 state, A, D, dt_bias; softplus on.\n"]
        print("\n".join(out[-2:]), flush=True)
        out += step_kernel_table(args.peers, [1, 8, 64])

    summary = ["\n## Targets\n"]
    t, m = results.get(("transformer", 64, 8192)), results.get(("mamba", 64, 8192))
    if t and m:
        summary.append(f"- mamba / transformer decode throughput at context 8K, batch 64: {t['ms'] / m['ms']:.1f}x "
                       f"eager; {t['ms'] / m.get('graph_ms', m['ms']):.1f}x with the mamba step in a CUDA graph "
                       f"(target >= 5x)")
    for batch in batches:
        peaks = [r["peak"] for (n, b, _), r in results.items() if n == "mamba" and b == batch]
        if peaks:
            summary.append(f"- mamba decode peak memory at batch {batch}, contexts {contexts[0]}..{contexts[-1]}: "
                           f"{min(peaks):.3f} to {max(peaks):.3f} GiB (target: flat)")
    print("\n".join(summary), flush=True)
    out += summary
    path = Path(args.out or Path(__file__).parent / "results" / f"generate_{device_slug(device_name)}.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
