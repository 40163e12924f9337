"""SGD with the DeepLab parameter groups and the learning-rate schedules (docs/design.md §5).

Groups: backbone weights (lr x lr_mult[0]), backbone biases (x lr_mult[1]), new-layer weights
(x lr_mult[2]) and new-layer biases (x lr_mult[3]); the default (1, 2, 10, 20) is the authors'.
Biases get no weight decay (Caffe's decay_mult 0). A parameter is a bias when its name ends in
``bias``; it is a new-layer parameter when its name is in ``new_names`` if that is given (stage 2:
the layers the weights file did not provide), else when it is outside ``model.backbone``.

Schedules (a pure function of the iteration, so resuming needs only the iteration number):
``step``: lr * step_gamma ** (iteration // step_size)  (stage 1: 0.1 every 2000; stage 2: 0.33)
``poly``: lr * (1 - iteration / iterations) ** poly_power  (the authors' stage 1, power 0.9)
"""
import torch

SCHEDULES = ("step", "poly")
GROUP_NAMES = ("backbone_weight", "backbone_bias", "new_weight", "new_bias")

# Defaults of the optimisation keys, merged into each training step's config section.
OPTIM_DEFAULTS = {
    "iterations": 8000,
    "batch_size": 15,
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "lr_mult": [1.0, 2.0, 10.0, 20.0],
    "schedule": "step",
    "step_size": 2000,
    "step_gamma": 0.1,
    "poly_power": 0.9,
    "checkpoint_every": 1000,
    "log_every": 20,
}
OPTIM_CHOICES = {"schedule": SCHEDULES}
OPTIM_BOUNDS = {"iterations": "[1, inf)", "batch_size": "[1, inf)", "lr": "(0, inf)", "momentum": "[0, 1)",
                "weight_decay": "[0, inf)", "lr_mult": "[0, inf)", "step_size": "[1, inf)",
                "step_gamma": "(0, 1]", "poly_power": "[0, inf)", "checkpoint_every": "[1, inf)",
                "log_every": "[1, inf)"}


def parameter_groups(model, lr_mult=(1.0, 2.0, 10.0, 20.0), new_names=None):
    """The four groups as dicts {"name", "params", "lr_mult", "decay"}; empty groups are dropped.
    new_names: the parameter names of the new layers (default: every parameter outside model.backbone)."""
    if len(lr_mult) != 4 or not all(isinstance(v, (int, float)) and v >= 0 for v in lr_mult):
        raise ValueError(f"lr_mult: expected 4 non-negative numbers (backbone weight/bias, new weight/bias), "
                         f"got {lr_mult!r}")
    backbone = getattr(model, "backbone", None)
    backbone_ids = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    buckets = {name: [] for name in GROUP_NAMES}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_new = name in new_names if new_names is not None else id(param) not in backbone_ids
        where = "new" if is_new else "backbone"
        kind = "bias" if name.endswith("bias") else "weight"
        buckets[f"{where}_{kind}"].append(param)
    return [{"name": name, "params": buckets[name], "lr_mult": float(mult), "decay": name.endswith("weight")}
            for name, mult in zip(GROUP_NAMES, lr_mult) if buckets[name]]


def build_sgd(model, lr, momentum, weight_decay, lr_mult, new_names=None):
    """torch.optim.SGD over parameter_groups(model, lr_mult, new_names); each group keeps its ``lr_mult``."""
    groups = []
    for group in parameter_groups(model, lr_mult, new_names):
        groups.append({"params": group["params"], "name": group["name"], "lr_mult": group["lr_mult"],
                       "lr": lr * group["lr_mult"], "weight_decay": weight_decay if group["decay"] else 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def lr_factor(iteration, iterations, schedule="step", step_size=2000, step_gamma=0.1, poly_power=0.9):
    """Multiplier of the base lr at ``iteration`` (0-based) of ``iterations``."""
    if schedule == "step":
        if step_size <= 0:
            raise ValueError(f"step_size: expected a positive int, got {step_size!r}")
        return step_gamma ** (iteration // step_size)
    if schedule == "poly":
        return (1.0 - iteration / iterations) ** poly_power
    raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")


def set_learning_rate(optimizer, base_lr, factor):
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor * group["lr_mult"]


def backward_and_step(loss, optimizer, scaler=None):
    """``loss.backward()`` and ``optimizer.step()``; through fp16's loss ``scaler``
    (sgan.models.compute.grad_scaler) when there is one, which skips a step with non-finite gradients."""
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
