"""Saliency-guided self-attention: public API, reference and backend dispatch."""
from sgan.ops.attention.function import (
    PRESETS,
    attention_column,
    fused_backends,
    resolve_options,
    saliency_attention,
)
from sgan.ops.attention.reference import attention_weights_reference, saliency_attention_reference

__all__ = [
    "PRESETS",
    "attention_column",
    "attention_weights_reference",
    "fused_backends",
    "resolve_options",
    "saliency_attention",
    "saliency_attention_reference",
]
