"""Optimizers and learning-rate schedules for torchreid engines (stock ones included).

- :func:`build_optimizer`: torchreid's ``build_optimizer`` (same names and hyper-parameters)
  plus DeMo's *parameter groups by name*: pretrained-backbone parameters at their own lr, bias
  parameters at ``bias_lr_factor`` x their group's lr with their own weight decay. DeMo applies
  the backbone rule after the bias rule, so backbone biases keep the backbone lr; so does this.
- :class:`EpochScheduler`: timm's ``CosineLRScheduler`` (DeMo's schedule) behind the interface
  torchreid's engines call (``step()`` without arguments at the end of each epoch,
  ``state_dict``/``load_state_dict`` in checkpoints).
- :class:`WarmupLambda` / :class:`WarmupLR`: linear warm-up then step / multi-step / cosine,
  relative to *each group's* lr. timm's cosine warms every group from one absolute lr and
  decays to one absolute floor, which is not the same schedule once groups differ, so these
  stay.
- :func:`build_lr_scheduler`: one entry for every name in :data:`SCHEDULERS`.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from . import compat
from .errors import ConfigError

__all__ = [
    "SCHEDULERS", "WarmupLambda", "WarmupLR", "EpochScheduler", "build_lr_scheduler",
    "build_optimizer", "param_groups", "group_lrs", "model_backbone_params",
]

logger = logging.getLogger(__name__)

SCHEDULERS: tuple[str, ...] = ("single_step", "multi_step", "cosine", "warmup_single_step",
                               "warmup_multi_step", "warmup_cosine", "timm_cosine")


# ----------------------------------------------------------------------------- optimizer

def _matches(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p if p.endswith(".") else p + ".")
               or (not p.endswith(".") and name.startswith(p)) for p in prefixes)


def model_backbone_params(model: nn.Module) -> tuple[str, ...]:
    """The backbone parameter prefixes ``model`` declares (``backbone_param_prefixes()``, e.g.
    ``SDTPSNet``'s ``backbone.vit``/``backbone.proj``); ``()`` for a model that declares none."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    declared = getattr(model, "backbone_param_prefixes", None)
    return tuple(declared()) if callable(declared) else ()


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 backbone_params: Sequence[str] = (), backbone_lr: float | None = None,
                 bias_lr_factor: float = 1.0,
                 weight_decay_bias: float | None = None) -> list[dict[str, Any]]:
    """Trainable parameters in up to four named groups (``backbone_weight``, ``backbone_bias``,
    ``head_weight``, ``head_bias``), DeMo's ``make_optimizer`` rules:

    - a parameter whose name contains ``bias``: lr ``lr * bias_lr_factor``, weight decay
      ``weight_decay_bias`` (``None`` = ``weight_decay``);
    - then a parameter whose name starts with one of ``backbone_params`` (dotted prefixes of
      ``model.named_parameters()``): lr ``backbone_lr`` (``None`` = keep the rule above), its
      weight decay unchanged.

    Parameters with ``requires_grad=False`` are left out (DeMo does the same).
    """
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    names = [n for n, _ in model.named_parameters()]
    for prefix in backbone_params:
        if not any(_matches(n, [prefix]) for n in names):
            raise ConfigError(f"train.backbone_params: '{prefix}' names no parameter of "
                              f"{type(model).__name__} (its parameters start with "
                              f"{sorted({n.split('.')[0] for n in names})})")
    wd_bias = weight_decay if weight_decay_bias is None else weight_decay_bias
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_bias = "bias" in name
        in_backbone = _matches(name, backbone_params)
        g_lr = lr * bias_lr_factor if is_bias else lr
        if in_backbone and backbone_lr is not None:
            g_lr = backbone_lr
        key = f"{'backbone' if in_backbone else 'head'}_{'bias' if is_bias else 'weight'}"
        group = groups.setdefault(key, {"name": key, "params": [], "lr": g_lr,
                                        "weight_decay": wd_bias if is_bias else weight_decay})
        group["params"].append(param)
    order = ("backbone_weight", "backbone_bias", "head_weight", "head_bias")
    return [groups[k] for k in order if k in groups]


