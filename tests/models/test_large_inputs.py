"""Options of the networks for larger inputs: activation checkpointing (same gradients to the last bit,
same dropout masks, fewer activations kept) and channels-last (same outputs within float rounding; the
attention operator takes channels-last tensors on every CPU backend)."""
import platform

import pytest
import torch

from bench.child import run_in_child
from sgan.models import compute
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
