"""Stage-2 steps end to end on tiny generated VOC-layout data (CPU, both backbones at reduced width):
train-seg -> infer -> eval, exact resume, DDP with torchrun, and the errors for bad inputs."""
import os
import subprocess
import sys
from concurrent.futures import Future

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from sgan import cli
from sgan.config import Config
from sgan.experiments.synthetic import generate
from sgan.models.deeplab import build_deeplab
from sgan.models.resnet import resnet_caffe_names
from sgan.pipeline import load_config, run_steps
from sgan.pipeline import train_seg as train_seg_step
from sgan.predict import read_label_png
from sgan.train import load_checkpoint
from sgan.utils.seeding import derive_seed, seed_everything
from tests.models.test_metrics import mask_iou

TRAIN, VAL = 4, 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Synthetic VOC (64x64, 3 classes) and seeds made from its masks with 30% of pixels unlabelled."""
    root = tmp_path_factory.mktemp("synthetic")
    info = generate(root, num_train=TRAIN, num_val=VAL, image_size=(64, 64), classes=3)
    seeds_dir = root / "seeds"
    seeds_dir.mkdir()
    rng = np.random.default_rng(0)
    for image_id in info["train_ids"]:
        mask = np.array(Image.open(os.path.join(info["segmentation_class_aug"], image_id + ".png")))
        seeds = np.where(rng.random(mask.shape) < 0.3, 255, mask).astype(np.uint8)
        Image.fromarray(seeds).save(seeds_dir / f"{image_id}.png")
    return dict(info, seeds=str(seeds_dir))


def stage2_config(dataset, work_dir, arch="vgg16", **sections):
    """A plain dict config for a few CPU iterations of the real architecture at 1/16 width."""
    config = {
        "work_dir": str(work_dir), "num_workers": 0, "steps": ["train-seg", "infer", "eval"],
        "data": {"root": dataset["voc"]},
        "train_seg": {"arch": arch, "width": 0.0625, "blocks": [1, 1, 1, 1], "iterations": 4,
                      "batch_size": 2, "resize": 57, "crop": 49, "checkpoint_every": 2, "log_every": 2,
                      "crf_processes": 1, "seeds_dir": dataset["seeds"]},
        "infer": {"crf_processes": 1},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


def check_outputs(dataset, work_dir, arch):
    checkpoint = load_checkpoint(os.path.join(work_dir, "ckpt", "deeplab.pt"))
    assert checkpoint["model_info"]["network"]["arch"] == arch
    assert [h["iteration"] for h in checkpoint["history"]] == [2, 4]
    assert all(np.isfinite([h["seed"], h["boundary"]]).all() for h in checkpoint["history"])
    predictions, targets = [], []
    for image_id in dataset["val_ids"]:
        with Image.open(os.path.join(work_dir, "pred", image_id + ".png")) as image:
            assert image.mode == "P" and image.size == (64, 64)
        predictions.append(read_label_png(os.path.join(work_dir, "pred", image_id + ".png")))
        targets.append(read_label_png(os.path.join(dataset["segmentation_class"], image_id + ".png")))
    assert all(set(np.unique(p).tolist()) <= set(range(21)) for p in predictions)
    with open(os.path.join(work_dir, "metrics", "seg.json")) as stream:
        result = yaml.safe_load(stream)
    expected = mask_iou(predictions, targets, 21)
    assert [v is None for v in result["iou"]] == [v is None for v in expected]
    assert [v for v in result["iou"] if v is not None] == pytest.approx(
        [v for v in expected if v is not None], rel=1e-12)
    defined = [v for v in expected if v is not None]
    assert result["miou"] == pytest.approx(sum(defined) / len(defined), rel=1e-12)
    assert result["num_images"] == VAL and 0.0 <= result["miou"] <= 1.0
    with open(os.path.join(work_dir, "metrics", "train_seg_timing.json")) as stream:
        timing = yaml.safe_load(stream)
    assert 0.0 <= timing["crf_wait_fraction"] <= 1.0 and timing["steps_measured"] == 2
    return result


def test_vgg16_steps_from_the_cli_with_crf_and_table(dataset, tmp_path, capsys):
    work_dir = tmp_path / "work"
    config_path = tmp_path / "stage2.yaml"
    config_path.write_text(yaml.safe_dump(stage2_config(dataset, work_dir, "vgg16")))
    assert cli.main(["run", str(config_path)]) == 0
    result = check_outputs(dataset, str(work_dir), "vgg16")
    table = capsys.readouterr().out.strip().splitlines()
    assert table[-2].split()[:3] == ["method", "bkg", "aero"] and table[-2].split()[-1] == "mIoU"
    assert table[-1].split()[0] == "DeepLab-ASPP" and float(table[-1].split()[-1]) == round(100 * result["miou"], 1)
    # a second run skips every step: the checkpoint and the predictions are left untouched
    stamps = {p: os.path.getmtime(p) for p in (work_dir / "ckpt" / "deeplab.pt", work_dir / "pred" /
                                              f"{dataset['val_ids'][0]}.png")}
    assert cli.main(["run", str(config_path)]) == 0
    assert all(os.path.getmtime(p) == stamp for p, stamp in stamps.items())


def test_resnet101_steps_with_caffe_weights_multi_scale_flip_and_no_crf(dataset, tmp_path):
    # ImageNet weights in the Caffe naming: the step must pick the MSRA stride placement and the
    # Caffe (BGR, mean-subtracted) input, and record both for inference
    layout = build_deeplab("resnet101", width=0.0625, blocks=[1, 1, 1, 1]).backbone
    shapes = layout.state_dict()
    generator = torch.Generator().manual_seed(0)
    weights = {file_key: torch.rand(shapes[model_key].shape, generator=generator) * 0.1 + 0.5 * ("var" in file_key)
               for model_key, file_key in resnet_caffe_names(layout).items()}
    torch.save(weights, tmp_path / "resnet101_caffe.pth")
    config = stage2_config(dataset, tmp_path, "resnet101",
                           train_seg={"weights": str(tmp_path / "resnet101_caffe.pth")},
                           infer={"scales": [1.0, 48], "flip": True, "crf": False})
    run_steps(load_config(base=config))
    check_outputs(dataset, str(tmp_path), "resnet101")
    info = load_checkpoint(str(tmp_path / "ckpt" / "deeplab.pt"))["model_info"]
    assert info["normalisation"] == "caffe_bgr" and info["network"]["stride_in_1x1"] is True


def final_weights(work_dir):
    return load_checkpoint(os.path.join(work_dir, "ckpt", "deeplab.pt"))["model"]


@pytest.mark.parametrize("warmup", [0, 3], ids=["paper", "boundary-warmup"])
def test_resume_after_interruption_gives_the_same_weights(dataset, tmp_path, monkeypatch, warmup):
    """Also with the boundary loss ramped in: its weight follows the iteration, not the calls."""
    steps = ["train-seg"]
    ramp = {"boundary_loss_warmup": warmup}
    run_steps(load_config(base=stage2_config(dataset, tmp_path / "straight", train_seg=ramp)), steps)

    interrupted = stage2_config(dataset, tmp_path / "interrupted", train_seg=ramp)
    original_call = train_seg_step.StageTwoLoss.__call__
    calls = []

    def crash_on_third_step(self, net, batch, device):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated interruption at iteration 3")
        return original_call(self, net, batch, device)

    monkeypatch.setattr(train_seg_step.StageTwoLoss, "__call__", crash_on_third_step)
    with pytest.raises(KeyboardInterrupt):
        run_steps(load_config(base=interrupted), steps)
    monkeypatch.setattr(train_seg_step.StageTwoLoss, "__call__", original_call)
    halfway = load_checkpoint(str(tmp_path / "interrupted" / "ckpt" / "deeplab.last.pt"))
    assert halfway["iteration"] == 2
    with pytest.raises(ValueError, match="pass --resume"):
        run_steps(load_config(base=interrupted), steps)
    run_steps(load_config(base=interrupted, overrides=["resume=true"]), steps)
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "interrupted")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert any(not torch.equal(straight[k], halfway["model"][k]) for k in straight)  # iterations 3-4 trained


def test_ddp_two_processes_match_one_process(dataset, tmp_path):
    # ResNet: no dropout, so both runs draw no random numbers after initialisation
    settings = {"iterations": 2, "batch_size": 4}
    single = stage2_config(dataset, tmp_path / "single", "resnet101", train_seg=settings)
    run_steps(load_config(base=single), ["train-seg"])
    distributed = stage2_config(dataset, tmp_path / "ddp", "resnet101", train_seg=settings)
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(distributed))
    env = dict(os.environ, SGAN_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    process = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                              "--standalone", "-m", "sgan.cli", "train-seg", str(config_path)],
                             capture_output=True, text=True, env=env, timeout=180)
    assert process.returncode == 0, process.stderr[-3000:]
    one, two = final_weights(tmp_path / "single"), final_weights(tmp_path / "ddp")
    seed_everything(derive_seed(0, "train-seg", "init"))   # what the step does before building the network
    initial = build_deeplab("resnet101", num_classes=21, width=0.0625, blocks=[1, 1, 1, 1]).state_dict()
    trained = max(float((one[k] - initial[k]).abs().max()) for k in one)
    assert trained > 0
    for key in one:
        # DDP averages the two ranks' gradients: the same float32 sums in another order, no more
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-3 * trained)


def test_the_removed_crf_chunks_key_is_refused_by_name(dataset, tmp_path, capsys):
    """train_seg.crf_chunks (micro-batches whose CRFs overlapped the network's work) is gone: a config
    that still sets it is refused in one line before anything is trained."""
    config_path = tmp_path / "old.yaml"
    config_path.write_text(yaml.safe_dump(stage2_config(dataset, tmp_path / "work", train_seg={"crf_chunks": 2})))
    assert cli.main(["train-seg", str(config_path)]) == 2
    error = capsys.readouterr().err
    assert "unknown key train_seg.crf_chunks" in error and "Traceback" not in error
    assert not (tmp_path / "work" / "ckpt").exists()


def test_missing_and_bad_seeds_are_named_before_training(dataset, tmp_path):
    seeds_dir = tmp_path / "seeds"
    seeds_dir.mkdir()
    first, second, *rest = dataset["train_ids"]
    for image_id in rest:
        Image.open(os.path.join(dataset["seeds"], image_id + ".png")).save(seeds_dir / f"{image_id}.png")
    Image.fromarray(np.full((64, 64), 77, np.uint8)).save(seeds_dir / f"{second}.png")
    config = stage2_config(dataset, tmp_path / "work", train_seg={"seeds_dir": str(seeds_dir)})
    with pytest.raises(ValueError) as error:
        run_steps(load_config(base=config), ["train-seg"])
    message = str(error.value)
    assert f"missing seed file (1):\n    {seeds_dir / first}.png\n" in message
    assert f"bad seed values (1):\n    {seeds_dir / second}.png holds [77]" in message
    assert not (tmp_path / "work" / "ckpt").exists()


def test_eval_names_every_missing_wrong_size_or_bad_prediction(dataset, tmp_path):
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    missing, small, bad = dataset["val_ids"]
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(pred_dir / f"{small}.png")
    Image.fromarray(np.full((64, 64), 40, np.uint8)).save(pred_dir / f"{bad}.png")
    config = stage2_config(dataset, tmp_path)
    with pytest.raises(ValueError) as error:
        run_steps(load_config(base=config), ["eval"])
    message = str(error.value)
    assert f"missing prediction: {pred_dir / missing}.png" in message
    assert "shape (32, 64) differs from ground truth" in message and f"{small}.png" in message
    assert f"prediction of {bad}: values [40] outside 0..20" in message
    assert not (tmp_path / "metrics" / "seg.json").exists()


def test_infer_without_checkpoint_says_to_train_first(dataset, tmp_path):
    with pytest.raises(ValueError, match="does not exist \\(run the training step first\\)"):
        run_steps(load_config(base=stage2_config(dataset, tmp_path)), ["infer"])


def test_shipped_stage2_config_resolves_to_the_paper_settings():
    repository = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config_path = os.path.join(repository, "configs", "voc_deeplab.yaml")
    cfg = load_config(config_path)
    section = cfg.train_seg
    assert (section.iterations, section.batch_size, section.lr, section.step_size, section.step_gamma) == \
        (12000, 15, 1e-3, 2000, 0.33)
    assert (section.resize, section.crop, section.crf_scale, cfg.infer.crf_scale) == (353, 321, 12.0, 1.0)
    assert cfg.steps == ["train-seg", "infer", "eval"]


class CountingPool:
    """A stand-in for DenseCRFPool whose CRF target is the uniform distribution."""

    def __init__(self):
        self.calls = 0

    def submit(self, images, probs, **options):
        self.calls += 1
        future = Future()
        future.set_result(np.full_like(probs, 1.0 / probs.shape[1]))
        return future


def test_boundary_warmup_ramps_the_weight_and_skips_the_crf_at_zero():
    section = Config({"seed_loss_weight": 1.0, "boundary_loss_weight": 2.0, "boundary_loss_warmup": 4,
                      "crf_scale": 12.0, "crf_iterations": 10})
    assert [train_seg_step.boundary_weight(section, i) for i in (0, 1, 2, 4, 9)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    paper = Config({**section, "boundary_loss_warmup": 0})
    assert [train_seg_step.boundary_weight(paper, i) for i in (0, 9)] == [2.0, 2.0]

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 21, 1)
    batch = {"image": torch.randn(2, 3, 5, 5), "seeds": torch.randint(0, 21, (2, 5, 5)),
             "crf_image": torch.zeros(2, 5, 5, 3, dtype=torch.uint8)}
    pool = CountingPool()
    loss_fn = train_seg_step.StageTwoLoss(section, "reference", pool)
    losses = {}
    for iteration in (0, 2):
        loss, terms = loss_fn(net, {**batch, "iteration": iteration}, torch.device("cpu"))
        losses[iteration] = (loss, terms)
    assert pool.calls == 1 and "boundary" not in losses[0][1]   # weight 0: no CRF at iteration 0
    seed_term = losses[2][1]["seed"]
    assert losses[0][0].item() == pytest.approx(seed_term, rel=1e-6)
    assert losses[2][1]["boundary"] > 0.01
    assert losses[2][0].item() == pytest.approx(seed_term + 1.0 * losses[2][1]["boundary"], rel=1e-6)