def build_optimizer(model: nn.Module, optim: str = "adam", lr: float = 0.0003,
                    weight_decay: float = 5e-04, backbone_params: Sequence[str] = (),
                    backbone_lr: float | None = None, bias_lr_factor: float = 1.0,
                    weight_decay_bias: float | None = None, **torchreid_kwargs: Any
                    ) -> torch.optim.Optimizer:
    """torchreid's ``build_optimizer`` (every keyword of it accepted), with the parameter groups
    of :func:`param_groups` when any of ``backbone_params``/``backbone_lr``/
    ``bias_lr_factor``/``weight_decay_bias`` asks for them. The result is a plain torch
    optimizer, so torchreid's stock engines use it unchanged.

    ``backbone_params`` empty means *the model's backbone*: the prefixes the model declares
    (:func:`model_backbone_params`), so one config serves every backbone variant; an explicit
    list is used as given, and a name in it that matches no parameter raises."""
    reference = compat.optim().build_optimizer(model, optim=optim, lr=lr,
                                               weight_decay=weight_decay, **torchreid_kwargs)
    grouped = bool(backbone_params) or backbone_lr is not None or bias_lr_factor != 1.0 \
        or weight_decay_bias is not None
    if not grouped:
        return reference
    if not backbone_params:
        backbone_params = model_backbone_params(model)
    if backbone_lr is not None and not backbone_params:
        raise ConfigError(f"train.backbone_lr is set but train.backbone_params is empty and "
                          f"{type(model).__name__} declares no backbone_param_prefixes(): say "
                          "which parameters are the backbone's")
    if torchreid_kwargs.get("staged_lr"):
        raise ConfigError("train.staged_lr (torchreid's base_lr_mult groups) cannot be combined "
                          "with train.backbone_lr / bias_lr_factor / weight_decay_bias groups; "
                          "use one or the other")
    groups = param_groups(model, lr, weight_decay, backbone_params, backbone_lr,
                          bias_lr_factor, weight_decay_bias)
    # same class and hyper-parameters as torchreid chose, our groups
    return type(reference)(groups, **reference.defaults)


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``{group name (or index): lr}`` of ``optimizer``'s parameter groups."""
    return {str(g.get("name", i)): float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}


# ----------------------------------------------------------------------------- schedules

class WarmupLambda:
    """Per-epoch lr factor: linear warm-up, then step / multi-step / cosine decay.

    Warm-up: ``warmup_factor -> 1`` linearly over ``warmup_epoch`` epochs (epoch 0 uses
    ``warmup_factor``). Then ``single_step``: ``gamma ** (epoch // stepsize[-1])``;
    ``multi_step``: ``gamma ** #{milestones <= epoch}`` (absolute epochs, like torchreid's);
    ``cosine``: from 1 down to ``min_lr_factor`` over the remaining epochs.
    """

    def __init__(self, kind: str, max_epoch: int, warmup_epoch: int = 0,
                 warmup_factor: float = 0.01, stepsize: Sequence[int] = (),
                 gamma: float = 0.1, min_lr_factor: float = 0.0) -> None:
        if kind not in ("single_step", "multi_step", "cosine"):
            raise ValueError(f"unknown schedule '{kind}'; expected single_step, multi_step or "
                             "cosine")
        if warmup_epoch < 0 or not 0 < warmup_factor <= 1:
            raise ValueError(f"warm-up needs warmup_epoch >= 0 and 0 < warmup_factor <= 1; got "
                             f"{warmup_epoch}, {warmup_factor}")
        steps = [int(s) for s in (stepsize if isinstance(stepsize, (list, tuple)) else [stepsize])]
        if kind != "cosine" and (not steps or min(steps) <= 0):
            raise ValueError(f"{kind} needs positive train.stepsize; got {list(stepsize)}")
        self.kind = kind
        self.max_epoch = int(max_epoch)
        self.warmup_epoch = int(warmup_epoch)
        self.warmup_factor = float(warmup_factor)
        self.stepsize = steps
        self.gamma = float(gamma)
        self.min_lr_factor = float(min_lr_factor)

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup_epoch:
            return self.warmup_factor + (1.0 - self.warmup_factor) * epoch / self.warmup_epoch
        if self.kind == "single_step":
            return self.gamma ** (epoch // self.stepsize[-1])
        if self.kind == "multi_step":
            return self.gamma ** sum(epoch >= s for s in self.stepsize)
        span = max(1, self.max_epoch - self.warmup_epoch)
        progress = min(1.0, (epoch - self.warmup_epoch) / span)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.min_lr_factor + (1 - self.min_lr_factor) * cosine


class WarmupLR(torch.optim.lr_scheduler.LambdaLR):
    """``LambdaLR`` over a :class:`WarmupLambda` whose *schedule comes from the config*.

    The checkpoint keeps the position (``last_epoch``, base lrs), not the schedule's
    parameters: after ``load_state_dict`` the lr is recomputed from this object's schedule, so
    a run resumed with a longer ``max_epoch`` follows the new schedule.
    """

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["lr_lambdas"] = [None] * len(self.lr_lambdas)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict, lr_lambdas=[None] * len(self.lr_lambdas))
        super().load_state_dict(state)
        for group, base, fn in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas):
            group["lr"] = base * fn(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class EpochScheduler:
    """A timm scheduler stepped the way torchreid's engines step theirs.

    torchreid calls ``scheduler.step()`` (no argument) after each epoch; timm's schedulers take
    the epoch explicitly. This keeps ``last_epoch`` (0-based, the epoch about to be trained)
    and sets the lrs of ``t = last_epoch + t_offset``. ``t_offset=1`` is DeMo's indexing: its
    loop calls ``scheduler.step(epoch)`` *before* epoch ``epoch = 1..max_epoch``, so the first
    epoch trains at ``t = 1`` and the last at ``t = max_epoch``.

    The checkpoint keeps the position only; after ``load_state_dict`` the lrs are recomputed
    from this object's (the config's) schedule, as :class:`WarmupLR` does.
    """

    def __init__(self, scheduler: Any, t_offset: int = 1) -> None:
        self.scheduler = scheduler
        self.optimizer = scheduler.optimizer
        self.t_offset = int(t_offset)
        self.last_epoch = 0
        self._apply()

    def _apply(self) -> None:
        self.scheduler.step(self.last_epoch + self.t_offset)

    def step(self, epoch: int | None = None) -> None:
        """Advance to the next epoch (or to ``epoch``, 0-based) and set its lrs."""
        self.last_epoch = self.last_epoch + 1 if epoch is None else int(epoch)
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "t_offset": self.t_offset}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_epoch = int(state_dict["last_epoch"])
        self._apply()


