"""Stage 1: baseline CAM >= alpha * max (0.3) and saliency < beta (0.06) -> seeds0/*.png."""
from sgan.models.compute import COMPUTE_CHOICES, COMPUTE_DEFAULTS
from sgan.pipeline._stage1 import write_seeds
from sgan.seedmaps import SEED_RULES

STEP = "initial-seeds"

SECTION = dict(defaults={
    "checkpoint": "ckpt/cam.pt", "out_dir": "seeds0", "alpha": 0.3, "beta": 0.06, "rule": "paper",
    "scales": [1.0], "flip": False, **COMPUTE_DEFAULTS,
}, choices={"rule": SEED_RULES, **COMPUTE_CHOICES}, bounds={"alpha": "(0, 1]", "beta": "[0, 1]", "scales": "(0, inf)"},
    doc="sparse initial seeds from the baseline CAM; scales are relative to data.input_size; precision and "
        "memory_format of sgan.models.compute")


def run(cfg):
    write_seeds(cfg, "initial_seeds", STEP)
