"""The shared rule for an op's `backend` argument: a named backend, or "auto", which an
environment variable may replace for a whole run (for ablations and debugging)."""
from __future__ import annotations

import importlib
import os
from typing import Callable


def requested_backend(backend: str, choices: tuple[str, ...], env_var: str, op: str) -> str:
    """`backend`, or for "auto" the value of `env_var` when set; "auto" remains for the op to resolve."""
    if backend not in choices:
        raise ValueError(f"{op} backend must be one of {', '.join(choices)}; got {backend!r}")
    if backend == "auto":
        backend = os.environ.get(env_var, "auto")
        if backend not in choices:
            raise ValueError(f"environment variable {env_var} must be one of {', '.join(choices)}; got {backend!r}")
    return backend


def load_backend(table: dict[str, tuple[str, str]], backend: str, op: str) -> Callable:
    """The function `table[backend]` = (module, name), imported on first use (a Triton module only
    when it is chosen), or a RuntimeError naming the op when its module does not import."""
    module, name = table[backend]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as err:
        raise RuntimeError(f"{op} backend {backend!r} is unavailable: {err}") from err
