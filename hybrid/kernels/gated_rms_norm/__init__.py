"""Mamba-2's gated RMSNorm: public entry point and its reference."""
from hybrid.kernels.gated_rms_norm.api import BACKENDS, gated_rms_norm, resolve_backend
from hybrid.kernels.gated_rms_norm.reference import gated_rms_norm_ref

__all__ = ["BACKENDS", "gated_rms_norm", "gated_rms_norm_ref", "resolve_backend"]
