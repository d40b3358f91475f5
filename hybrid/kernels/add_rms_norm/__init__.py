"""The residual add fused with the next sublayer's RMSNorm: public entry point and its reference."""
from hybrid.kernels.add_rms_norm.api import BACKENDS, add_rms_norm, resolve_backend
from hybrid.kernels.add_rms_norm.reference import add_rms_norm_ref

__all__ = ["BACKENDS", "add_rms_norm", "add_rms_norm_ref", "resolve_backend"]
