"""CLI argument mutations: each subcommand's argv with an argument dropped, doubled, replaced or added.

Values that would legitimately run for long (a real training, thousands of generated tokens) are
not generated: every `train` keeps the 1-step settings at the end, every `sweep` --dry-run.
"""
from __future__ import annotations

import random
from typing import Any

from fuzz_corrupt import RUN

JAMBA = "@REPO@/configs/layouts/jamba.yaml"
QUICK = "@REPO@/experiments/quickstart/config.yaml"
SWEEP = "@REPO@/experiments/quickstart/sweep.yaml"
STEP = ["train.steps=1", "train.eval_every=0", "train.final_eval=false", "train.progress=false",
        "train.tensorboard=false", "train.run_dir=@CASE@/run"]
FILES = {"empty.yaml": "", "list.yaml": "- 1\n- 2\n", "scalar.yaml": "5\n", "bad.yaml": "model: [\n",
         "tabs.yaml": "model:\n\t d_model: 3\n", "binary.yaml": "\x00\x01\x02garbage\xff",
         "deep.yaml": "model: " + "[" * 2000 + "]" * 2000 + "\n", "dup.yaml": "model: {d_model: 1}\nmodel: {d_model: 2}\n",
         "anchors.yaml": "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                         "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                         "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
                         "g: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n",
         "bigint.yaml": "seed: " + "9" * 5000 + "\n", "notes.txt": "just text\n"}
BAD_PATHS = ["@CASE@/nope.yaml", "@CASE@", "@CASE@/empty.yaml", "@CASE@/list.yaml", "@CASE@/scalar.yaml",
             "@CASE@/bad.yaml", "@CASE@/tabs.yaml", "@CASE@/binary.yaml", "@CASE@/deep.yaml", "@CASE@/dup.yaml",
             "@CASE@/anchors.yaml", "@CASE@/bigint.yaml", "@CASE@/notes.txt", "/dev/null", "a" * 5000, "-", "",
             "\u00e9.yaml", "@CASE@/nope/dir/"]
BAD_ARGS = ["--bogus", "-x", "--", "--megatron=3", "k", "=", "k=", "=v", "--help=no", "-vv", "\u00e9", "a" * 3000,
            "model.d_model", "--jobs"]
TEMPLATES: dict[str, list[str]] = {
    "show": ["show", JAMBA, "--megatron"],
    "layers": ["layers", "mamba"],
    "tasks": ["tasks", "mqar"],
    "sweep": ["sweep", SWEEP, "--dry-run", "--out", "@CASE@/out"],
    "report": ["report", "@CASE@/sw", "--no-plots"],
    "train": ["train", QUICK],
    "resume": ["train", "--resume", f"@CASE@/sw/{RUN}"],
    "generate": ["generate", f"@CASE@/sw/{RUN}/config.yaml", "--checkpoint", f"@CASE@/sw/{RUN}/checkpoint.pt",
                 "--prompt-ids", "1,2", "--max-new-tokens", "2"],
}
VALUES = {"--plugins": ["..x", "", "os.path", "a b", "nope_module_xyz", ".", "1abc"],
          "--prompt-ids": ["", "a,b", "-1", "999999", "1,,2", "9" * 5000, "1.5"],
          "--checkpoint": ["@CASE@/nope.pt", "@CASE@", "@CASE@/notes.txt", "@CASE@/empty.yaml", "/dev/null"],
          "--temperature": ["-1", "nan", "inf", "abc"], "--top-p": ["0", "2", "nan"], "--top-k": ["0", "-3", "x"],
          "--max-new-tokens": ["0", "-1", "x"], "--metric": ["", "nope/metric"], "--mode": ["sideways"],
          "--out": ["@CASE@/notes.txt", "/dev/null/x"], "--resume": ["@CASE@/nope", "@CASE@/notes.txt", "@CASE@", ""]}


def _mutate(argv: list[str], rng: random.Random) -> tuple[list[str], str]:
    argv = list(argv)
    op = rng.choice(["drop", "double", "path", "add", "value", "swap"])
    if op == "drop" and len(argv) > 1:
        i = rng.randrange(1, len(argv))
        return argv[:i] + argv[i + 1:], f"dropped {argv[i]!r}"
    if op == "double":
        i = rng.randrange(len(argv))
        return argv[:i + 1] + argv[i:], f"doubled {argv[i]!r}"
    if op == "path" and len(argv) > 1:
        new = rng.choice(BAD_PATHS)
        return [argv[0], new, *argv[2:]], f"path -> {new[:40]!r}"
    if op == "value":
        flag = rng.choice(sorted(VALUES))
        value = rng.choice(VALUES[flag])
        return argv + [flag, value], f"{flag} {value[:40]!r}"
    if op == "swap" and len(argv) > 2:
        return [argv[0], argv[2], argv[1], *argv[3:]], "swapped the first two arguments"
    extra = rng.choice(BAD_ARGS)
    at = rng.randrange(1, len(argv) + 1)
    return argv[:at] + [extra] + argv[at:], f"added {extra[:40]!r} at {at}"


def cli_cases(seed: int, n: int = 110) -> list[dict[str, Any]]:
    rng = random.Random(f"{seed}:cli")
    cases = [{"kind": "cli_args", "target": "argv", "where": "argv", "change": "no arguments", "argv": []},
             {"kind": "cli_args", "target": "argv", "where": "argv", "change": "unknown command", "argv": ["fly"]}]
    names = sorted(TEMPLATES)
    for i in range(n):
        name = names[i % len(names)]
        argv, change = _mutate(TEMPLATES[name], rng)
        if argv and argv[0] == "train":
            argv = argv + STEP  # whatever the mutation, at most one step
        if argv and argv[0] == "sweep" and "--dry-run" not in argv:
            argv = argv + ["--dry-run"]  # a plan, never three real trainings
        cases.append({"kind": "cli_args", "target": f"hybrid {name}", "where": "argv", "change": change, "argv": argv})
    for case in cases:
        case.update(command=case["argv"][0] if case["argv"] else "", files=dict(FILES),
                    setup=[{"op": "template", "into": "sw"}])
    return cases
