"""Optimizers and per-epoch learning-rate schedules, from a config's ``optimizer`` and ``lr_schedule``."""
from __future__ import annotations

import torch


def make_optimizer(cfg, params) -> torch.optim.Optimizer:
    """torch's SGD, Adam or AdamW as an ``OptimizerConfig`` (name, lr, momentum, weight decay, Nesterov) says."""
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(kind: str, optimizer, epochs: int):
    """Per-epoch learning-rate schedule (torch's own): constant, cosine to zero over ``epochs``,
    or step (x0.1 at 50% and at 75% of ``epochs``)."""
    schedulers = torch.optim.lr_scheduler
    epochs = max(epochs, 1)
    if kind == "cosine":
        return schedulers.CosineAnnealingLR(optimizer, T_max=epochs)
    if kind == "step":
        return schedulers.MultiStepLR(optimizer, milestones=[epochs // 2, (3 * epochs) // 4], gamma=0.1)
    return schedulers.ConstantLR(optimizer, factor=1.0, total_iters=0)


def schedule_lrs(kind: str, lr: float, epochs: int) -> list[float]:
    """The learning rate of each of ``epochs`` epochs under :func:`make_scheduler`: the very values
    that a training stepping that scheduler once per epoch uses."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make_scheduler(kind, optimizer, epochs)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradient: changes nothing, but keeps torch's step-order check quiet
        scheduler.step()
    return lrs
