"""The PASCAL VOC 2012 facts the whole package shares (their one home): the class names and their
label indices, the class counts, the column heads of the paper's tables, the colour map of the
label PNGs and the label of unlabelled (in ground truth: ignored) pixels.

Label maps (ground truth, seeds, predictions) hold 0 = background, k in 1..20 = CLASS_NAMES[k - 1]
and IGNORE_INDEX = 255 where a pixel has no label (VOC's void band, an unlabelled seed).
"""

CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
"""The 20 foreground classes in VOC order: label k in 1..20 is ``CLASS_NAMES[k - 1]``."""

NUM_CLASSES = len(CLASS_NAMES)  # 20 foreground classes: the CAM / seed channels of stage 1
CLASS_NAMES_WITH_BACKGROUND = ("background",) + CLASS_NAMES  # the name of label k in 0..20
NUM_CLASSES_WITH_BACKGROUND = len(CLASS_NAMES_WITH_BACKGROUND)  # 21: stage-2 logits, the metrics' classes

SHORT_NAMES = ("bkg", "aero", "bike", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "table", "dog", "horse", "mbike", "person", "plant", "sheep", "sofa",
               "train", "tv")
"""Column heads of the paper's per-class tables, label 0 (background) first."""

IGNORE_INDEX = 255  # no label: ignored in ground truth, unlabelled in seeds


def voc_palette():
    """The PASCAL VOC colour map as a fresh flat list of 768 ints (256 RGB triples; index 255, the
    void colour, is (224, 224, 192)), as PIL's ``putpalette`` takes it."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        code = index
        for bit in range(8):
            red |= ((code >> 0) & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette.extend((red, green, blue))
    return palette
