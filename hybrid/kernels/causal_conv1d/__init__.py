"""Causal depthwise conv1d (optional fused SiLU): public entry points and their references."""
from hybrid.kernels.causal_conv1d.api import (BACKENDS, causal_conv1d, causal_conv1d_continue, causal_conv1d_update,
                                              resolve_backend)
from hybrid.kernels.causal_conv1d.reference import causal_conv1d_ref, causal_conv1d_torch, causal_conv1d_update_ref

__all__ = ["BACKENDS", "causal_conv1d", "causal_conv1d_continue", "causal_conv1d_ref", "causal_conv1d_torch", "causal_conv1d_update",
           "causal_conv1d_update_ref", "resolve_backend"]
