"""Networks of SGAN."""
from sgan.models.attention import SaliencyGuidedAttention
from sgan.models.deeplab import DeepLabResNet101, DeepLabVGG16, load_pretrained

__all__ = ["DeepLabResNet101", "DeepLabVGG16", "SaliencyGuidedAttention", "load_pretrained"]
