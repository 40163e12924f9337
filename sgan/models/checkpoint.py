"""Activation checkpointing of the networks' blocks, for training at larger inputs.

A checkpointed block keeps only its input for the backward pass and runs its forward again there
(torch.utils.checkpoint, non-reentrant) instead of keeping every activation inside it. The
recomputation replays the random state of the forward pass (torch's default), so a dropout inside
a block draws the same mask twice and the gradients equal those without checkpointing.

The backbones' convolutions and max pools are :class:`StripWeightGradConv2d` and
:class:`StripMaxPool2d` when checkpointing, and a VGG block's last ReLU is
:func:`relu_keeping_mask_`. In bfloat16 or float16 the backward passes of the pools and of the
convolutions larger than ``WHOLE_LAYER_BYTES`` run over strips of rows in float32: oneDNN computes a
convolution's weight gradient from a float32 copy of the whole input (64 channels at 1281² in
bfloat16: 200 MiB, 400 MiB in float32), and a max pool keeps int64 indices, four times its bfloat16
output (docs/larger-inputs.md). float32 and float64 keep PyTorch's layers, so their gradients stay
bit for bit those without checkpointing.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

STRIP_BYTES = 16 * 2 ** 20  # float32 bytes of a strip: a convolution's input or output gradient, a pool's input
WHOLE_LAYER_BYTES = 64 * 2 ** 20  # a convolution no larger than this in float32 runs PyTorch's own backward
REDUCED_PRECISION = (torch.bfloat16, torch.float16)


def relu_keeping_mask_(x):
    """torch.relu_(x) whose backward keeps the mask not (x <= 0), packed eight to a byte, instead of the
    output: for the last ReLU of a checkpointed block, whose output nothing else keeps during the
    block's backward pass (the next block has given back its own input by then), so that the output
    is freed after the recomputation. The gradient is bit for bit ReLU's (zero where x <= 0; a NaN
    passes its gradient). x: a contiguous or channels-last tensor (other layouts: torch.relu_).

    Example::

        >>> x = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
        >>> y = relu_keeping_mask_(x * 1)
        >>> y.sum().backward()
        >>> y.tolist(), x.grad.tolist()
        ([0.0, 0.0, 2.0], [0.0, 0.0, 1.0])
    """
    if _memory_order(x) is None:
        return torch.relu_(x)
    return _ReLUKeepingMask.apply(x)


MASK_CHUNK = 2 ** 23  # elements packed or unpacked at a time (a multiple of 8)
_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)


def _memory_order(t):
    """t's elements as a 1-D view in memory order, or None when t is neither contiguous nor
    channels-last."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)
    return None


