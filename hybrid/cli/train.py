"""`hybrid train CONFIG [key=value ...]` and `hybrid train --resume RUN_DIR`."""
from __future__ import annotations

import os
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a config's model on its task",
        description="Train the model of CONFIG on its task and write a run directory "
                    "(<train.out_dir>/<name>, or train.run_dir): resolved config, git commit and versions, "
                    "metrics.jsonl (and TensorBoard files when tensorboard is installed), checkpoint.pt, "
                    "results.json.\n\nexamples:\n"
                    "  hybrid train configs/experiments/quick.yaml\n"
                    "  hybrid train configs/experiments/quick.yaml model.d_model=128 train.lr=1e-3 name=wide\n"
                    "  hybrid train --resume runs/quick          # after a crash or kill -9\n"
                    "  torchrun --nproc-per-node 4 -m hybrid train configs/experiments/quick.yaml train.parallel=ddp\n"
                    "                                            # data-parallel (ddp or fsdp; batch_size stays global)",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config file (omit with --resume)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=2000 model.d_model=128")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if the run directory holds a run")
    p.set_defaults(run=run)


def run(args) -> int:
    from hybrid.training.interrupt import Interrupted  # noqa: PLC0415
    from hybrid.training.trainer import OutOfMemory, RunExists, TrainingDiverged, resume_run, train  # noqa: PLC0415

    overrides = list(args.overrides)
    try:
        if args.resume:
            if args.config and "=" not in args.config:
                print(f"error: --resume continues {args.resume} with the run's own config ({args.resume}/config.yaml); "
                      f"give no CONFIG with it ({args.config!r}): hybrid train --resume {args.resume} [key=value ...]",
                      file=sys.stderr)
                return 2
            if args.config:  # `hybrid train --resume DIR key=value`: argparse put the first override here
                overrides.insert(0, args.config)
            results = resume_run(args.resume, overrides)
        else:
            if not args.config:
                print("error: give a CONFIG file, or --resume RUN_DIR", file=sys.stderr)
                return 2
            results = train(args.config, overrides, overwrite=args.overwrite)
    except TrainingDiverged as err:
        print(f"error: training diverged: {err}", file=sys.stderr)
        return 3
    except RunExists as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OutOfMemory as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"stopped: {err}", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun, rank 0 reports
        return 0
    final = results.get("final") or {}
    shown = {k: v for k, v in final.items() if k.startswith("eval/all/")}
    print(f"{results['name']}: {results['state']} at step {results['step']} in {results['wall_time_s']:.1f}s; "
          + ", ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in shown.items() if isinstance(v, float)))
    return 0
