"""The saliency-guided self-attention module (1x1-conv key and query, learnable gamma)."""
import torch
from torch import nn

from sgan.ops.attention import resolve_options, saliency_attention


class SaliencyGuidedAttention(nn.Module):
    """E = gamma * D(K, Q, mask) X + X with K, Q 1x1 convolutions of X (docs/design.md §2).

    channels: C of the input; key_channels: Ck (default C // 2, the authors' choice; the paper
    uses C). ``forward(x, saliency_mask)``: x (B, C, H, W), saliency_mask (B, H, W) bool.

    ``preset="official"`` (the default) keeps the weights non-negative; ``"paper"`` leaves them signed,
    so a row's weights can sum to about zero and its context blow up (docs/fidelity.md).

    Example::

        >>> module = SaliencyGuidedAttention(512)                  # Ck = 256, preset official, gamma 0
        >>> x = torch.randn(2, 512, 41, 41)
        >>> mask = torch.rand(2, 41, 41) > 0.6                     # salient positions
        >>> torch.equal(module(x, mask), x)                        # gamma starts at 0
        True
    """

    def __init__(self, channels, key_channels=None, preset="official", shift=None, background=None,
                 scale=None, eps=1e-5, backend="auto"):
        super().__init__()
        if not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"channels: expected a positive int, got {channels!r}")
        key_channels = channels // 2 if key_channels is None else key_channels
        if not isinstance(key_channels, int) or key_channels <= 0:
            raise ValueError(f"key_channels: expected a positive int or None, got {key_channels!r}")
        self.preset = preset
        self.shift, self.background = resolve_options(preset, shift, background)
        self.key = nn.Conv2d(channels, key_channels, kernel_size=1)
        self.query = nn.Conv2d(channels, key_channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.scale, self.eps, self.backend = scale, eps, backend

    def forward(self, x, saliency_mask):
        return saliency_attention(x, self.key(x), self.query(x), saliency_mask, self.gamma,
                                  preset=self.preset, shift=self.shift, background=self.background,
                                  scale=self.scale, eps=self.eps, backend=self.backend)

    def extra_repr(self):
        return (f"shift={self.shift}, background={self.background!r}, scale={self.scale}, "
                f"backend={self.backend!r}")
