"""Plain PyTorch reference of the boundary KL statistics (docs/design.md §3), differentiated by autograd.

It computes in the accumulation dtype (float64 for float64 logits, else float32) and materialises the
floored softmax; the fused backends compute the same per-image sums without that tensor.
"""
from sgan.ops.dispatch import accumulation_dtype
from sgan.ops.softmax import floor_and_renormalise, floored_softmax


def boundary_kl_sums_reference(logits, target, floor, ratio_min, ratio_max):
    """Per-image sums over positions of sum_c R log clip(R / Phi, ratio_min, ratio_max), (B,).

    logits, target: (B, C, h, w); R = target floored and renormalised (a constant), Phi the
    floored softmax of the logits.
    """
    acc = accumulation_dtype(logits.dtype)
    probs = floored_softmax(logits, floor)
    reference = floor_and_renormalise(target.detach().to(acc), floor)
    kl = (reference * (reference / probs).clamp(ratio_min, ratio_max).log()).sum(1)
    return kl.sum((1, 2))
