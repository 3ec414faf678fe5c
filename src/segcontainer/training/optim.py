"""The built-in's rmsprop update and the per-iteration learning-rate schedules.

Neither is available in torch in the form needed: torch.optim.RMSprop(centered=True) adds
epsilon outside the square root and applies the current learning rate to its whole momentum
buffer; torch's PolynomialLR and CosineAnnealingLR are recursive, so their length cannot be
corrected mid-run (Pipe mode learns the real batch count only after an epoch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch


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
