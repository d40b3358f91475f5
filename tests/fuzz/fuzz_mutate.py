"""Mutations of parsed YAML data: the edits a new user makes by mistake, drawn from a seeded RNG.

Each function takes the parsed file (a nested dict/list), an RNG and returns a list of
`(where, change, mutated_data)`; `where` is the dotted key path, `change` says what was done, both
printed when a case fails so it can be copied into a regular test.
"""
from __future__ import annotations

import copy
import random
from typing import Any, Iterator

Path_ = tuple  # (key or index, ...)

WRONG_TYPES: list[Any] = [{}, [], "text", 7, 0.5, True, None, {"type": "mamba"}, [1, "a"], "${undefined.key}",
                          "(", {"a": {"b": []}}, "2024-01-01", -3]
NUMBERS: list[Any] = [0, -1, -7, 0.5, 3.0, 2**31, 2**63, 10**30, 1e308, -1e308, 1e-320, float("nan"), float("inf"),
                      -float("inf"), "@BIGINT@"]
BIGINT = "9" * 5000  # written unquoted in place of "@BIGINT@" (Python will not print such an int)
STRINGS: list[Any] = ["", " ", "a" * 3000, "\u00e9\u4e2d\u6587", "null", "x" * 20 + "\t\n", "../../../etc/passwd"]
HUGE: list[Any] = [10**9, 10**12, 2**62, 10**30]
BROKEN_SHORTHAND: list[Any] = ["(", [], {}, -1, 99, 1.5, None, True, "x", 10**9, [0], float("nan")]
LENGTH_KEYS = {"length", "seq_len", "context_length", "max_length", "min_length", "num_kv_pairs", "eval_examples",
               "eval_batch_size", "num_data_tokens", "eval_batches", "d_model", "vocab_size", "batch_size",
               "n_heads", "d_state", "expand", "n_experts", "top_k", "window", "alphabet", "blocks", "layers"}


