"""Linear layer + cross-entropy in row chunks: the LM head's loss without a full logits tensor."""
from hybrid.kernels.linear_cross_entropy.api import linear_cross_entropy
from hybrid.kernels.linear_cross_entropy.reference import linear_cross_entropy_ref

__all__ = ["linear_cross_entropy", "linear_cross_entropy_ref"]
