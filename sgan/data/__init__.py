"""Data: saliency masks, PASCAL VOC layout loaders, seeds."""
from sgan.data.saliency import saliency_to_mask
from sgan.data.voc import (
    VOCPaths,
    VOCTrainSet,
    image_level_labels,
    load_labels,
    normalise,
    read_id_list,
    read_label_mask,
    validate_samples,
)
from sgan.data.voc_classes import NUM_CLASSES

__all__ = ["NUM_CLASSES", "VOCPaths", "VOCTrainSet", "image_level_labels", "load_labels", "normalise",
           "read_id_list", "read_label_mask", "saliency_to_mask", "validate_samples"]
