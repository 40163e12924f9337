"""Options of the networks for larger inputs: activation checkpointing (same gradients to the last bit,
in bf16/fp16 weight gradients in strips within one unit in the last place,
same dropout masks, fewer activations kept) and channels-last (same outputs within float rounding; the
attention operator takes channels-last tensors on every CPU backend)."""
import platform

import pytest
import torch

from bench.child import run_in_child
from sgan.models import checkpoint as checkpoint_module
from sgan.models import compute
from sgan.models.checkpoint import StripMaxPool2d, StripWeightGradConv2d, relu_keeping_mask_
from sgan.models.deeplab import DeepLabResNet101, DeepLabVGG16, ElementwiseDropout
from sgan.models.sgan_net import CAMNet, SGANNet
from sgan.ops.attention import fused_backends, saliency_attention
from tests.helpers import assert_within_reference_error

TINY = {"width": 0.0625, "convs_per_block": [2, 2, 3, 3, 3], "classifier": "authors", "classifier_hidden": 64,
        "dropout": 0.5, "attention_preset": "official", "key_channels": "half", "saliency_threshold": 0.06,
        "saliency_border": True, "saliency_resize": "bilinear", "seed_branch_kernel": 1, "init": "xavier"}
SIDE = 41


def stage1_network(checkpointing):
    return SGANNet(TINY, "sgan", backend="reference", checkpointing=checkpointing)


def stage2_vgg(checkpointing):
    return DeepLabVGG16(width=0.0625, rates=[1, 2], fc_channels=128, dropout=0.5, checkpointing=checkpointing)


def stage2_resnet(checkpointing):
    return DeepLabResNet101(width=0.0625, rates=[1, 2], blocks=[1, 2, 1, 1], checkpointing=checkpointing)


NETWORKS = {"sgan": stage1_network, "deeplab-vgg16": stage2_vgg, "deeplab-resnet101": stage2_resnet}


def inputs(dtype, generator_seed=0):
    generator = torch.Generator().manual_seed(generator_seed)
    images = torch.randn(2, 3, SIDE, SIDE, generator=generator, dtype=torch.float64).to(dtype)
    saliency = torch.randint(0, 256, (2, SIDE, SIDE), generator=generator, dtype=torch.uint8)
    return images, saliency


def forward(network, images, saliency):
    """The network's outputs as one list of tensors (both SGAN heads; the DeepLab logits)."""
    if isinstance(network, (SGANNet, CAMNet)):
        out = network(images, saliency)
        return [out[key] for key in sorted(out)]
    return [network(images)]


def train_step(make, checkpointing, dtype, memory_format=torch.contiguous_format, seed=0, train=True,
               prepare=None):
    """(outputs, parameter gradients) of one forward + backward in train mode (dropout active) or eval
    mode, the weights and the dropout draws fixed by ``seed``; the loss weighs each output element
    differently. prepare(network), if given, runs before the forward."""
    torch.manual_seed(seed)
    network = make(checkpointing).to(dtype=dtype, memory_format=memory_format).train(train)
    if prepare is not None:
        prepare(network)
    if isinstance(network, SGANNet):
        with torch.no_grad():
            network.attention.gamma.fill_(0.3)
    images, saliency = inputs(dtype)
    images = images.contiguous(memory_format=memory_format).requires_grad_(True)
    torch.manual_seed(seed + 1)
    outputs = forward(network, images, saliency)
    loss = sum((out * torch.linspace(-1, 2, out.numel(), dtype=dtype).view(out.shape)).sum() for out in outputs)
    loss.backward()
    grads = [images.grad] + [p.grad for p in network.parameters() if p.grad is not None]
    return [out.detach() for out in outputs], grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_checkpointing_gives_the_same_outputs_and_gradients_to_the_last_bit(name, dtype):
    """Checkpointed blocks recompute the same operations on the same values (dropout masks included:
    SGAN's authors classifier has Dropout2d outside the backbone, DeepLab-VGG's ASPP branches
    ElementwiseDropout inside the checkpointed branches), so float64 and float32 agree bit for bit."""
    plain = train_step(NETWORKS[name], False, dtype)
    checkpointed = train_step(NETWORKS[name], True, dtype)
    for part, got, expected in zip(("outputs", "gradients"), checkpointed, plain):
        assert len(got) == len(expected)
        for index, (a, b) in enumerate(zip(got, expected)):
            assert torch.equal(a, b), f"{name} {part}[{index}]: max difference {float((a - b).abs().max()):.3e}"