def walk(data: Any, prefix: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """Every (path, value) below the root, depth first."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else []
    for k, v in items:
        yield prefix + (k,), v
        yield from walk(v, prefix + (k,))


def dotted(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def get(data: Any, path: Path_) -> Any:
    for p in path:
        data = data[p]
    return data


def put(data: Any, path: Path_, value: Any) -> Any:
    data = copy.deepcopy(data)
    node = data
    for p in path[:-1]:
        if isinstance(node, dict) and p not in node:
            node[p] = {}
        node = node[p]
    node[path[-1]] = value
    return data


def delete(data: Any, path: Path_) -> Any:
    data = copy.deepcopy(data)
    del get(data, path[:-1])[path[-1]]
    return data


def rename(data: Any, path: Path_, new: str) -> Any:
    data = copy.deepcopy(data)
    parent = get(data, path[:-1])
    # keep the key order: rebuild the mapping
    items = [(new if k == path[-1] else k, v) for k, v in parent.items()]
    parent.clear()
    parent.update(items)
    return data


def typo(key: str, rng: random.Random) -> str:
    ops = [lambda s, i: s[:i] + s[i + 1:], lambda s, i: s[:i] + s[i] + s[i:],
           lambda s, i: s[:i] + s[i + 1:i + 2] + s[i:i + 1] + s[i + 2:], lambda s, i: s[:i] + s[i].swapcase() + s[i + 1:],
           lambda s, i: s + "s", lambda s, i: s.replace("_", "-") if "_" in s else s + "_"]
    for _ in range(20):
        i = rng.randrange(len(key)) if key else 0
        new = rng.choice(ops)(key, i) if key else "x"
        if new and new != key:
            return new
    return key + "x"


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + f"... ({len(text)} chars)"


def wrong_type(data: Any, rng: random.Random, n: int) -> list[tuple[str, str, Any]]:
    nodes = list(walk(data))
    out = []
    for _ in range(n):
        path, value = rng.choice(nodes)
        choices = [w for w in WRONG_TYPES if type(w) is not type(value)]
        new = rng.choice(choices)
        out.append((dotted(path), f"{show(value)} -> {show(new)}", put(data, path, new)))
    return out


def key_paths(data: Any) -> list[Path_]:
    return [p for p, _ in walk(data) if not isinstance(p[-1], int)]


def misspelt_key(data: Any, rng: random.Random, n: int) -> list[tuple[str, str, Any]]:
    paths = key_paths(data)
    out = []
    for _ in range(n):
        path = rng.choice(paths)
        new = typo(str(path[-1]), rng)
        if new in get(data, path[:-1]):
            continue
        out.append((dotted(path), f"key {path[-1]!r} -> {new!r}", rename(data, path, new)))
    return out


def missing_key(data: Any, rng: random.Random, n: int) -> list[tuple[str, str, Any]]:
    paths = key_paths(data)
    picked = rng.sample(paths, min(n, len(paths)))
    return [(dotted(p), "deleted", delete(data, p)) for p in picked]


def out_of_range(data: Any, rng: random.Random, n: int) -> list[tuple[str, str, Any]]:
    leaves = [(p, v) for p, v in walk(data) if not isinstance(v, (dict, list))]
    numeric = [(p, v) for p, v in leaves if isinstance(v, (int, float)) and not isinstance(v, bool)]
    strings = [(p, v) for p, v in leaves if isinstance(v, str)]
    lists = [(p, v) for p, v in walk(data) if isinstance(v, list) and v]
    out = []
    for _ in range(n):
        pool = rng.choices([numeric, strings, lists], weights=[6, 2, 1])[0] or numeric or strings or leaves
        path, value = rng.choice(pool)
        if isinstance(value, list):
            new = rng.choice([[], value * 20, [value[0]] * 3])
        elif isinstance(value, str):
            new = rng.choice(STRINGS)
        else:
            new = rng.choice(NUMBERS)
        out.append((dotted(path), f"{show(value)} -> {show(new)}", put(data, path, new)))
    return out


def broken_strings(text: str) -> list[str]:
    """Layout strings a typo away from `text`."""
    return [text + " )", "(" + text, text.replace(")", "", 1) if ")" in text else text + " ((", text + " x0",
            text + " x", "x3 " + text, text + " x-1", text + " *0", text + " x" + "9" * 5000, text + " x1.5", "", "   ",
            text + " Q", text + " 3", text + " x2 x2", text + " (", "()", "(()) x2", text + " M#1", text + " \u00e9",
            text + " ${x}", "M" * 5000, text + " [A]", text + " {}", text + " M,F", "(" * 300 + text + ")" * 300,
            "(" * 5000, text + " **3"]


def huge_strings(text: str) -> list[str]:
    return ["M x99999999", f"({text}) x99999999", f"(({text}) x100000) x100000", f"{text} x{2**64}",
            f"((({text}) x1000) x1000) x1000", f"{text} *4000000000", " ".join([text] * 200) + " x20000"]


def layout_nodes(data: Any) -> list[tuple[Path_, Any]]:
    """Layout strings and shorthands: model.layout, shared bodies, blocks, sweep axis values of model.layout."""
    out = []
    for path, value in walk(data):
        last = str(path[-1])
        if last in ("layout", "model.layout", "block") or (len(path) >= 2 and path[-2] == "shared"):
            out.append((path, value))
    return out


def broken_layout(data: Any, rng: random.Random, n: int) -> list[tuple[str, str, Any]]:
    nodes = layout_nodes(data) or [(("model", "layout"), "(A F) x2")]
    out = []
    for _ in range(n):
        path, value = rng.choice(nodes)
        if isinstance(value, dict):  # a shorthand: break one of its settings
            inner = [(p, v) for p, v in walk(value)] or [(("blocks",), None)]
            sub, old = rng.choice(inner)
            new = rng.choice(BROKEN_SHORTHAND)
            out.append((dotted(path + sub), f"{show(old)} -> {show(new)}", put(data, path + sub, new)))
            continue
        text = value if isinstance(value, str) else " ".join(map(str, value)) if isinstance(value, list) else "A F"
        new = rng.choice(broken_strings(text))
        out.append((dotted(path), f"{show(value)} -> {show(new)}", put(data, path, new)))
    return out


def huge_count(data: Any, rng: random.Random, n: int) -> list[tuple[str, str, Any]]:
    layouts = [(p, v) for p, v in layout_nodes(data) if isinstance(v, (str, list))]
    shorthands = [(p + (k,), v[k]) for p, v in layout_nodes(data) if isinstance(v, dict) for k in ("blocks",) if k in v]
    shorthands += [(p + ("ratio", "layers"), 0) for p, v in layout_nodes(data) if isinstance(v, dict) and "ratio" in v]
    sizes = [(p, v) for p, v in walk(data) if str(p[-1]) in LENGTH_KEYS and isinstance(v, int)]
    sizes += [(p + (i,), x) for p, v in walk(data) if str(p[-1]) == "eval_lengths" and isinstance(v, list)
              for i, x in enumerate(v)]
    out = []
    for _ in range(n):
        pool = rng.choices([layouts, shorthands, sizes], weights=[4, 1, 3])[0] or layouts or sizes
        if not pool:  # nothing to grow: add a huge layout
            out.append(("model.layout", "added 'M x99999999'",
                        put(put(data, ("model", "layout"), "M x99999999"), ("model", "layers", "M"), "mamba")))
            continue
        path, value = rng.choice(pool)
        if isinstance(value, (str, list)):
            text = value if isinstance(value, str) else " ".join(map(str, value))
            new: Any = rng.choice(huge_strings(text))
        else:
            new = rng.choice(HUGE)
        out.append((dotted(path), f"{show(value)} -> {show(new)}", put(data, path, new)))
    return out


def shared_explosion(data: Any) -> tuple[str, str, Any]:
    """A shared block used 5000 times whose body is 5000 sublayers: 25M after expansion."""
    mutated = put(data, ("model", "shared"), {"Z5": "(A F) x2500"})
    mutated = put(mutated, ("model", "layout"), "Z5 x5000")
    return "model.shared", "Z5: '(A F) x2500' used 'Z5 x5000'", mutated


KINDS = {"wrong_type": wrong_type, "misspelt_key": misspelt_key, "missing_key": missing_key,
         "out_of_range": out_of_range, "broken_layout": broken_layout, "huge_count": huge_count}
