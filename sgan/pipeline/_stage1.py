"""Helpers shared by the stage-1 steps (not a step: only the modules of sgan.pipeline.STEPS are)."""
import concurrent.futures
import os

from PIL import Image

from sgan.data.voc import (
    VOCPaths,
    load_labels,
    load_rgb,
    read_id_list,
    read_saliency,
    validate_samples,
)
from sgan.models.compute import apply_memory_format, autocast, check_precision
from sgan.models.sgan_net import authors_network, network_from_info, read_authors_state
from sgan.pipeline import resolve_device, work_path
from sgan.seedmaps import class_scores, make_seeds
from sgan.train.loop import load_checkpoint
from sgan.utils.io import read_done_marker, remove_done_marker, save_png, write_done_marker
from sgan.utils.logging import get_logger
from sgan.utils.progress import progress
from sgan.utils.record import (fingerprint, folder_fingerprint, images_fingerprint, labels_fingerprint,
                               make_record, settings_of, up_to_date)

# what a stage-1 network's training or seeds read of the data section (the rest of what they read
# is named by the input fingerprints of their records)
TRAINING_DATA_KEYS = ("data.input_size", "data.normalisation", "data.flip", "data.resize")


def saliency_folder(cfg):
    folder = cfg.data.saliency_dir
    if not folder:
        raise ValueError("data.saliency_dir: required; set it to the folder of <id>.png saliency maps")
    if not os.path.isdir(folder):
        raise ValueError(f"data.saliency_dir: {folder} is not a folder")
    return folder


def training_images(cfg):
    """(VOCPaths, ids of data.train_list, labels {id: classes}) with labels.json checked."""
    paths = VOCPaths(cfg.data.root)
    ids = read_id_list(paths.resolve(cfg.data.train_list))
    labels = load_labels(work_path(cfg, cfg.data.labels_file), ids)
    return paths, ids, labels


def load_network(cfg, checkpoint_path, device):
    """(network in eval mode on ``device``, model_info) from a training checkpoint, or from the
    authors' released SGAN weights (sgan.models.sgan_net.authors_network, built from cfg.model)."""
    try:
        state = load_checkpoint(checkpoint_path)
    except ValueError:
        authors_state = read_authors_state(checkpoint_path) if os.path.isfile(checkpoint_path) else None
        if authors_state is None:
            raise
        network, model_info = authors_network(cfg, authors_state, cfg.backend, checkpoint_path)
        return network.to(device).eval(), model_info
    network = network_from_info(state["model_info"], cfg.backend)
    network.load_state_dict(state["model"])
    return network.to(device).eval(), state["model_info"]


def write_seeds(cfg, section_name, what):
    """Seeds of every training image from ``section.checkpoint`` into ``section.out_dir`` (PNG).

    section_name: "initial_seeds" or "seeds", whose keys are checkpoint, out_dir, alpha, beta,
    rule, scales, flip, precision, memory_format (sgan.models.compute: the network runs under them,
    the scores are float32), use_seed_branch and resolution (optional); images and saliency are resized
    with data.resize. Skips when the folder's done marker records the same settings and inputs
    (checkpoint, images, labels, saliency); otherwise rewrites every map. The thresholding and PNG
    writing run in a thread pool of cfg.num_workers threads while the network computes the next image.
    """
    section = cfg[section_name]
    out_dir = work_path(cfg, section.out_dir)
    paths, ids, labels = training_images(cfg)
    saliency_dir = saliency_folder(cfg)
    checkpoint = work_path(cfg, section.checkpoint)
    if not os.path.isfile(checkpoint):
        raise ValueError(f"{what}: checkpoint {checkpoint} does not exist (train it first)")
    record = make_record(what, settings_of(cfg, section_name, "data.input_size", "data.resize"), {
        "checkpoint": fingerprint(checkpoint), "images": images_fingerprint(paths, ids),
        "labels": labels_fingerprint(labels, ids), "saliency": folder_fingerprint(saliency_dir, ids)})
    if up_to_date(cfg, what, out_dir, read_done_marker(out_dir), record):
        return out_dir
    validate_samples(paths, ids, labels, saliency_dir=saliency_dir)
    device = resolve_device(cfg)
    check_precision(section.precision, device, f"{section_name}.precision")
    network, model_info = load_network(cfg, checkpoint, device)
    apply_memory_format(network, section.memory_format)
    os.makedirs(out_dir, exist_ok=True)
    remove_done_marker(out_dir)
    use_seed_branch = bool(section.get("use_seed_branch", False))
    resolution = section.get("resolution", "image")

    def finish(image_id, scores, saliency):
        seeds = make_seeds(scores.numpy(), saliency, labels[image_id], section.alpha, section.beta, section.rule,
                           resolution)
        save_png(os.path.join(out_dir, image_id + ".png"), Image.fromarray(seeds, "L"))

    with concurrent.futures.ThreadPoolExecutor(max(1, cfg.num_workers)) as pool:
        pending = []
        for image_id in progress(ids, desc=what, unit="img"):
            image = load_rgb(paths.image(image_id))
            saliency = read_saliency(os.path.join(saliency_dir, image_id + ".png"))
            with autocast(device, section.precision):
                scores = class_scores(network, image, saliency, labels[image_id], cfg.data.input_size,
                                      model_info["normalisation"], section.scales, section.flip,
                                      use_seed_branch, device, section.rule, resolution, cfg.data.resize)
            pending.append(pool.submit(finish, image_id, scores, saliency))
            if len(pending) > 4 * max(1, cfg.num_workers):
                pending.pop(0).result()
        for future in pending:
            future.result()
    write_done_marker(out_dir, record)
    get_logger("seeds").info("%s: wrote %d seed maps to %s", what, len(ids), out_dir)
    return out_dir
