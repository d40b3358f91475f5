"""Corrupted files: a finished sweep folder with one file damaged, and LM corpora that are wrong.

`template_files()` is the tiny sweep the worker runs once (`--make-template`); a corruption case
copies that folder, damages one file (`apply_setup`) and runs a command that reads it. Data cases
write token shards or text folders and train one step on them. The worker checks afterwards that
no file of the copied run was lost (its bytes still exist somewhere in the folder).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import struct
from pathlib import Path
from typing import Any

import yaml

RUN = "runs/arch=af"  # the run of the template sweep whose files are damaged
TINY = {
    "model": {"d_model": 16, "vocab_size": "${task.vocab_size}",
              "layers": {"A": {"type": "attention", "n_heads": 2}, "F": {"type": "mlp", "expand": 2}},
              "layout": "A F"},
    "task": {"type": "mqar", "vocab_size": 16, "train": [{"length": 8, "num_kv_pairs": 2}],
             "test": [{"length": 8, "num_kv_pairs": 2}], "eval_examples": 8, "eval_batch_size": 8},
    "train": {"steps": 3, "batch_size": 4, "lr": 1e-3, "eval_every": 0, "checkpoint_every": 1, "log_every": 1,
              "device": "cpu", "dtype": "float32", "progress": False, "tensorboard": False},
}
SWEEP = {"name": "tmpl", "config": "tiny.yaml", "grid": {"arch": {"af": {"model.layout": "A F"},
                                                                 "fa": {"model.layout": "F A"}}}}
FILES = ["checkpoint.pt", "status.json", "results.json", "metrics.jsonl", "config.yaml", "meta.json"]
HOW = ["truncate", "empty", "garbage", "flip", "directory", "nul"]
JSON_SHAPES = ["[]", "\"text\"", "5", "null", "{\"final\": 5}", "{\"state\": 7, \"step\": \"x\"}",
               "{\"final\": {\"eval/all/accuracy\": \"high\"}}", "{\"runs\": 5}", "{\"runs\": [5]}",
               "{\"runs\": [{\"name\": 3, \"axes\": []}], \"select\": []}", "{\"step\": 1e999}"]


def template_files() -> dict[str, str]:
    return {"tiny.yaml": yaml.safe_dump(TINY, sort_keys=False), "sweep.yaml": yaml.safe_dump(SWEEP, sort_keys=False)}


def damage(path: Path, how: str, rng: random.Random) -> None:
    data = path.read_bytes() if path.is_file() else b""
    if how == "truncate":
        path.write_bytes(data[:rng.randrange(max(len(data), 1))])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.choice([1, 17, 300, 5000]))))
    elif how == "flip":
        buf = bytearray(data or b"x")
        for _ in range(max(1, len(buf) // 50)):
            buf[rng.randrange(len(buf))] ^= 0xFF
        path.write_bytes(bytes(buf))
    elif how == "directory":
        path.unlink(missing_ok=True)
        path.mkdir()
    elif how == "nul":
        path.write_bytes(b"\0" * max(len(data), 8))
    elif how.startswith("json:"):
        path.write_text(how[5:])
    elif how == "torch-object":
        import torch  # noqa: PLC0415
        torch.save({"step": "three", "model": [1, 2]}, path)
    elif how == "prev-too":  # both checkpoints damaged
        damage(path, "truncate", rng)
        prev = path.with_name("checkpoint.prev.pt")
        if prev.exists():
            damage(prev, "garbage", rng)
    else:
        raise ValueError(how)


def _commands(file: str) -> list[list[str]]:
    report = ["report", "@CASE@", "--no-plots"]
    resume = ["train", "--resume", f"@CASE@/{RUN}", "train.steps=4", "train.progress=false"]
    dry = ["sweep", "@CASE@/sweep.yaml", "--dry-run"]
    generate = ["generate", f"@CASE@/{RUN}/config.yaml", "--checkpoint", f"@CASE@/{RUN}/checkpoint.pt",
                "--prompt-ids", "1,2", "--max-new-tokens", "2"]
    return {"checkpoint.pt": [resume, generate, dry], "status.json": [report, resume, dry],
            "results.json": [report, resume], "metrics.jsonl": [report, resume], "config.yaml": [resume, generate],
            "meta.json": [report, resume], "sweep.json": [report]}[file]


def run_dir_cases(rng: random.Random) -> list[dict[str, Any]]:
    cases = []
    for file in FILES + ["sweep.json"]:
        hows = HOW + (["torch-object", "prev-too"] if file == "checkpoint.pt" else [])
        hows += [f"json:{s}" for s in JSON_SHAPES] if file.endswith((".json", ".jsonl")) else []
        for how in hows:
            for argv in _commands(file):
                target = file if file == "sweep.json" else f"{RUN}/{file}"
                cases.append({"kind": "corrupted_file", "target": target, "where": how, "change": f"{how} {file}",
                              "command": argv[0], "argv": argv, "expect_file": file,
                              "setup": [{"op": "template"}, {"op": "damage", "file": target, "how": how}]})
    # one command per damaged file is plenty for the report: keep the set small but cover each command
    rng.shuffle(cases)
    return cases[:90]


LM_CONFIG = {
    "model": {"d_model": 16, "vocab_size": 300, "layers": {"A": {"type": "attention", "n_heads": 2},
                                                            "F": {"type": "mlp", "expand": 2}}, "layout": "A F"},
    "task": {"type": "lm", "paths": ["@CASE@/data"], "seq_len": 8, "eval_batches": 1, "eval_batch_size": 2,
             "val_fraction": 0.5},
    "train": {"steps": 1, "batch_size": 2, "eval_every": 0, "checkpoint_every": 0, "log_every": 1, "device": "cpu",
              "dtype": "float32", "progress": False, "tensorboard": False, "run_dir": "@CASE@/run"},
}


def _lm(task: dict[str, Any], setup: list[dict[str, Any]], change: str, target: str) -> dict[str, Any]:
    config = json.loads(json.dumps(LM_CONFIG))
    config["task"].update(task)
    return {"kind": "corrupted_file", "target": target, "where": "task.paths", "change": change, "command": "train",
            "argv": ["train", "@CASE@/lm.yaml"], "expect_file": Path(target).name,
            "files": {"lm.yaml": yaml.safe_dump(config, sort_keys=False)}, "setup": setup}


def data_cases() -> list[dict[str, Any]]:
    shard = {"paths": ["@CASE@/data/a.bin", "@CASE@/data/b.bin"], "vocab_size": 300}
    npy = {"paths": ["@CASE@/data/a.npy", "@CASE@/data/b.npy"], "vocab_size": 300}
    good_b = {"op": "bin", "file": "data/b.bin", "n": 400, "dtype": "uint16", "max": 299}
    good_nb = {"op": "npy", "file": "data/b.npy", "n": 400, "dtype": "int32", "max": 299}
    return [
        _lm(shard, [{"op": "raw", "file": "data/a.bin", "n": 801}, good_b], "a .bin of 801 bytes (uint16)", "data/a.bin"),
        _lm({**shard, "token_dtype": "uint32"}, [{"op": "raw", "file": "data/a.bin", "n": 802}, good_b],
            "a .bin of 802 bytes read as uint32", "data/a.bin"),
        _lm(shard, [{"op": "bin", "file": "data/a.bin", "n": 400, "dtype": "uint16", "max": 60000}, good_b],
            "tokens up to 60000 with vocab_size 300 (wrong dtype or vocabulary)", "data/a.bin"),
        _lm(shard, [{"op": "raw", "file": "data/a.bin", "n": 0}, good_b], "an empty .bin shard", "data/a.bin"),
        _lm(npy, [{"op": "npy", "file": "data/a.npy", "n": 400, "dtype": "float32", "max": 299}, good_nb],
            "a float32 .npy shard", "data/a.npy"),
        _lm(npy, [{"op": "npy", "file": "data/a.npy", "n": 400, "dtype": "int64", "max": 299, "negative": True},
                  good_nb], "negative token ids", "data/a.npy"),
        _lm(npy, [{"op": "npy", "file": "data/a.npy", "n": 400, "dtype": "int32", "max": 299, "shape": [20, 20]},
                  good_nb], "a 2-D .npy shard", "data/a.npy"),
        _lm(npy, [{"op": "npy", "file": "data/a.npy", "n": 400, "dtype": "int32", "max": 299, "cut": 100}, good_nb],
            "a truncated .npy shard", "data/a.npy"),
        _lm(npy, [{"op": "raw", "file": "data/a.npy", "n": 300}, good_nb], "a .npy shard of garbage", "data/a.npy"),
        _lm(shard, [{"op": "llmc", "file": "data/a.bin", "count": 100000, "n": 400}, good_b],
            "an llm.c header promising 100000 tokens in a file of 400", "data/a.bin"),
        _lm(shard, [{"op": "llmc", "file": "data/a.bin", "count": 400, "n": 400, "version": 7}, good_b],
            "an llm.c header of unknown version 7", "data/a.bin"),
        _lm({}, [{"op": "mkdir", "file": "data"}], "an empty text folder", "data"),
        _lm({}, [{"op": "text", "file": "data/notes.csv", "text": "a,b\n" * 50}], "a folder with no text suffix", "data"),
        _lm({}, [{"op": "text", "file": "data/a.txt", "text": ""}, {"op": "text", "file": "data/b.txt", "text": ""}],
            "a folder of empty text files", "data"),
        _lm({}, [{"op": "text", "file": "data/a.txt", "text": "tiny"}], "a corpus shorter than one window", "data"),
        _lm({}, [{"op": "text", "file": "data/a.txt", "text": "hello world " * 30},
                 {"op": "symlink", "file": "data/b.txt", "to": "@CASE@/nowhere.txt"}],
            "a dangling symlink in the text folder", "b.txt"),
        _lm({"paths": ["@CASE@/missing"]}, [], "a path that does not exist", "missing"),
        _lm({"tokenizer": "@CASE@/tok.json"}, [{"op": "text", "file": "tok.json", "text": "{not json"},
                                               {"op": "text", "file": "data/a.txt", "text": "hello " * 40}],
            "a tokenizer file that is not a tokenizer", "tok.json"),
        _lm({"paths": ["@CASE@/data/a.bin"]}, [{"op": "bin", "file": "data/a.bin", "n": 400, "dtype": "uint16",
                                                "max": 299}], "a shard without vocab_size", "lm.yaml"),
    ]


def apply_setup(case_dir: Path, template: Path, setup: list[dict[str, Any]], rng: random.Random) -> None:
    for step in setup:
        op = step["op"]
        path = case_dir / step.get("file", "")
        if op == "template":
            shutil.copytree(template, case_dir / step.get("into", ""), dirs_exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if op == "damage":
            damage(path, step["how"], rng)
        elif op == "raw":
            path.write_bytes(bytes(rng.randrange(256) for _ in range(step["n"])))
        elif op in ("bin", "npy"):
            _write_tokens(path, step, rng)
        elif op == "llmc":
            header = struct.pack("<256i", 20240520, step.get("version", 1), step["count"], *([0] * 253))
            path.write_bytes(header + bytes(step["n"] * 2))
        elif op == "mkdir":
            path.mkdir(parents=True, exist_ok=True)
        elif op == "text":
            path.write_text(step["text"])
        elif op == "symlink":
            os.symlink(step["to"].replace("@CASE@", str(case_dir)), path)
        else:
            raise ValueError(op)


def _write_tokens(path: Path, step: dict[str, Any], rng: random.Random) -> None:
    import numpy as np  # noqa: PLC0415

    values = np.asarray([rng.randrange(step["max"] + 1) for _ in range(step["n"])])
    if step.get("negative"):
        values[::7] = -5
    values = values.astype(step["dtype"]).reshape(step.get("shape", [-1]))
    if step["op"] == "bin":
        path.write_bytes(values.tobytes())
        return
    np.save(path, values)
    if step.get("cut"):
        path.write_bytes(path.read_bytes()[:-step["cut"]])