def build_lr_scheduler(optimizer: torch.optim.Optimizer, lr_scheduler: str = "warmup_cosine",
                       stepsize: Any = (30, 40), gamma: float = 0.1, max_epoch: int = 50,
                       warmup_epoch: int = 0, warmup_factor: float = 0.01,
                       min_lr_factor: float = 0.0, lr: float | None = None,
                       lr_noise: bool = False, lr_noise_pct: float = 0.67,
                       lr_noise_std: float = 1.0, lr_noise_seed: int = 42) -> Any:
    """The schedule ``lr_scheduler`` names, stepped once per epoch as torchreid's are.

    - torchreid's own names without warm-up (and no cosine floor): torchreid's scheduler;
    - ``warmup_*`` (or a cosine floor): :class:`WarmupLR`, every factor relative to each
      group's own lr;
    - ``timm_cosine``: DeMo's ``create_scheduler``, timm's ``CosineLRScheduler`` with
      ``t_initial=max_epoch``, ``lr_min=min_lr_factor * lr``, ``warmup_lr_init=warmup_factor *
      lr``, ``warmup_t=warmup_epoch`` (absolute values shared by every group; ``lr`` is
      ``train.lr``), noise ``(0, max_epoch)`` with ``lr_noise_pct``/``lr_noise_std``/
      ``lr_noise_seed`` when ``lr_noise``; wrapped in :class:`EpochScheduler`.

    The ``lr_noise*`` options exist only for ``timm_cosine``; asking for noise with another
    schedule raises.
    """
    if lr_scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown train.lr_scheduler '{lr_scheduler}'; expected one of "
                          f"{list(SCHEDULERS)}")
    if lr_scheduler == "timm_cosine":
        from timm.scheduler import CosineLRScheduler

        base = float(lr) if lr is not None else float(optimizer.defaults["lr"])
        sched = CosineLRScheduler(
            optimizer, t_initial=int(max_epoch), lr_min=min_lr_factor * base,
            warmup_lr_init=warmup_factor * base, warmup_t=int(warmup_epoch), cycle_limit=1,
            t_in_epochs=True, noise_range_t=(0, int(max_epoch)) if lr_noise else None,
            noise_pct=lr_noise_pct, noise_std=lr_noise_std, noise_seed=int(lr_noise_seed))
        return EpochScheduler(sched, t_offset=1)
    if lr_noise:
        raise ConfigError(f"train.lr_noise is only implemented for train.lr_scheduler "
                          f"timm_cosine, not '{lr_scheduler}'")
    kind = lr_scheduler[len("warmup_"):] if lr_scheduler.startswith("warmup_") else lr_scheduler
    steps = list(stepsize) if isinstance(stepsize, (list, tuple)) else [int(stepsize)]
    if warmup_epoch == 0 and kind == lr_scheduler and min_lr_factor == 0:
        step_arg: Any = steps[-1] if kind == "single_step" else steps
        return compat.optim().build_lr_scheduler(optimizer, lr_scheduler=kind,
                                                 stepsize=step_arg, gamma=gamma,
                                                 max_epoch=max_epoch)
    return WarmupLR(
        optimizer, WarmupLambda(kind, max_epoch, warmup_epoch, warmup_factor, steps, gamma,
                                min_lr_factor))
