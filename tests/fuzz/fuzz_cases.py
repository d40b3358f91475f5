"""The fuzz cases: every preset, study config and sweep file mutated, plus CLI arguments and overrides.

A case is plain JSON (it travels to a worker process): `kind`, `target` (the file or argument
mutated), `where` (key path), `change`, `argv` (for `hybrid.cli.main`), `files` (written into the
case's own folder first) and `setup` (corruptions, see fuzz_corrupt). In argv and file texts
"@CASE@" is the case's folder and "@REPO@" the checkout being tested. Cases depend only on the seed.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml

import fuzz_corrupt
import fuzz_mutate as mut

REPO = Path(__file__).resolve().parents[2]
COMPLETE = ["configs/layouts/*.yaml", "configs/experiments/*.yaml", "experiments/*/config.yaml"]
PIECES = {"models": ["configs/layouts/transformer.yaml"], "trainers": ["configs/layouts/transformer.yaml"],
          "tasks": ["configs/layouts/transformer.yaml", "configs/models/tiny.yaml"]}
SWEEPS = "experiments/*/sweep.yaml"
TRAIN_BASES = ["experiments/quickstart/config.yaml", "configs/experiments/quick.yaml"]
# settings a 1-step training case always gets (after the mutated file, so they win); not mutated
FORCED = ["train.steps=1", "train.eval_every=0", "train.checkpoint_every=0", "train.log_every=1",
          "train.progress=false", "train.tensorboard=false", "train.compile=false", "train.device=cpu",
          "train.run_dir=@CASE@/run"]
FORCED_KEYS = ("train.steps", "train.eval_every", "train.checkpoint_every", "train.log_every", "train.progress",
               "train.tensorboard", "train.compile", "train.device", "train.run_dir", "train.out_dir")

BUDGET_COMPLETE = {"wrong_type": 10, "misspelt_key": 7, "missing_key": 6, "out_of_range": 9, "broken_layout": 8,
                   "huge_count": 5}
BUDGET_PIECE = {"wrong_type": 8, "misspelt_key": 6, "missing_key": 4, "out_of_range": 8, "broken_layout": 2,
                "huge_count": 2}
BUDGET_SWEEP = {"wrong_type": 8, "misspelt_key": 5, "missing_key": 4, "out_of_range": 5, "broken_layout": 5,
                "huge_count": 3}
BUDGET_TRAIN = {"wrong_type": 9, "misspelt_key": 4, "missing_key": 4, "out_of_range": 9}


def dump(data: Any) -> str:
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10**6)
    return text.replace("'@BIGINT@'", mut.BIGINT).replace("@BIGINT@", mut.BIGINT)


def files_of(patterns: list[str] | str) -> list[str]:
    patterns = [patterns] if isinstance(patterns, str) else patterns
    return sorted(str(p.relative_to(REPO)) for pat in patterns for p in REPO.glob(pat))


def _mutations(rel: str, budget: dict[str, int], rng: random.Random) -> list[tuple[str, str, str, Any]]:
    data = yaml.safe_load((REPO / rel).read_text())
    out = []
    for kind, n in budget.items():
        out += [(kind, *m) for m in mut.KINDS[kind](data, rng, n)]
    if rel.startswith("configs/layouts"):
        out.append(("huge_count", *mut.shared_explosion(data)))
    return out


def config_cases(seed: int) -> list[dict[str, Any]]:
    cases = []
    for rel in files_of(COMPLETE):
        rng = random.Random(f"{seed}:{rel}")
        name = Path(rel).name
        for kind, where, change, data in _mutations(rel, BUDGET_COMPLETE, rng):
            cases.append({"kind": kind, "target": rel, "where": where, "change": change, "command": "show",
                          "files": {name: dump(data)}, "argv": ["show", f"@CASE@/{name}"]})
    for group, bases in PIECES.items():
        for rel in files_of(f"configs/{group}/*.yaml"):
            rng = random.Random(f"{seed}:{rel}")
            piece = f"{group}/{Path(rel).name}"
            wrapper = dump({"defaults": [f"@REPO@/{b}" for b in bases] + [f"@CASE@/{piece}"]})
            for kind, where, change, data in _mutations(rel, BUDGET_PIECE, rng):
                cases.append({"kind": kind, "target": rel, "where": where, "change": change, "command": "show",
                              "files": {piece: dump(data), "main.yaml": wrapper}, "argv": ["show", "@CASE@/main.yaml"]})
    return cases


def sweep_cases(seed: int) -> list[dict[str, Any]]:
    cases = []
    for rel in files_of(SWEEPS):
        rng = random.Random(f"{seed}:{rel}")
        data = yaml.safe_load((REPO / rel).read_text())
        data["config"] = f"@REPO@/{Path(rel).parent}/{data['config']}"
        muts = [(kind, *m) for kind, n in BUDGET_SWEEP.items() for m in mut.KINDS[kind](data, rng, n)]
        axes = {f"train.seed{i}": list(range(100)) for i in range(3)}  # 10^6 runs
        muts.append(("huge_count", "grid", "3 axes of 100 values (10^6 runs)", {**data, "grid": {**data["grid"], **axes}}))
        for kind, where, change, mutated in muts:
            cases.append({"kind": kind, "target": rel, "where": where, "change": change, "command": "sweep",
                          "files": {"sweep.yaml": dump(mutated)},
                          "argv": ["sweep", "@CASE@/sweep.yaml", "--dry-run", "--out", "@CASE@/out"]})
    return cases


def train_cases(seed: int) -> list[dict[str, Any]]:
    cases = []
    for rel in TRAIN_BASES:
        rng = random.Random(f"{seed}:train:{rel}")
        for kind, where, change, data in _mutations(rel, BUDGET_TRAIN, rng):
            if where.startswith(FORCED_KEYS):
                continue
            cases.append({"kind": kind, "target": rel, "where": where, "change": change, "command": "train",
                          "files": {"config.yaml": dump(data)}, "argv": ["train", "@CASE@/config.yaml", *FORCED],
                          "guard": True})
    return cases


OVERRIDE_VALUES = ["abc", "{}", "[]", "[1,2", "{a: 1}", "${task.nope}", "${", "null", "1e999", "-1", "9" * 30, "true",
                   "0x10", "'q'", "", "=", "M x99999999", "{type: {}}", "[[[]]]", "nan", ".inf", "9" * 5000, "-0.0"]
OVERRIDE_TOKENS = ["model.d_model", "=5", "model..d_model=3", "model.d_model==3", ".x=1", "model.[0]=1",
                   "model.layers.A.type={}", "task.type={}", "task.type=[mqar]", "plugins=os.path", "plugins=[..x]",
                   "plugins=['']", "plugins=abc", "plugins=[1]", "seed=-1", "seed=1e30", "seed=99999999999999999999999",
                   "name=", "train.device=bogus", "train.device=cuda:x", "train.threads=-1", "train.threads=100000000",
                   "defaults=[x]", "model=5", "model.layers=[]", "model.layout={ratio: 5}",
                   "model.layout={ratio: {layers: 4, attention: abc}}", "model.layout={ratio: {layers: 4}, aliases: [1]}",
                   "model.overrides=[{at: '('}]", "model.overrides=[{at: 99}]", "model.overrides=[{at: {}}]",
                   "model.overrides=[{at: 0, select: {}}]", "model.overrides=[{at: 0, branch: true, expand: 2}]",
                   "model.overrides=[{at: " + "9" * 5000 + "}]", "model.overrides=[{at: 'A#" + "9" * 5000 + "'}]",
                   "model.shared={Z: [A, {}]}", "model.shared={Z: [1, 2]}", "model.layers.P={parallel: [A, {}]}",
                   "model.layers.P={parallel: [{}, []]}", "task=[]", "train=null", "a b=c", "\u00e9=1",
                   "train.betas=[0.9]", "train.lr=0", "train.lr=nan", "model.norm_eps=-1", "model.init_std=-1",
                   "train.batch_size=0", "task.paths=abc", "model.layout=[A, 1]"]


def override_cases(seed: int, n: int = 90) -> list[dict[str, Any]]:
    rng = random.Random(f"{seed}:overrides")
    complete = files_of(COMPLETE)
    cases = []
    for i in range(n):
        rel = rng.choice(complete)
        data = yaml.safe_load((REPO / rel).read_text())
        keys = [mut.dotted(p) for p, _ in mut.walk(data) if not any(isinstance(x, int) for x in p)]
        tokens = []
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.5 or not keys:
                tokens.append(rng.choice(OVERRIDE_TOKENS))
            else:
                key = rng.choice(keys)
                key = mut.typo(key, rng) if rng.random() < 0.2 else key
                tokens.append(f"{key}={rng.choice(OVERRIDE_VALUES)}")
        cases.append({"kind": "override", "target": rel, "where": " ".join(t[:60] for t in tokens), "change": "overrides",
                      "command": "show", "argv": ["show", f"@REPO@/{rel}", *tokens]})
    return cases


def control_cases() -> list[dict[str, Any]]:
    """Cases that must be caught (an out-of-memory, a hang, a traceback): the harness's own test."""
    return [{"kind": "control", "target": name, "where": "-", "change": f"a deliberate {name}", "command": "control",
             "argv": ["@CONTROL@", name], "expect": name, "seconds": 2} for name in ("memory", "hang", "traceback")]


def all_cases(seed: int) -> list[dict[str, Any]]:
    import fuzz_cli  # noqa: PLC0415

    cases = (config_cases(seed) + sweep_cases(seed) + override_cases(seed) + fuzz_cli.cli_cases(seed)
             + fuzz_corrupt.run_dir_cases(random.Random(f"{seed}:corrupt")) + fuzz_corrupt.data_cases()
             + train_cases(seed) + control_cases())
    for i, case in enumerate(cases):
        case["id"] = i
        case.setdefault("files", {})
        case.setdefault("setup", [])
    return cases
