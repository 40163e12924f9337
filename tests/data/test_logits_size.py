"""Seeds and images at the logits' size (sgan/data/logits_size.py)."""
import torch

from sgan.data.logits_size import resize_seeds


def test_resize_seeds_is_nearest():
    seeds = torch.arange(12 * 10).reshape(1, 12, 10) % 256
    resized = resize_seeds(seeds, (4, 5))
    rows, cols = torch.arange(4) * 12 // 4, torch.arange(5) * 10 // 5
    assert torch.equal(resized[0], seeds[0][rows][:, cols])
    assert resized.dtype == torch.int64
