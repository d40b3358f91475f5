"""End-to-end training throughput of whole models: tokens/s and peak memory, ours against peers.

Models at ~130M parameters (d_model 768, vocab 50304), batch 8 x 2048, bf16 autocast, fused AdamW:
  transformer  "(A F) x12"
  mamba        "M x24"
  mamba2       "M2 x24"            (Mamba-2: d_state 128, headdim 64)
  hybrid       "(M F M F M F A F) x3"
Peer, when its sources are given with --peers: the same models with every Mamba mixer replaced by
mamba_ssm's `Mamba` block (its CUDA selective scan; no causal_conv1d) and every Mamba-2 mixer by its
`Mamba2` (its Triton SSD, the non-fused path: use_mem_eff_path=False, no causal_conv1d), so only the
mixer differs. The transformer is always also measured against a plain nn.Module of the same shapes
with F.scaled_dot_product_attention (benchmarks/plain_transformer.py).
Every model runs its backward on the calling thread, as `hybrid train` does (autograd's
set_multithreading_enabled(False)); --worker-thread measures PyTorch's default instead, which hands
the backward to autograd's CUDA worker thread.
--conv-bwd fused,two_pass times our Mamba and Mamba-2 models once with each backward of the causal
conv (triton_conv.BACKWARD, which each forward reads), in the same run: the rows after the first are
labelled with their method.

    python benchmarks/bench_model.py [--peers .peers/mamba] [--steps 10] [--compile] [--models transformer,mamba2]
    python benchmarks/bench_model.py --models mamba2 --conv-bwd fused,two_pass --peers .peers/mamba
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hybrid.kernels.causal_conv1d import triton_conv  # noqa: E402
from hybrid.model import HybridLM  # noqa: E402
from hybrid.model_config import ModelConfig  # noqa: E402
from plain_transformer import PlainTransformer  # noqa: E402

LAYERS = {"M": {"type": "mamba", "d_state": 16}, "M2": {"type": "mamba2", "d_state": 128, "headdim": 64},
          "A": {"type": "attention", "n_heads": 12}, "F": {"type": "mlp", "expand": 4, "activation": "gelu"}}
MODELS = {"transformer": "(A F) x12", "mamba": "M x24", "mamba2": "M2 x24", "hybrid": "(M F M F M F A F) x3"}


def build(layout: str) -> HybridLM:
    return HybridLM(ModelConfig(d_model=768, vocab_size=50304, layers=LAYERS, layout=layout, residual_in_fp32=True))


def swap_in_peer_mamba(model: HybridLM, peers: dict) -> bool:
    """Replace our Mamba / Mamba2 mixers by `peers[class name]()`; whether any was replaced."""
    swapped = False
    for block in model.blocks:
        for i, branch in enumerate(block.branches):
            make = peers.get(type(branch).__name__)
            if make is not None:
                peer = make().to(branch.in_proj.weight.device)
                peer.forward_orig = peer.forward
                peer.forward = (lambda p: (lambda x, state=None: p.forward_orig(x)))(peer)
                block.branches[i] = peer
                swapped = True
    return swapped


def measure(model: HybridLM, steps: int, batch: int, length: int, compile_model: bool,
            caller_thread: bool = True) -> tuple[float, float]:
    model = model.cuda()
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=1e-4, fused=True)
    step_fn = torch.compile(model) if compile_model else model
    ids = torch.randint(0, 50304, (batch, length + 1), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = step_fn(ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        with torch.autograd.set_multithreading_enabled(not caller_thread):
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t
    return batch * length * steps / elapsed, torch.cuda.max_memory_allocated() / 2**30


LEAK_GIB = 0.5  # memory still allocated after a row's model is freed, above which the next rows' peaks are suspect


def freed(label: str) -> None:
    """After a row: free the cache and say so if the row left memory allocated (a leak would add to every
    later row's peak, as a cache of tensors in a kernel launcher once did: 30 GiB a model)."""
    gc.collect()
    torch.cuda.empty_cache()
    left = torch.cuda.memory_allocated() / 2**30
    if left > LEAK_GIB:
        print(f"!! {label}: {left:.1f} GiB still allocated after its model was freed; later rows' peaks include it",
              flush=True)


def ours_rows(name: str, args: argparse.Namespace) -> list[tuple]:
    """(model, label, params, tokens/s, peak GiB) of our model `name`: eager, compiled with --compile, and
    with each causal-conv backward of --conv-bwd after the first (models with a conv only)."""
    layout, rows = MODELS[name], []
    methods = args.conv_bwd if "M" in layout else args.conv_bwd[:1]
    default = triton_conv.BACKWARD
    variants = [("ours", False, methods[0])] + ([("ours+compile", True, methods[0])] if args.compile else [])
    variants += [(f"ours, conv backward {m}", False, m) for m in methods[1:]]
    try:
        for label, comp, method in variants:
            triton_conv.BACKWARD = method
            torch.manual_seed(0)
            model = build(layout)
            params = model.num_parameters()
            tps, mem = measure(model, args.steps, args.batch, args.length, comp, not args.worker_thread)
            rows.append((name, label, params, tps, mem))
            print(rows[-1], flush=True)
            del model
            freed(f"{name}, {label}")
    finally:
        triton_conv.BACKWARD = default
    return rows


def load_peers(folder: str | None, names: list[str]) -> dict:
    """mamba_ssm's mixers by our class name ("Mamba", "Mamba2") -> a constructor, from its sources in
    `folder`; the Mamba-1 one (whose CUDA scan is built, about 2.5 minutes the first time) only when a
    model among `names` has Mamba-1 mixers."""
    peers = {}
    if not folder:
        return peers
    sys.path.insert(0, folder)
    if {"mamba", "hybrid"} & set(names):
        import load  # builds/loads the peer CUDA scan

        load.selective_scan()
        from mamba_ssm.modules.mamba_simple import Mamba as PeerMamba

        peers["Mamba"] = lambda: PeerMamba(768, d_state=16)
    try:  # its Mamba2 also needs einops and huggingface_hub
        from mamba_ssm.modules.mamba2 import Mamba2 as PeerMamba2

        m2 = LAYERS["M2"]
        peers["Mamba2"] = lambda: PeerMamba2(768, d_state=m2["d_state"], headdim=m2["headdim"],
                                             use_mem_eff_path=False)
    except ImportError as err:
        print(f"no mamba_ssm Mamba2 peer: {err}", flush=True)
    return peers


def listed(parser: argparse.ArgumentParser, option: str, text: str, allowed) -> list[str]:
    """The comma-separated names of `option`, each among `allowed`, else argparse's error naming them."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or set(names) - set(allowed):
        parser.error(f"{option}: expected names among {', '.join(allowed)}, got {text!r}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", help="folder holding mamba_ssm's sources (with load.py)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd models")
    parser.add_argument("--worker-thread", action="store_true",
                        help="backward on autograd's CUDA worker thread (PyTorch's default), not the calling thread")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)} (the Mamba-1 peer's CUDA scan is built "
                             "only when mamba or hybrid is among them)")
    parser.add_argument("--conv-bwd", default=triton_conv.BACKWARD,
                        help=f"comma-separated causal-conv backwards to time our Mamba models with, of "
                             f"{', '.join(triton_conv.BACKWARD_METHODS)} (default: {triton_conv.BACKWARD}, the "
                             "library's); the first is the one the main rows use")
    parser.add_argument("--out", default=None, help="markdown file to write")
    args = parser.parse_args()
    args.conv_bwd = listed(parser, "--conv-bwd", args.conv_bwd, triton_conv.BACKWARD_METHODS)
    names = listed(parser, "--models", args.models, MODELS)

    peers = load_peers(args.peers, names)

    rows = []
    for name in names:
        layout = MODELS[name]
        rows += ours_rows(name, args)
        if name == "transformer":  # held to a plain nn.Module of the same shapes (benchmarks/plain_transformer.py)
            torch.manual_seed(0)
            plain = PlainTransformer()
            tps, mem = measure(plain, args.steps, args.batch, args.length, False, not args.worker_thread)
            rows.append((name, "plain nn.Module + SDPA (peer)", plain.num_parameters(), tps, mem))
            print(rows[-1], flush=True)
            del plain
            freed(f"{name}, plain nn.Module")
        if not peers:
            continue
        torch.manual_seed(0)
        model = build(layout)
        if swap_in_peer_mamba(model, peers):
            tps, mem = measure(model, args.steps, args.batch, args.length, False, not args.worker_thread)
            label = ("mamba_ssm Mamba2 blocks (its Triton SSD)" if "M2" in layout
                     else "mamba_ssm Mamba blocks")
            rows.append((name, label, model.num_parameters(), tps, mem))
            print(rows[-1], flush=True)
        del model
        freed(f"{name}, peer")

    device = torch.cuda.get_device_name()
    where = "autograd's CUDA worker thread" if args.worker_thread else "the calling thread"
    lines = [f"# Training throughput ({device}, torch {torch.__version__}, bf16 autocast, fused AdamW)", "",
             f"batch {args.batch} x {args.length} tokens, d_model 768, vocab 50304, {args.steps} timed steps after 3 warm-up; "
             f"backward on {where}", "",
             "| model | implementation | params | tokens/s | vs peer | peak GiB |", "|---|---|---|---|---|---|"]
    for name, label, params, tps, mem in rows:
        peer = next((r[3] for r in rows if r[0] == name and not r[1].startswith("ours")), None)
        ratio = f"{tps / peer:.2f}x" if peer and label.startswith("ours") else "-"
        lines.append(f"| {name} | {label} | {params / 1e6:.1f}M | {tps / 1e3:.0f}k | {ratio} | {mem:.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
