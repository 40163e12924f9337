"""Corner-aligned resizing, value for value what the authors' ``scipy.ndimage.zoom`` gives (docs/design.md §5).

The authors resize images, saliency maps and label maps with ``scipy.ndimage.zoom`` (order 1 or 0,
its default ``mode="constant"``, ``grid_mode=False``). Stated in our words, for one axis of input
length n resized to length m:

- output k reads the input at x_k = k · ((n − 1) / (m − 1)) (first and last samples aligned: this
  is ``align_corners=True``); the step is one double division, the position one double product;
- bilinear (order 1): i = floor(x_k), f = x_k − i, weights w0 = 1 − f and w1 = 1 − w0 on samples i
  and i + 1. In 2-D the value is ((v00·wy0)·wx0 + (v01·wy0)·wx1) + (v10·wy1)·wx0 + (v11·wy1)·wx1,
  summed in that order in float64 — the order matters where the exact value ends in .5 and is then
  rounded to an integer;
- nearest (order 0): sample floor(x_k + 0.5);
- a position past the last sample (x_k > n − 1, which k · step can be by one ulp for the last k,
  e.g. n = 41, m = 282) gets the value 0 in the whole row or column, as scipy's constant mode does;
- the result has the input's dtype: an integer output is rounded half up (floor(t + 0.5), clipped
  to the type's range for uint8), float32 is the float64 value rounded once.

A channel axis zoomed by 1 (an (H, W, 3) image) leaves each channel to itself, so the image is
resized channel by channel here. Everything is computed with torch (CPU or the input's device);
numpy inputs come back as numpy arrays.
"""
import numpy as np
import torch


def _positions(in_len, out_len, device):
    """Float64 source positions k · (in − 1)/(out − 1) of the out_len outputs, and where they overrun."""
    step = (in_len - 1) / (out_len - 1) if out_len > 1 else 1.0
    positions = torch.arange(out_len, dtype=torch.float64, device=device) * step
    return positions, positions > in_len - 1


def _as_tensor(x):
    if isinstance(x, np.ndarray):
        readable = x if x.flags.writeable and x.flags.c_contiguous else np.array(x)   # torch wants writable
        return torch.from_numpy(readable), True
    if isinstance(x, torch.Tensor):
        return x, False
    raise TypeError(f"expected a numpy array or a torch tensor, got {type(x).__name__}")


def _check_size(x, size):
    if x.dim() < 2 or x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"expected a non-empty array (..., H, W), got shape {tuple(x.shape)}")
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size)):
        raise ValueError(f"size: expected a pair of positive ints (h, w), got {size!r}")
    return int(size[0]), int(size[1])


def _to_dtype(values, dtype):
    """float64 values -> ``dtype`` as scipy stores them (integers rounded half up, uint8 clipped)."""
    if dtype.is_floating_point:
        return values.to(dtype)
    rounded = torch.where(values > 0, values + 0.5, values - 0.5).trunc()
    if dtype == torch.uint8:
        rounded = rounded.clamp(0, 255)
    return rounded.to(dtype)


def zoom_linear(x, size):
    """Corner-aligned bilinear resize of ``x`` (..., H, W) to (..., h, w) (module doc); same type and dtype."""
    tensor, was_numpy = _as_tensor(x)
    h, w = _check_size(tensor, size)
    in_h, in_w = tensor.shape[-2:]
    values = tensor.to(torch.float64)
    taps = []
    for in_len, out_len in ((in_h, h), (in_w, w)):
        positions, overrun = _positions(in_len, out_len, tensor.device)
        start = positions.floor()
        w0 = 1.0 - (positions - start)
        w1 = 1.0 - w0
        first = start.long().clamp(0, in_len - 1)
        second = first + 1
        # past the edge scipy mirrors the second tap (weight 0 there): any valid index will do
        second = torch.where(second >= in_len, torch.full_like(second, max(in_len - 2, 0)), second)
        taps.append((first, second, w0, w1, overrun))
    (y0, y1, wy0, wy1, over_y), (x0, x1, wx0, wx1, over_x) = taps
    wy0, wy1 = wy0[:, None], wy1[:, None]
    top, bottom = values.index_select(-2, y0), values.index_select(-2, y1)
    out = (top.index_select(-1, x0) * wy0) * wx0
    out = out + (top.index_select(-1, x1) * wy0) * wx1
    out = out + (bottom.index_select(-1, x0) * wy1) * wx0
    out = out + (bottom.index_select(-1, x1) * wy1) * wx1
    out[..., over_y, :] = 0.0
    out[..., over_x] = 0.0
    out = _to_dtype(out, tensor.dtype)
    return out.numpy() if was_numpy else out


def zoom_nearest(x, size):
    """Corner-aligned nearest-neighbour resize of ``x`` (..., H, W) to (..., h, w) (module doc)."""
    tensor, was_numpy = _as_tensor(x)
    h, w = _check_size(tensor, size)
    out = tensor
    for axis, (in_len, out_len) in zip((-2, -1), ((tensor.shape[-2], h), (tensor.shape[-1], w))):
        positions, overrun = _positions(in_len, out_len, tensor.device)
        index = (positions + 0.5).floor().long().clamp(0, in_len - 1)
        out = out.index_select(axis, index)
        if bool(overrun.any()):
            out = out.clone()
            if axis == -2:
                out[..., overrun, :] = 0
            else:
                out[..., overrun] = 0
    return out.numpy() if was_numpy else out
