"""`hybrid export CONFIG --checkpoint CKPT --format hf OUT`: a trained model as a transformers model folder."""
from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write a trained model as a Hugging Face transformers folder",
        description="Build the model of CONFIG, load its weights from --checkpoint and write OUT as a transformers "
                    "model folder (config.json + model.safetensors) that AutoModelForCausalLM.from_pretrained "
                    "loads with the same logits. Classes: MambaForCausalLM, Mamba2ForCausalLM, LlamaForCausalLM, "
                    "JambaForCausalLM, BambaForCausalLM (hybrid/hf/); `hybrid show --hf CONFIG` says in advance "
                    "which class a layout maps to, or what does not fit.\n\n"
                    "example:\n  hybrid export configs/layouts/mamba.yaml --checkpoint runs/m/checkpoint.pt "
                    "--format hf exported/m",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config the checkpoint was trained with")
    p.add_argument("out", help="folder to write")
    p.add_argument("overrides", nargs="*", help="key=value overrides, as at training")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt of a run, or a bare state_dict")
    p.add_argument("--format", choices=["hf"], default="hf", help="hf: a transformers model folder")
    p.set_defaults(run=run)


def run(args) -> int:
    from hybrid.cli.generate import load_weights  # noqa: PLC0415
    from hybrid.config import load_config  # noqa: PLC0415
    from hybrid.hf import HFMismatch, export_hf  # noqa: PLC0415
    from hybrid.model import HybridLM  # noqa: PLC0415

    root = load_config(args.config, args.overrides)
    model = HybridLM(root.model, root.layout)
    load_weights(model, args.checkpoint)
    try:
        folder, name = export_hf(model, args.out)
    except HFMismatch as err:
        print(f"error: {args.config}: no transformers class represents this model: {err}", file=sys.stderr)
        return 2
    print(f"wrote {folder} ({name}, {model.num_parameters():,} parameters)")
    return 0
