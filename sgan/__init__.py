"""SGAN: Saliency Guided Self-attention Network with fused kernels."""

__version__ = "0.1.0"