def test_checkpointed_aspp_branch_replays_its_dropout_mask():
    """The recomputation of a checkpointed ASPP branch draws the same ElementwiseDropout mask as its
    forward pass: the gradient of fc6 equals the one without checkpointing, and the dropout is active
    (another seed gives another gradient)."""
    network = stage2_vgg(False)
    assert isinstance(network.aspp[0].dropout, ElementwiseDropout) and network.aspp[0].dropout.p == 0.5
    plain = train_step(stage2_vgg, False, torch.float64, seed=3)[1]
    checkpointed = train_step(stage2_vgg, True, torch.float64, seed=3)[1]
    names = [n for n, p in network.named_parameters()]
    fc6 = 1 + names.index("aspp.0.fc6.weight")
    assert torch.equal(checkpointed[fc6], plain[fc6])
    torch.manual_seed(3)
    weights = stage2_vgg(True).double().state_dict()
    redrawn = stage2_vgg(True).double().train()
    redrawn.load_state_dict(weights)
    torch.manual_seed(99)
    images = inputs(torch.float64)[0]
    redrawn(images).mul(torch.linspace(-1, 2, 2 * 21 * 6 * 6, dtype=torch.float64).view(2, 21, 6, 6)).sum().backward()
    assert not torch.equal(redrawn.aspp[0].fc6.weight.grad, plain[fc6])


def saved_bytes(make, checkpointing):
    """Bytes of the tensors autograd keeps for the backward pass of one forward (outside checkpoints)."""
    torch.manual_seed(0)
    network = make(checkpointing).train()
    images, saliency = inputs(torch.float32)
    total = []

    def pack(tensor):
        total.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward(network, images, saliency)
    return sum(total)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_checkpointing_keeps_fewer_activations(name):
    plain, checkpointed = saved_bytes(NETWORKS[name], False), saved_bytes(NETWORKS[name], True)
    assert checkpointed < 0.6 * plain, f"{name}: {checkpointed} bytes kept with checkpointing, {plain} without"


def assert_within_one_ulp(name, got, expected):
    """Elementwise |got - expected| <= one unit in the last place of the larger magnitude, in the
    tensors' dtype (bfloat16: 8 significant bits, float16: 11)."""
    bits = {torch.bfloat16: 8, torch.float16: 11}[expected.dtype]
    got, expected = got.double(), expected.double()
    largest = torch.maximum(got.abs(), expected.abs())
    ulp = torch.where(largest > 0, 2.0 ** (torch.floor(torch.log2(largest)) - (bits - 1)), torch.zeros_like(largest))
    worst = ((got - expected).abs() - ulp).max()
    assert worst <= 0, f"{name}: {float(worst):.3g} beyond one unit in the last place"


def strip_conv_gradients(conv_class, dtype, memory_format, dilation, autocast):
    """(output, input gradient, weight gradient, bias gradient) of a 3x3 'same' convolution run in
    ``dtype`` (inputs and weights in it, or float32 under autocast to it; ``dtype`` float64: the
    definition, from the float32 values rounded to bfloat16 first), weight and bias gradients in
    bfloat16 then."""
    torch.manual_seed(0)
    conv = conv_class(6, 5, 3, padding=dilation, dilation=dilation)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 23, 17, generator=generator)
    grad = torch.randn(2, 5, 23, 17, generator=generator).to(dtype).contiguous(memory_format=memory_format)
    if not autocast:
        conv, x = conv.to(dtype), x.to(dtype)
    conv = conv.to(memory_format=memory_format)
    x = x.contiguous(memory_format=memory_format).requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype, enabled=autocast):
        out = conv(x)
    out.backward(grad)
    return out, x.grad, conv.weight.grad.to(dtype), conv.bias.grad.to(dtype)


