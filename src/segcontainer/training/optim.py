"""The optimizers and learning-rate schedules training steps, and the bundle of what it
changes (Trainables: model, optimizer, scheduler, gradient scaler), which a checkpoint holds.

The built-in's rmsprop update and the per-iteration schedules are defined here because neither
is available in torch in the form needed: torch.optim.RMSprop(centered=True) adds
epsilon outside the square root and applies the current learning rate to its whole momentum
buffer; torch's PolynomialLR and CosineAnnealingLR are recursive, so their length cannot be
corrected mid-run (Pipe mode learns the real batch count only after an epoch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from segcontainer.config.params import Optimization


class MXNetRMSProp(torch.optim.Optimizer):
    """MXNet's RMSProp with centered=True (Graves 2013, eqs. 38-45), the form in which the
    built-in's ``gamma2`` (momentum) exists. Per weight, with gradient g:

        n     = gamma1 * n + (1 - gamma1) * g**2
        gbar  = gamma1 * gbar + (1 - gamma1) * g
        delta = gamma2 * delta - lr * g / sqrt(n - gbar**2 + eps)
        w     = w + delta

    n - gbar**2 is never negative in exact arithmetic; it is clamped at 0 so that float
    rounding cannot produce a NaN where MXNet would.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        gamma1: float = 0.9,
        gamma2: float = 0.9,
        eps: float = 1e-8,  # MXNet's default
    ):
        super().__init__(params, {"lr": lr, "gamma1": gamma1, "gamma2": gamma2, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, gamma1, gamma2, eps = group["lr"], group["gamma1"], group["gamma2"], group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state[param]
                if not state:
                    for name in ("n", "g", "delta"):
                        state[name] = torch.zeros_like(param, memory_format=torch.preserve_format)
                n, mean, delta = state["n"], state["g"], state["delta"]
                n.mul_(gamma1).addcmul_(grad, grad, value=1 - gamma1)
                mean.mul_(gamma1).add_(grad, alpha=1 - gamma1)
                denominator = n.addcmul(mean, mean, value=-1).clamp_min_(0).add_(eps).sqrt_()
                delta.mul_(gamma2).addcdiv_(grad, denominator, value=-lr)
                param.add_(delta)
        return loss


class IterationSchedule:
    """The learning-rate factor at iteration t, in closed form (used through LambdaLR, whose
    state_dict keeps this object's plain attributes, so checkpoints carry a resized schedule).

    poly: (1 - t/T)**power; cosine: (1 + cos(pi t/T)) / 2; step: factor**(milestones passed),
    a milestone being the first iteration after a listed epoch. T is the run's iterations.
    """

    def __init__(
        self,
        kind: str,
        epochs: int,
        iters_per_epoch: int,
        step_epochs: Sequence[int] = (),
        factor: float = 0.1,
        power: float = 0.9,
    ):
        self.kind, self.epochs, self.factor, self.power = kind, epochs, factor, power
        self.step_epochs = list(step_epochs)
        self.total = max(epochs * iters_per_epoch, 1)
        self.milestones = [epoch * iters_per_epoch for epoch in self.step_epochs]

    def __call__(self, iteration: int) -> float:
        progress = min(iteration, self.total) / self.total  # never past the end: no rise again
        if self.kind == "poly":
            return (1.0 - progress) ** self.power
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.factor ** sum(iteration >= m for m in self.milestones)

    def resize(self, epochs_done: int, iterations_done: int, iters_per_epoch: int) -> None:
        """The rest of the run has ``iters_per_epoch`` per epoch: the end and the milestones
        still ahead move, so the schedule is the one the real count would have given (a rate
        that decayed too fast in the mis-sized epoch comes back up to where it belongs)."""
        self.total = max(iterations_done + (self.epochs - epochs_done) * iters_per_epoch, 1)
        self.milestones = [
            milestone
            if epoch <= epochs_done
            else iterations_done + (epoch - epochs_done) * iters_per_epoch
            for epoch, milestone in zip(self.step_epochs, self.milestones, strict=True)
        ]


def resize_schedule(
    scheduler: torch.optim.lr_scheduler.LambdaLR, epochs_done: int, iters_per_epoch: int
) -> None:
    """Size the rest of the run from a measured batch count per epoch (Pipe mode): from here
    on the rates are those the real count would have given from the start."""
    for schedule in scheduler.lr_lambdas:
        schedule.resize(epochs_done, scheduler.last_epoch, iters_per_epoch)
    # the next batch already uses the corrected rate, not the one computed before the resize
    rates = [
        base * fn(scheduler.last_epoch)
        for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    ]
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    scheduler._last_lr = rates


def build_optimizer(
    settings: Optimization, params: Iterable[nn.Parameter], device: torch.device | None = None
) -> torch.optim.Optimizer:
    """The built-ins' optimizers: momentum and weight_decay apply to sgd and nag only; adam
    takes its betas and eps; rmsprop is MXNet's centered form (segmentation's gamma1, gamma2)
    or the plain one (classification's gamma). On a GPU, SGD and Adam use their fused kernels
    (one launch for all parameters instead of one per tensor)."""
    lr, name = settings.learning_rate, settings.optimizer
    fused = device is not None and device.type == "cuda"
    if name in ("sgd", "nag"):
        return torch.optim.SGD(
            params,
            lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
            nesterov=name == "nag",
            fused=fused or None,
        )
    if name == "adam":
        return torch.optim.Adam(
            params, lr, betas=settings.adam_betas, eps=settings.eps, fused=fused or None
        )
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr)
    if name == "rmsprop" and settings.rmsprop_momentum is not None:
        # MXNet's centered RMSProp, where segmentation's gamma2 (momentum) is defined
        return MXNetRMSProp(
            params, lr, gamma1=settings.rmsprop_decay, gamma2=settings.rmsprop_momentum
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr, alpha=settings.rmsprop_decay, eps=settings.eps)
    raise ValueError(f"unknown optimizer {name}")


def build_scheduler(
    settings: Optimization, optimizer: torch.optim.Optimizer, iters_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler stepped once per iteration: poly (power 0.9) and cosine decay smoothly over
    the whole run; step multiplies by the factor after each listed epoch (none listed: a
    constant rate). In closed form, so Pipe mode can resize it once an epoch's real length is
    known."""
    schedule = IterationSchedule(
        settings.schedule,
        settings.epochs,
        iters_per_epoch,
        settings.step_epochs,
        settings.factor,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


@dataclass(frozen=True, kw_only=True)
class Trainables:
    """What training changes, which travels together: through the epoch loop, into every
    checkpoint and back out of it on a resume."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # enabled for fp16 only
    # What the training steps call: ``model`` wrapped for data parallelism and/or compiled
    # (compile_model); None: ``model`` itself. Validation, checkpoints and model/ always use
    # ``model``, whose weights the wrappers share.
    step_model: nn.Module | None = None

    @property
    def stepped(self) -> nn.Module:
        """The module the training steps call."""
        return self.model if self.step_model is None else self.step_model
