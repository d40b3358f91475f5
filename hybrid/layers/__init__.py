"""Built-in layers; importing this package registers them."""
from hybrid.layers import attention, mamba, mamba2, mlp, moe, s4d  # noqa: F401  (registration side effects)