class _ReLUKeepingMask(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        flat = _memory_order(x)
        bits = torch.empty((flat.numel() + 7) // 8, dtype=torch.uint8, device=x.device)
        for first in range(0, flat.numel(), MASK_CHUNK):
            chunk = ~(flat[first:first + MASK_CHUNK] <= 0)  # as ReLU's backward: NaN passes its gradient
            chunk = F.pad(chunk.to(torch.uint8), (0, (-chunk.numel()) % 8))
            bits[first // 8:first // 8 + chunk.numel() // 8] = (
                chunk.view(-1, 8) << _BIT_SHIFTS.to(x.device)).sum(1, dtype=torch.uint8)
        ctx.save_for_backward(bits)
        ctx.channels_last = not x.is_contiguous()
        ctx.mark_dirty(x)
        return torch.relu_(x)

    @staticmethod
    def backward(ctx, grad_out):
        (bits,) = ctx.saved_tensors
        grad_out = grad_out.contiguous(memory_format=torch.channels_last if ctx.channels_last
                                       else torch.contiguous_format)
        grad_in = torch.empty_like(grad_out)
        flat_out, flat_in = _memory_order(grad_out), _memory_order(grad_in)
        for first in range(0, flat_out.numel(), MASK_CHUNK):
            grad = flat_out[first:first + MASK_CHUNK]
            chunk_bits = bits[first // 8:(first + grad.numel() + 7) // 8]
            mask = ((chunk_bits.unsqueeze(1) >> _BIT_SHIFTS.to(bits.device)) & 1).bool().view(-1)[:grad.numel()]
            flat_in[first:first + grad.numel()] = torch.where(mask, grad, 0)
        return grad_in


def run_block(block, x, checkpointing):
    """block(x), checkpointed when ``checkpointing`` and gradients are being recorded."""
    if checkpointing and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x)


def run_blocks(blocks, x, checkpointing):
    """x through the callables ``blocks`` in turn, each one checkpointed on its own (:func:`run_block`)."""
    for block in blocks:
        x = run_block(block, x, checkpointing)
    return x


class StripWeightGradConv2d(nn.Conv2d):
    """nn.Conv2d (stride 1, one group, output as large as the input) whose weight and bias gradients,
    for a bfloat16/float16 computation (the inputs' dtype, or autocast's), are float32 sums over
    strips of output rows of at most ``STRIP_BYTES``, each strip's float32 input and output gradient
    converted from the computation's values, rounded once to the computation's dtype at the end:
    within one unit in the last place of the float64 gradients of the same values (in bfloat16 also
    of nn.Conv2d's, whose oneDNN kernel sums in float32 too, in another order), the output and the
    input gradient bit for bit nn.Conv2d's, and no float32 copy of a whole activation is made. A
    layer of at most ``WHOLE_LAYER_BYTES`` in float32 takes PyTorch's own backward kernel (in the
    computation's dtype, faster than float32 strips). Other dtypes and settings run nn.Conv2d.

    Example::

        >>> conv = StripWeightGradConv2d(3, 8, 3, padding=1)
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     out = conv(torch.randn(1, 3, 20, 20))
        >>> out.float().sum().backward()
        >>> out.dtype, conv.weight.grad.dtype
        (torch.bfloat16, torch.float32)
    """

    def forward(self, x):
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        same_size = all(p * 2 == d * (k - 1) for p, d, k in zip(self.padding, self.dilation, self.kernel_size))
        if (dtype not in REDUCED_PRECISION or not torch.is_grad_enabled() or self.groups != 1
                or self.stride != (1, 1) or self.padding_mode != "zeros" or not same_size):
            return super().forward(x)
        bias = self.bias.to(dtype) if self.bias is not None else None
        with torch.autocast(x.device.type, enabled=False):
            return _StripWeightGrad.apply(x.to(dtype), self.weight.to(dtype), bias, self.padding, self.dilation)


class _StripWeightGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.padding, ctx.dilation = bias is not None, padding, dilation
        return F.conv2d(x, weight, bias, 1, padding, dilation)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        padding, dilation = list(ctx.padding), list(ctx.dilation)
        wanted = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias]
        bias_sizes = [weight.shape[0]] if ctx.has_bias else None
        if _float32_bytes(grad_out, x) <= WHOLE_LAYER_BYTES:  # PyTorch's own kernel, in the computation's dtype
            grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad_out, x, weight, bias_sizes, [1, 1], padding, dilation, False, [0, 0], 1, wanted)
            return grad_x, grad_weight, grad_bias, None, None
        grad_x = grad_weight = grad_bias = None
        if wanted[0]:
            grad_x = torch.ops.aten.convolution_backward(grad_out, x, weight, None, [1, 1], padding, dilation, False,
                                                         [0, 0], 1, [True, False, False])[0]
        if wanted[1] or wanted[2]:
            grad_weight, grad_bias = _strip_weight_grad(grad_out, x, weight, padding, dilation)
            grad_weight = grad_weight.to(weight.dtype)
            grad_bias = grad_bias.to(weight.dtype) if ctx.has_bias else None
        return grad_x, grad_weight, grad_bias, None, None


def _float32_bytes(grad_out, x):
    """Bytes of the larger of the input and the output gradient in float32."""
    return 4 * max(x.numel(), grad_out.numel())


def _strip_rows(grad_out, x):
    """Output rows per strip of the weight gradient: at most ``STRIP_BYTES`` of float32 input or
    output gradient."""
    return max(1, STRIP_BYTES * x.shape[2] // _float32_bytes(grad_out, x))


def _strip_weight_grad(grad_out, x, weight, padding, dilation):
    """float32 (weight gradient, bias gradient) summed over strips of output rows. Output row o reads
    input rows o - padding + dilation·i (i < kernel height); rows outside the input are zeros."""
    height = x.shape[2]
    reach = dilation[0] * (weight.shape[2] - 1)
    rows = _strip_rows(grad_out, x)
    weight32 = weight.float()
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=x.device)
    grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=x.device)
    for first in range(0, height, rows):
        last = min(first + rows, height)
        top, bottom = first - padding[0], last - padding[0] + reach  # input rows [top, bottom)
        strip = x[:, :, max(top, 0):min(bottom, height)].float()
        if top < 0 or bottom > height:
            strip = F.pad(strip, (0, 0, max(-top, 0), max(bottom - height, 0)))
        _, strip_weight, strip_bias = torch.ops.aten.convolution_backward(
            grad_out[:, :, first:last].float(), strip, weight32, [weight.shape[0]], [1, 1], [0, padding[1]],
            dilation, False, [0, 0], 1, [False, True, True])
        grad_weight += strip_weight
        grad_bias += strip_bias
    return grad_weight, grad_bias


class StripMaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d (dilation 1, windows at least as tall as their stride, no indices returned) that,
    for bfloat16/float16 inputs with gradients, keeps only its input for the backward pass and finds
    each window's maximum again there, over strips of output rows of at most ``STRIP_BYTES``: no
    int64 indices live from the forward to the backward pass. Each window's maximum is the one
    nn.MaxPool2d takes (the same kernel on the same values); an input element's gradient, the sum
    over the windows whose maximum it is, is added in float32 and rounded once (within half a unit in
    the last place of the exact sum). Other dtypes run nn.MaxPool2d.

    Example::

        >>> pool = StripMaxPool2d(3, stride=2, padding=1)
        >>> x = torch.randn(1, 4, 9, 9, dtype=torch.bfloat16, requires_grad=True)
        >>> pool(x).float().sum().backward()
        >>> pool(x).shape, x.grad.dtype
        (torch.Size([1, 4, 5, 5]), torch.bfloat16)
    """

    def forward(self, x):
        kernel, stride = _pair(self.kernel_size), _pair(self.stride or self.kernel_size)
        if (x.dtype not in REDUCED_PRECISION or not torch.is_grad_enabled() or not x.requires_grad
                or self.return_indices or self.dilation not in (1, (1, 1)) or kernel[0] < stride[0]):
            return super().forward(x)
        return _StripMaxPool.apply(x, kernel, stride, _pair(self.padding), self.ceil_mode)


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class _StripMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, stride, padding, ceil_mode):
        ctx.save_for_backward(x)
        ctx.kernel, ctx.stride, ctx.padding, ctx.ceil_mode = kernel, stride, padding, ceil_mode
        rows, columns = (_pooled_size(x.shape[2 + d], kernel[d], stride[d], padding[d], ceil_mode) for d in (0, 1))
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        out = torch.empty((x.shape[0], x.shape[1], rows, columns), dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for first, last, top, bottom in _pool_strips(x, rows, kernel, stride, padding):
            out[:, :, first:last] = F.max_pool2d(_pool_strip(x, top, bottom), kernel, stride, [0, padding[1]],
                                                 ceil_mode=ceil_mode)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return _strip_max_pool_grad(grad_out, x, ctx.kernel, ctx.stride, ctx.padding, ctx.ceil_mode), \
            None, None, None, None


def _pooled_size(size, kernel, stride, padding, ceil_mode):
    """nn.MaxPool2d's output size along one dimension (dilation 1): with ceil_mode, a last window
    that would start in the padding is dropped."""
    span = size + 2 * padding - kernel + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _pool_strips(x, out_rows, kernel, stride, padding):
    """(first, last, top, bottom) per strip of output rows [first, last) of at most ``STRIP_BYTES`` of
    float32 input: output row o reads input rows [o·stride - padding, o·stride - padding + kernel),
    so the strip reads [top, bottom)."""
    rows = max(1, STRIP_BYTES // (4 * x.shape[0] * x.shape[1] * x.shape[3] * max(1, stride[0])))
    for first in range(0, out_rows, rows):
        last = min(first + rows, out_rows)
        yield first, last, first * stride[0] - padding[0], (last - 1) * stride[0] - padding[0] + kernel[0]


def _pool_strip(x, top, bottom, dtype=None):
    """Input rows [top, bottom) of x (in ``dtype``), rows outside x being -inf (never a maximum, as
    nn.MaxPool2d's padding)."""
    height = x.shape[2]
    strip = x[:, :, max(top, 0):min(bottom, height)].to(dtype or x.dtype)
    if top < 0 or bottom > height:
        strip = F.pad(strip, (0, 0, max(-top, 0), max(bottom - height, 0)), value=float("-inf"))
    return strip


def _strip_max_pool_grad(grad_out, x, kernel, stride, padding, ceil_mode):
    """The max pool's input gradient, strip by strip (_pool_strips). A strip's float32 gradient is exact
    for the rows only it reaches; the kernel - stride rows it shares with the next strip are carried
    over in float32 and rounded once the next strip has added its part."""
    height = x.shape[2]
    out_rows = grad_out.shape[2]
    grad_x = torch.empty_like(x)
    carry = None  # float32 rows shared with the previous strip, (B, C, overlap, W)
    for first, last, top, bottom in _pool_strips(x, out_rows, kernel, stride, padding):
        strip = _pool_strip(x, top, bottom, torch.float32)
        _, indices = torch.ops.aten.max_pool2d_with_indices(strip, list(kernel), list(stride), [0, padding[1]],
                                                           [1, 1], ceil_mode)
        strip_grad = torch.ops.aten.max_pool2d_with_indices_backward(
            grad_out[:, :, first:last].float(), strip, list(kernel), list(stride), [0, padding[1]], [1, 1],
            ceil_mode, indices)
        strip_grad = strip_grad[:, :, max(-top, 0):strip_grad.shape[2] - max(bottom - height, 0)]
        begin = max(top, 0)  # strip_grad's first row in x
        if carry is not None:
            strip_grad[:, :, :carry.shape[2]] += carry
        next_top = last * stride[0] - padding[0]
        keep = max(0, min(bottom, height) - max(next_top, begin)) if last < out_rows else 0
        done = strip_grad.shape[2] - keep
        grad_x[:, :, begin:begin + done] = strip_grad[:, :, :done]
        carry = strip_grad[:, :, done:].clone() if keep else None
    covered = min(bottom, height)
    if covered < height:  # rows no window reaches
        grad_x[:, :, covered:] = 0
    return grad_x
