"""SSD, the selective state-space scan of Mamba-2 (Dao & Gu 2024): reference, chunked PyTorch."""
from hybrid.kernels.ssd.api import BACKENDS, resolve_backend, ssd, ssd_packed, ssd_state_update
from hybrid.kernels.ssd.chunked import ssd_chunked
from hybrid.kernels.ssd.reference import ssd_ref, ssd_state_update_ref

__all__ = ["BACKENDS", "resolve_backend", "ssd", "ssd_chunked", "ssd_packed", "ssd_ref", "ssd_state_update",
           "ssd_state_update_ref"]
