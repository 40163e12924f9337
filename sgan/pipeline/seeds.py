"""Stage 1: dense seeds from the SGAN CAM (+ seed branch), fg >= alpha * max, bg saliency < beta -> seeds/."""
from sgan.models.compute import COMPUTE_CHOICES, COMPUTE_DEFAULTS
from sgan.pipeline._stage1 import write_seeds
from sgan.seedmaps import SEED_RESOLUTIONS, SEED_RULES

STEP = "seeds"

SECTION = dict(defaults={
    "checkpoint": "ckpt/sgan.pt", "out_dir": "seeds", "alpha": 0.2, "beta": 0.06, "rule": "paper",
    "use_seed_branch": False, "scales": [1.0], "flip": False, "resolution": "image", **COMPUTE_DEFAULTS,
}, choices={"rule": SEED_RULES, "resolution": SEED_RESOLUTIONS, **COMPUTE_CHOICES},
    bounds={"alpha": "(0, 1]", "beta": "[0, 1]", "scales": "(0, inf)"},
    doc="final seeds (rules in sgan.seedmaps); the paper: alpha 0.2, rule paper, CAM only, resolution image; "
        "the authors: alpha 0.25, rule authors, use_seed_branch true, resolution feature. checkpoint "
        "may be any stage-0/1 checkpoint (ckpt/cam.pt gives the Baseline's seeds); precision and memory_format "
        "of sgan.models.compute")


def run(cfg):
    write_seeds(cfg, "seeds", STEP)
