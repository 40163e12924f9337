"""Networks of SGAN."""
from sgan.models.attention import SaliencyGuidedAttention
from sgan.models.deeplab import DeepLabResNet101, DeepLabVGG16, load_pretrained
from sgan.models.sgan_net import CAMNet, SGANNet, build_network, network_from_info
from sgan.models.vgg import VGG16Stride8

__all__ = ["CAMNet", "DeepLabResNet101", "DeepLabVGG16", "SGANNet", "SaliencyGuidedAttention", "VGG16Stride8",
           "build_network", "load_pretrained", "network_from_info"]