def float64_weight_gradients(dtype, dilation):
    """The weight and bias gradients of strip_conv_gradients' convolution computed in float64 from the
    same ``dtype`` values, rounded once to ``dtype``."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, padding=dilation, dilation=dilation).to(dtype).double()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 23, 17, generator=generator).to(dtype).double()
    grad = torch.randn(2, 5, 23, 17, generator=generator).to(dtype).double()
    conv(x).backward(grad)
    return conv.weight.grad.to(dtype), conv.bias.grad.to(dtype)


@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype,autocast", [(torch.bfloat16, True), (torch.bfloat16, False), (torch.float16, False)])
def test_strip_weight_grad_conv_matches_conv2d(dtype, autocast, memory_format, dilation, monkeypatch):
    """Over 5 strips of 5 rows (the first and last padded): the output and the input gradient equal
    nn.Conv2d's bit for bit; the weight and bias gradients, float32 sums rounded once, are within one
    unit in the last place of the float64 gradients of the same values rounded once (and, in bfloat16,
    of nn.Conv2d's, which oneDNN also sums in float32); a 1% error fails that comparison."""
    monkeypatch.setattr(checkpoint_module, "STRIP_BYTES", 4 * 2 * 6 * 17 * 5)
    monkeypatch.setattr(checkpoint_module, "WHOLE_LAYER_BYTES", 0)
    strips = strip_conv_gradients(StripWeightGradConv2d, dtype, memory_format, dilation, autocast)
    plain = strip_conv_gradients(torch.nn.Conv2d, dtype, memory_format, dilation, autocast)
    assert strips[0].dtype == dtype
    for name, got, expected in zip(["output", "grad_input"], strips[:2], plain[:2]):
        assert got.dtype == expected.dtype and torch.equal(got, expected), name
    references = [float64_weight_gradients(dtype, dilation)] + ([plain[2:]] if dtype == torch.bfloat16 else [])
    for reference in references:
        for name, got, expected in zip(["grad_weight", "grad_bias"], strips[2:], reference):
            assert_within_one_ulp(name, got, expected)
            with pytest.raises(AssertionError, match=name):
                assert_within_one_ulp(name, got * 1.01, expected)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_strip_weight_grad_conv_in_one_strip_is_conv2d(memory_format):
    """A layer of at most WHOLE_LAYER_BYTES in float32 takes PyTorch's own bfloat16 backward kernel:
    every result bit for bit nn.Conv2d's."""
    strips = strip_conv_gradients(StripWeightGradConv2d, torch.bfloat16, memory_format, 1, True)
    plain = strip_conv_gradients(torch.nn.Conv2d, torch.bfloat16, memory_format, 1, True)
    for name, got, expected in zip(["output", "grad_input", "grad_weight", "grad_bias"], strips, plain):
        assert torch.equal(got, expected), name


def test_strip_weight_grad_conv_is_conv2d_in_float32():
    """float32 takes nn.Conv2d's own path: every result bit for bit."""
    strips = strip_conv_gradients(StripWeightGradConv2d, torch.float32, torch.contiguous_format, 1, False)
    plain = strip_conv_gradients(torch.nn.Conv2d, torch.float32, torch.contiguous_format, 1, False)
    for name, got, expected in zip(["output", "grad_input", "grad_weight", "grad_bias"], strips, plain):
        assert torch.equal(got, expected), name


def pool_gradient(pool_class, x, grad, stride, ceil_mode):
    pool = pool_class(3, stride=stride, padding=1, ceil_mode=ceil_mode)
    x = x.detach().clone().requires_grad_(True)
    out = pool(x)
    out.backward(grad.to(out.dtype))
    return out, x.grad


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("stride,ceil_mode", [(2, False), (2, True), (1, True)])
@pytest.mark.parametrize("dtype,values", [(torch.bfloat16, "normal"), (torch.float16, "normal"),
                                          (torch.bfloat16, "ties")])
def test_strip_max_pool_matches_max_pool(dtype, values, stride, ceil_mode, memory_format, monkeypatch):
    """Over strips of 2 output rows (the first and last padded): the output equals nn.MaxPool2d's bit
    for bit, and the input gradient equals the float64 gradient of the same values (the same maxima,
    ties included) rounded once; a 1% error fails."""
    monkeypatch.setattr(checkpoint_module, "STRIP_BYTES", 4 * 2 * 3 * 16 * stride * 2)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 15, 16, generator=generator)
    if values == "ties":  # a few distinct values: many windows hold their maximum twice
        x = x.mul(1.5).round()
    x = x.to(dtype).contiguous(memory_format=memory_format)
    rows = (15 + 2 - 3 + (stride - 1 if ceil_mode else 0)) // stride + 1
    grad = torch.randn(2, 3, rows, (16 + 2 - 3 + (stride - 1 if ceil_mode else 0)) // stride + 1,
                       generator=generator).to(dtype)
    out, got = pool_gradient(StripMaxPool2d, x, grad, stride, ceil_mode)
    plain_out, _ = pool_gradient(torch.nn.MaxPool2d, x, grad, stride, ceil_mode)
    _, exact = pool_gradient(torch.nn.MaxPool2d, x.double(), grad.double(), stride, ceil_mode)
    assert out.shape == plain_out.shape and torch.equal(out, plain_out)
    assert out.is_contiguous(memory_format=memory_format)
    assert got.dtype == dtype and torch.equal(got, exact.to(dtype))
    assert not torch.equal((got.double() * 1.01).to(dtype), exact.to(dtype))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_relu_keeping_mask_is_relu_and_keeps_one_bit_an_element(dtype, memory_format, monkeypatch):
    """Over chunks of 24 elements (sizes not a multiple of 8): the output and the gradient equal
    torch.relu's bit for bit (zeros, negative zeros and NaN included), the layout is kept, and what
    autograd keeps for the backward pass is the packed mask, one bit an element."""
    monkeypatch.setattr(checkpoint_module, "MASK_CHUNK", 24)
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(2, 5, 7, 3, generator=generator)
    x.view(-1)[:4] = torch.tensor([0.0, -0.0, float("nan"), float("-inf")])
    x = x.to(dtype).contiguous(memory_format=memory_format)
    grad = torch.randn(x.shape, generator=generator).to(dtype)
    saved = []
    results = []
    for relu in (relu_keeping_mask_, torch.relu):
        leaf = x.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = relu(leaf * 1)
        out.backward(grad)
        results.append((out.detach(), leaf.grad))
    (out, got), (plain_out, expected) = results
    bits = {torch.bfloat16: torch.int16, torch.float32: torch.int32}[dtype]  # NaN and -0.0 compared as bits
    assert torch.equal(out.view(bits), plain_out.view(bits)) and out.is_contiguous(memory_format=memory_format)
    assert torch.equal(got.view(bits), expected.view(bits))
    mask_bytes = [t.numel() * t.element_size() for t in saved if t.dtype == torch.uint8]
    assert mask_bytes == [(x.numel() + 7) // 8]


@pytest.mark.parametrize("dtype,grad,strips", [(torch.bfloat16, True, True), (torch.float16, True, True),
                                               (torch.float32, True, False), (torch.bfloat16, False, False)])
def test_strip_layers_take_their_own_backward_only_in_low_precision_with_gradients(dtype, grad, strips):
    x = torch.randn(1, 3, 11, 11, dtype=dtype, requires_grad=True)
    pool, conv = StripMaxPool2d(3, stride=2, padding=1), StripWeightGradConv2d(3, 4, 3, padding=1).to(dtype)
    with torch.set_grad_enabled(grad):
        names = [None if out.grad_fn is None else out.grad_fn.name() for out in (pool(x), conv(x))]
    if strips:
        assert names == ["_StripMaxPoolBackward", "_StripWeightGradBackward"]
    else:
        assert names == (["MaxPool2DWithIndicesBackward0", "ConvolutionBackward0"] if grad else [None, None])


@pytest.mark.parametrize("name", ["sgan", "deeplab-vgg16"])
def test_checkpointed_vgg_layers_run_their_backward_in_strips(name):
    def layer_types(network):
        return {type(m) for m in network.modules()}
    assert {StripWeightGradConv2d, StripMaxPool2d} <= layer_types(NETWORKS[name](True))
    assert not {StripWeightGradConv2d, StripMaxPool2d} & layer_types(NETWORKS[name](False))


def test_checkpointing_is_off_by_default_and_not_part_of_the_model_info():
    assert not SGANNet(TINY, "sgan", backend="reference").backbone.checkpointing
    assert not CAMNet(TINY).backbone.checkpointing
    assert not stage2_vgg(False).checkpoint_aspp and not DeepLabVGG16().backbone.checkpointing
    assert not DeepLabResNet101(width=0.0625, blocks=[1, 1, 1, 1]).backbone.checkpointing
    assert stage2_vgg(True).model_info() == stage2_vgg(False).model_info()
    assert list(stage1_network(True).state_dict()) == list(stage1_network(False).state_dict())


def attention_bias_conditions():
    """{gradient index in train_step's list: condition} of the SGAN attention's key and query biases:
    each is a sum over positions of the gradient of the convolution's output that cancels (the
    attention weights barely change when a key or query is shifted), so its float rounding scales with
    ||sum_positions |g| || / ||sum_positions g|| (tests/helpers.py, ``condition``); from float64."""
    outputs = {}

    def prepare(network):
        def keep(name):
            return lambda module, args, output: outputs.__setitem__(name, output) or output.retain_grad()
        network.attention.key.register_forward_hook(keep("key"))
        network.attention.query.register_forward_hook(keep("query"))

    train_step(stage1_network, False, torch.float64, train=False, prepare=prepare)
    names = [name for name, _ in stage1_network(False).named_parameters()]
    conditions = {}
    for name in ("key", "query"):
        grad = outputs[name].grad
        conditions[1 + names.index(f"attention.{name}.bias")] = float(
            grad.abs().sum((0, 2, 3)).norm() / grad.sum((0, 2, 3)).norm())
    return conditions


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_channels_last_matches_contiguous_within_float_rounding(name):
    """float32 channels-last outputs and gradients against float64: within twice the error of the
    float32 contiguous run (docs/design.md §7). In eval mode: a dropout draws its mask in the memory order
    of its input, so in train mode the layouts (and the dtypes) draw different masks."""
    exact = train_step(NETWORKS[name], False, torch.float64, train=False)
    contiguous = train_step(NETWORKS[name], False, torch.float32, train=False)
    channels_last = train_step(NETWORKS[name], False, torch.float32, torch.channels_last, train=False)
    conditions = attention_bias_conditions() if name == "sgan" else {}
    for part, got, reference, expected in zip(("outputs", "gradients"), channels_last, contiguous, exact):
        for index, (a, b, c) in enumerate(zip(got, reference, expected)):
            condition = conditions.get(index) if part == "gradients" else None
            assert_within_reference_error(f"{name} {part}[{index}]", a, b, c, torch.float32, condition=condition)


def test_channels_last_network_keeps_the_layout_up_to_the_attention():
    network = stage1_network(False).to(memory_format=torch.channels_last)
    images = inputs(torch.float32)[0].contiguous(memory_format=torch.channels_last)
    features = network.backbone(images)
    assert features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous()


@pytest.mark.parametrize("backend", ["reference"] + fused_backends("cpu"))
def test_attention_accepts_channels_last_inputs(backend):
    """x, key and query in channels-last layout (what a channels-last network hands the operator): the
    output and every gradient match the contiguous call within float32 rounding of the float64 result."""
    generator = torch.Generator().manual_seed(2)
    B, C, Ck, H, W = 2, 8, 4, 5, 7
    tensors = [torch.randn(B, c, H, W, generator=generator, dtype=torch.float64) for c in (C, Ck, Ck)]
    mask = torch.rand(B, H, W, generator=generator) > 0.4
    upstream = torch.randn(B, C, H, W, generator=generator, dtype=torch.float64)

    def run(dtype, memory_format, op_backend):
        leaves = [t.to(dtype).clone(memory_format=memory_format).requires_grad_(True) for t in tensors]
        gamma = torch.tensor([0.7], dtype=dtype, requires_grad=True)
        out = saliency_attention(*leaves, mask, gamma, backend=op_backend)
        (out * upstream.to(dtype)).sum().backward()
        return [out.detach()] + [leaf.grad for leaf in leaves] + [gamma.grad]

    exact = run(torch.float64, torch.contiguous_format, "reference")
    contiguous = run(torch.float32, torch.contiguous_format, backend)
    channels_last = run(torch.float32, torch.channels_last, backend)
    for name, a, b, c in zip(("out", "grad_x", "grad_key", "grad_query", "grad_gamma"), channels_last, contiguous,
                             exact):
        assert a.shape == c.shape
        assert_within_reference_error(f"{backend} {name}", a, b, c, torch.float32)


def resident_drop_after_free(return_freed):
    """Child process: how far the resident set falls (bytes) when a 4 MiB tensor is freed below a
    live one, after glibc has raised its mmap threshold by freeing a 16 MiB block, as training does."""
    from bench.memory_phases import resident_bytes as resident
    from sgan.models.compute import return_freed_memory

    if return_freed:
        assert return_freed_memory("cpu")
    large = torch.ones(4 << 20)  # 16 MiB, mmapped; freeing it raises glibc's threshold to 16 MiB
    del large
    block = torch.ones(1 << 20)  # 4 MiB
    live = torch.ones(1 << 10)  # noqa: F841  (keeps the heap's top above the block)
    before = resident()
    del block
    return before - resident()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_return_freed_memory_gives_a_freed_block_back_to_the_system():
    """Why the training loop sets it with checkpointing on a CPU: without it glibc keeps a freed 4 MiB
    activation in its heap (the resident set does not fall); with it the block goes back at once."""
    assert run_in_child(resident_drop_after_free, False).value < 1 << 20
    assert run_in_child(resident_drop_after_free, True).value >= 3 << 20
    assert not compute.return_freed_memory("cuda")
