"""Selective scan (Mamba-1 S6): public entry points and their references."""
from hybrid.kernels.selective_scan.api import BACKENDS, resolve_backend, selective_scan, selective_state_update
from hybrid.kernels.selective_scan.reference import selective_scan_ref, selective_state_update_ref
from hybrid.kernels.selective_scan.torch_scan import selective_scan_torch

__all__ = ["BACKENDS", "resolve_backend", "selective_scan", "selective_state_update", "selective_scan_torch",
           "selective_scan_ref", "selective_state_update_ref"]
