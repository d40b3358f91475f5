"""`hybrid generate CONFIG --checkpoint PATH --prompt TEXT`: sample a continuation from a trained model."""
from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import torch

from hybrid.config import load_config
from hybrid.errors import CheckpointError, ConfigError
from hybrid.model import HybridLM
from hybrid.training.checkpoint import read_checkpoint, state_dict_mismatch
from hybrid.training.sharded import full_model_weights, is_sharded

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# prefixes that wrappers add to parameter names: torch.compile, DistributedDataParallel
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "generate", help="sample a continuation of a prompt from a checkpoint",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build the model of CONFIG, load its weights from --checkpoint and continue the prompt,\n"
                    "streaming tokens as they are drawn.\n\n"
                    "checkpoint: a file written with torch.save holding either a dict with the weights under\n"
                    "  the key 'model' (what the trainer writes) or a bare state_dict.\n"
                    "prompt: --prompt TEXT is encoded as UTF-8 bytes (byte-level vocabulary, vocab_size 256)\n"
                    "  and the output decoded the same way; with other vocabularies give --prompt-ids.\n\n"
                    "example:\n"
                    "  hybrid generate configs/layouts/mamba.yaml --checkpoint runs/x/checkpoint.pt \\\n"
                    "      --prompt 'Once upon a time' --max-new-tokens 200 --temperature 0.8 --top-p 0.9")
    p.add_argument("config", help="YAML config file (the one the checkpoint was trained with)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.d_model=512")
    p.add_argument("--checkpoint", help="torch.save'd file: {'model': state_dict, ...} or a bare state_dict; "
                                        "without it the weights are random (smoke tests)")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text, encoded as UTF-8 bytes (needs vocab_size 256)")
    prompt.add_argument("--prompt-ids", help="prompt as token ids separated by commas or spaces, e.g. '12,7,99'")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to add (default 128)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 for greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set holding this probability")
    p.add_argument("--eos-id", type=int, default=None, help="stop after this token")
    p.add_argument("--seed", type=int, default=None, help="seed of the draws (default: the config's seed)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device (default: cuda when available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="weights and caches dtype (default bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--cuda-graph", action="store_true", help="replay the decoding step from a CUDA graph "
                                                             "(GPU; KV caches switch to fixed shapes)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle arbitrary objects in the checkpoint (only for files you trust); by default only "
                        "tensors and plain containers load")
    p.set_defaults(run=run)


def load_weights(model: HybridLM, path: str, trust: bool = False) -> None:
    """Load a checkpoint's weights into `model`: the 'model' entry of a saved dict, or a bare state_dict.
    A missing, truncated or corrupt file is a CheckpointError naming it."""
    try:
        blob = read_checkpoint(path, "cpu", weights_only=not trust, keys=())
    except CheckpointError as err:
        raise err.located(key="--checkpoint") from None
    except pickle.UnpicklingError as err:
        raise ConfigError(f"checkpoint {path!r} holds objects other than tensors and plain containers "
                          f"({str(err).splitlines()[0]}); pass --trust-checkpoint if you trust the file",
                          key="--checkpoint") from None
    if isinstance(blob, dict) and is_sharded(blob):  # an FSDP run's checkpoint: its shards beside it
        blob = {"model": full_model_weights(Path(path).parent, blob["model"])}
    weights = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        keys = ", ".join(map(str, list(blob)[:8])) if isinstance(blob, dict) else type(blob).__name__
        raise ConfigError(f"checkpoint {path!r} is neither a state_dict nor a dict with one under 'model' "
                          f"(found: {keys})", key="--checkpoint")
    for prefix in WRAPPER_PREFIXES:
        if weights and all(k.startswith(prefix) for k in weights):
            weights = {k[len(prefix):]: v for k, v in weights.items()}
    tied = {"lm_head.weight"} if model.config.tie_embeddings else set()
    problems = state_dict_mismatch(model.state_dict(), weights, tied)
    if problems:
        raise ConfigError(f"checkpoint {path!r} does not match the config's model: {problems}. "
                          f"Use the config (and overrides) it was trained with", key="--checkpoint")
    model.load_state_dict(weights, strict=False)


def parse_ids(text: str, vocab_size: int) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"--prompt-ids must be integers separated by commas or spaces, got {text!r}",
                          key="--prompt-ids") from None
    if not ids or min(ids) < 0 or max(ids) >= vocab_size:
        raise ConfigError(f"--prompt-ids needs at least one id, each in [0, {vocab_size}); got {text!r}",
                          key="--prompt-ids")
    return ids


def run(args) -> int:
    from hybrid.generation import check_sampling, generate  # noqa: PLC0415

    try:
        check_sampling(args.temperature, args.top_k, args.top_p, args.max_new_tokens)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    root = load_config(args.config, args.overrides)
    vocab = root.model.vocab_size
    if args.prompt is not None:
        if vocab != 256:
            raise ConfigError(f"--prompt encodes text as bytes, which needs vocab_size 256; this model has "
                              f"{vocab}. Give token ids with --prompt-ids", key="model.vocab_size")
        ids = list(args.prompt.encode("utf-8"))
    else:
        ids = parse_ids(args.prompt_ids, vocab)
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise ConfigError(f"not a device: {args.device!r} ({err}); use cpu, cuda or cuda:N", key="--device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{args.device} asked for, but CUDA is not available; use --device cpu", key="--device")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = HybridLM(root.model)
    if args.checkpoint:
        load_weights(model, args.checkpoint, args.trust_checkpoint)
    model.to(device=device, dtype=dtype).eval()

    as_text = args.prompt is not None
    pending = bytearray()

    def stream(tokens: list) -> None:
        if tokens[0] is None:
            return
        if as_text:
            pending.append(tokens[0])
            try:  # print whole UTF-8 characters only
                sys.stdout.write(pending.decode("utf-8"))
                pending.clear()
            except UnicodeDecodeError:
                if len(pending) >= 4:
                    sys.stdout.write(pending.decode("utf-8", errors="replace"))
                    pending.clear()
        else:
            sys.stdout.write(f" {tokens[0]}")
        sys.stdout.flush()

    sys.stdout.write(args.prompt if as_text else " ".join(map(str, ids)))
    try:
        generate(model, torch.tensor(ids), args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                 top_p=args.top_p, eos_id=args.eos_id, seed=args.seed if args.seed is not None else root.seed,
                 callback=stream, cuda_graph=args.cuda_graph)
    except ValueError as err:  # bad sampling settings, or a CUDA graph for a layout that cannot have one
        raise ConfigError(str(err)) from None
    if pending:
        sys.stdout.write(pending.decode("utf-8", errors="replace"))
    sys.stdout.write("\n")
    return 0
