"""Non-embedding parameters of every layout of the LM study's sweeps, counted on the meta device.

    python experiments/lm_study/params.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hybrid.model import HybridLM  # noqa: E402
from hybrid.sweep.spec import load_sweep  # noqa: E402
from hybrid.sweep.runner import resolve_run  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    for sweep in ("sweep.yaml", "large/sweep.yaml"):
        spec = load_sweep(HERE / sweep)
        print(f"{sweep}:")
        seen = set()
        for run in spec.runs:
            root = resolve_run(spec, run)
            if root.model.layout in seen:
                continue
            seen.add(root.model.layout)
            with torch.device("meta"):
                model = HybridLM(root.model)
            print(f"  {run.name.split(',')[0]:26s} d_model {root.model.d_model}  {len(model.blocks):3d} sublayers  "
                  f"{model.num_parameters(exclude_embedding=True) / 1e6:6.2f}M   {root.model.layout}")


if __name__ == "__main__":
    main()
