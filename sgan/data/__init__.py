"""Data: saliency masks, PASCAL VOC layout loaders, seeds."""
from sgan.data.saliency import saliency_to_mask

__all__ = ["saliency_to_mask"]
