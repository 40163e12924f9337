"""Training machinery: parameter groups, schedules, batch order, exact resume, DDP = one process."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from sgan.models.sgan_net import build_network
from sgan.pipeline import load_config, run_step, run_steps
from sgan.train import BatchOrder, IterationBatchSampler, build_sgd, lr_factor, parameter_groups
from sgan.utils.seeding import derive_seed, seed_everything
from tests.pipeline.test_stage1_pipeline import make_tiny_voc, tiny_config


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3)
        self.head = nn.Conv2d(4, 2, 1)
        self.gamma = nn.Parameter(torch.zeros(1))


def test_parameter_groups_and_learning_rates():
    net = _Net()
    groups = {g["name"]: [id(p) for p in g["params"]] for g in parameter_groups(net)}
    assert groups == {"backbone_weight": [id(net.backbone.weight)], "backbone_bias": [id(net.backbone.bias)],
                      "new_weight": [id(net.gamma), id(net.head.weight)], "new_bias": [id(net.head.bias)]}
    optimizer = build_sgd(net, 1e-3, 0.9, 5e-4, [1, 2, 10, 20])
    found = {g["name"]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups}
    assert found == {"backbone_weight": (1e-3, 5e-4), "backbone_bias": (2e-3, 0.0),
                     "new_weight": (1e-2, 5e-4), "new_bias": (2e-2, 0.0)}
    with pytest.raises(ValueError, match="lr_mult: expected 4"):
        parameter_groups(net, [1, 2])


def test_schedules():
    assert [lr_factor(i, 8000, "step", 2000, 0.1) for i in (0, 1999, 2000, 4000, 7999)] == \
        pytest.approx([1, 1, 0.1, 0.01, 0.001])
    assert lr_factor(2000, 12000, "step", 2000, 0.33) == pytest.approx(0.33)
    assert lr_factor(0, 100, "poly") == 1.0
    assert lr_factor(50, 100, "poly", poly_power=0.9) == pytest.approx(0.5 ** 0.9)
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, 10, "cosine")


def test_batch_order_is_a_function_of_seed_and_iteration():
    order = BatchOrder(num_samples=7, batch_size=4, seed=3)
    stream = [index for t in range(7) for index, _ in order.global_batch(t)]
    for epoch in range(4):  # 28 samples = 4 epochs, each a permutation
        assert sorted(stream[7 * epoch:7 * epoch + 7]) == list(range(7))
    assert stream[:7] != stream[7:14]
    again = BatchOrder(7, 4, 3)
    assert again.global_batch(5) == order.global_batch(5)  # fresh object, later iteration first
    assert order.rank_batch(5, 0, 2) + order.rank_batch(5, 1, 2) == order.global_batch(5)
    shares = [list(IterationBatchSampler(order, 3, 6, rank, 2)) for rank in (0, 1)]
    assert [a + b for a, b in zip(*shares)] == [order.global_batch(t) for t in (3, 4, 5)]
    assert BatchOrder(7, 4, 4).global_batch(0) != order.global_batch(0)
    with pytest.raises(ValueError, match="not divisible"):
        order.rank_batch(0, 0, 3)


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory.mktemp("voc"), num_train=6)


def _config(tiny_voc, work, **overrides):
    # The authors' classifier has dropout: a resumed run must draw the same masks.
    config = tiny_config(*tiny_voc, work, iterations=5, model={"classifier": "authors"})
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()], base=config)


def _weights(work, name="cam"):
    return torch.load(os.path.join(work, "ckpt", f"{name}.pt"), weights_only=True)["model"]


def _initial_weights(cfg):
    """The weights train-cam starts from (it seeds the initialisation the same way)."""
    seed_everything(derive_seed(cfg.seed, "train-cam", "init"))
    return build_network(cfg, "cam")[0].state_dict()


def _distance(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_resume_after_interruption_gives_the_same_weights(tiny_voc, tmp_path, monkeypatch):
    straight = _config(tiny_voc, tmp_path / "straight")
    run_steps(straight, ["labels", "train-cam"])

    interrupted = _config(tiny_voc, tmp_path / "interrupted")
    run_steps(interrupted, ["labels"])
    real_step, calls = torch.optim.SGD.step, []

    def crashing_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # dies during iteration 4, after the checkpoint of iteration 2
            raise KeyboardInterrupt("simulated crash")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        run_step("train-cam", interrupted)
    monkeypatch.setattr(torch.optim.SGD, "step", real_step)
    last = tmp_path / "interrupted" / "ckpt" / "cam.last.pt"
    assert torch.load(last, weights_only=True)["iteration"] == 2
    with pytest.raises(ValueError, match="pass --resume"):
        run_step("train-cam", interrupted)
    run_step("train-cam", _config(tiny_voc, tmp_path / "interrupted", resume="true"))
    assert not last.exists()

    expected, found = _weights(tmp_path / "straight"), _weights(tmp_path / "interrupted")
    assert expected.keys() == found.keys()
    for key in expected:
        assert torch.equal(expected[key], found[key]), key
    assert _distance(expected, _initial_weights(straight)) > 1e-4  # training did change the weights


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank, world, port, config):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    try:
        run_step("train-cam", config)
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_processes_match_one_process(tiny_voc, tmp_path):
    """2 gloo processes, each with half of the same global batch of 4, give the weights of one
    process on the whole batch. float32 gradients are summed in a different order (per-rank then
    all-reduce), so equality holds to rounding: after 5 SGD steps the weights agree to 1e-6."""
    single = _config(tiny_voc, tmp_path / "single", **{"model.classifier": "paper"})
    run_steps(single, ["labels", "train-cam"])
    ddp = _config(tiny_voc, tmp_path / "ddp", **{"model.classifier": "paper"})
    run_steps(ddp, ["labels"])
    mp.spawn(_ddp_worker, args=(2, _free_port(), ddp), nprocs=2, join=True)
    expected, found = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    assert _distance(expected, _initial_weights(single)) > 1e-4  # training did change the weights
    assert _distance(expected, found) <= 1e-6
    single_log, ddp_log = (torch.load(tmp_path / w / "ckpt" / "cam.pt", weights_only=True)["history"]
                           for w in ("single", "ddp"))
    assert [h["cls"] for h in ddp_log] == pytest.approx([h["cls"] for h in single_log], rel=1e-5)


def test_a_non_finite_loss_stops_training_with_diverged_error(tmp_path):
    from sgan.pipeline import register_sections
    from sgan.train import DivergedError, train

    register_sections()
    cfg = load_config(None, [f"work_dir={tmp_path}", "train_cam.iterations=4", "num_workers=0"])
    model = nn.Linear(2, 1)

    class Ones(torch.utils.data.Dataset):   # the batch sampler yields (index, draw seed) keys
        def __len__(self):
            return 8

        def __getitem__(self, key):
            return {"x": torch.ones(2)}

    dataset = Ones()

    def loss_fn(net, batch, device):
        loss = net(batch["x"]).sum() * float("nan")
        return loss, {"loss": loss.item()}

    with pytest.raises(DivergedError, match="the loss is nan at iteration 0"):
        train(cfg, "train_cam", name="train-cam", model=model, dataset=dataset, loss_fn=loss_fn,
              checkpoint_path=str(tmp_path / "ckpt.pt"), model_info={}, device=torch.device("cpu"), record={})
    assert not (tmp_path / "ckpt.pt").exists()
