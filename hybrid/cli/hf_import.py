"""`hybrid import HF_FOLDER OUT`: a transformers model folder as our config and checkpoint."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "import", help="read a Hugging Face transformers folder into a config and checkpoint",
        description="Read a transformers model folder (config.json + *.safetensors) of a supported class "
                    "(MambaForCausalLM, Mamba2ForCausalLM, LlamaForCausalLM, JambaForCausalLM, "
                    "BambaForCausalLM) and write OUT/config.yaml (the model section: its layout "
                    "and arguments) and OUT/checkpoint.pt (its weights), with the same logits.\n\n"
                    "example:\n  hybrid import hf/tiny-mamba imported/\n"
                    "  hybrid generate imported/config.yaml --checkpoint imported/checkpoint.pt --prompt-ids 1,2,3",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("folder", help="transformers model folder")
    p.add_argument("out", help="folder to write config.yaml and checkpoint.pt into")
    p.set_defaults(run=run)


def run(args) -> int:
    import torch  # noqa: PLC0415
    import yaml  # noqa: PLC0415

    from hybrid.hf import HFMismatch, import_hf  # noqa: PLC0415

    try:
        config, state_dict = import_hf(args.folder)
    except (HFMismatch, KeyError) as err:  # an unsupported class or option; a weight the class must have
        print(f"error: {args.folder}: cannot import: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(f"# imported from {args.folder}\n"
                                     + yaml.safe_dump({"model": dataclasses.asdict(config)}, sort_keys=False))
    torch.save({"model": state_dict}, out / "checkpoint.pt")
    print(f"wrote {out / 'config.yaml'} (layout {config.layout}) and {out / 'checkpoint.pt'}")
    return 0
