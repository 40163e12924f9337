"""Networks of SGAN."""
from sgan.models.attention import SaliencyGuidedAttention

__all__ = ["SaliencyGuidedAttention"]
