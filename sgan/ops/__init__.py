"""Public operators of SGAN."""
from sgan.ops.attention import attention_column, saliency_attention

__all__ = ["attention_column", "saliency_attention"]
