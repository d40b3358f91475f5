"""A peer's function, imported from mamba_ssm's sources in a folder given on the command line."""
from __future__ import annotations

import importlib
import sys
from typing import Callable


def peer_function(peer: str | None, module: str, name: str) -> tuple[Callable | None, str | None]:
    """(`module.name` from the mamba_ssm sources in `peer`, None), or (None, a note saying why not);
    (None, None) when no peer is asked for."""
    if peer is None:
        return None, None
    sys.path.insert(0, peer)
    try:
        return getattr(importlib.import_module(module), name), None
    except ImportError as err:
        return None, f"mamba_ssm not importable from {peer}: {err}"
