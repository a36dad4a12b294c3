"""Schedules of XKD pretraining (the released `main_xkd.py`; EMA momentum of paper Eq. 13), pure functions of the step.

A pure function of the optimizer step needs no state of its own: a resumed run recomputes exactly the values the
uninterrupted run would have used, and a checkpoint only has to store the step.

* learning rate: linear warm-up from 0 to ``base_lr`` over the warm-up steps (``linspace(0, base, warmup)``), then
  a half cosine to ``final_lr`` over the remaining steps, per iteration (DINO-style ``cosine_scheduler``);
* EMA momentum: ``m(it) = end - (end - start) * (1 + cos(pi * it / total)) / 2``, 0.997 -> 1 per iteration;
* teacher temperature: ``linspace(warmup_temp, temp, warmup_epochs)`` per epoch, then constant;
* weight decay groups: no decay for biases and 1-D parameters; teachers and frozen parameters excluded.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn


def learning_rate(step: int, base_lr: float, warmup_steps: int, total_steps: int, final_lr: float = 0.0) -> float:
    """Learning rate at optimizer step ``step`` (0-based).

    Warm-up (``step < warmup_steps``): ``base_lr * step / (warmup_steps - 1)`` (``np.linspace(0, base_lr,
    warmup_steps)``). After: ``final_lr + (base_lr - final_lr) * (1 + cos(pi * k / K)) / 2`` with
    ``k = step - warmup_steps`` and ``K = total_steps - warmup_steps``. Steps past the end keep ``final_lr``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    warmup_steps = max(0, min(int(warmup_steps), int(total_steps)))
    if step < warmup_steps:
        return base_lr * step / (warmup_steps - 1) if warmup_steps > 1 else base_lr
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return base_lr
    k = min(step - warmup_steps, decay_steps)
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * k / decay_steps))


def ema_momentum(step: int, total_steps: int, start: float = 0.997, end: float = 1.0) -> float:
    """Teacher EMA momentum at ``step``: ``end - (end - start) * (1 + cos(pi * step / total_steps)) / 2``
    (released: 1 + 0.5 (0.997 - 1)(1 + cos(pi it / total_iters)), no warm-up)."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    step = min(max(step, 0), total_steps)
    return end - (end - start) * (1.0 + math.cos(math.pi * step / total_steps)) / 2.0


def teacher_temperature(epoch: int, warmup_temperature: float, temperature: float, warmup_epochs: int) -> float:
    """Teacher temperature of epoch ``epoch`` (0-based): ``linspace(warmup, final, warmup_epochs)[epoch]`` during
    the warm-up, ``temperature`` after (DINO/XKD per-epoch schedule)."""
    if epoch < warmup_epochs:
        if warmup_epochs == 1:
            return float(warmup_temperature)
        return warmup_temperature + (temperature - warmup_temperature) * epoch / (warmup_epochs - 1)
    return float(temperature)


def weight_decay_groups(model: nn.Module, weight_decay: float, skip: Iterable[nn.Module] = ()) -> list[dict]:
    """AdamW parameter groups, released split: group 0 (no decay) holds biases and every 1-D parameter (norms);
    group 1 (``weight_decay``) all other trainable parameters (weights, CLS tokens, position embeddings, mask
    tokens, ``weight_v``). Parameters with ``requires_grad=False`` (the EMA teachers, the frozen ``weight_g``) and
    those of the ``skip`` modules are left out; shared parameters appear once.

    Returns:
        ``[{"params": [...], "weight_decay": 0.0, "group_name": "no_decay"}, {..., "group_name": "decay"}]``.
    """
    skipped = {id(p) for m in skip for p in m.parameters()}
    decay, no_decay, seen = [], [], set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in skipped or id(param) in seen:
            continue
        seen.add(id(param))
        (no_decay if name.endswith(".bias") or param.ndim <= 1 else decay).append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0, "group_name": "no_decay"},
        {"params": decay, "weight_decay": float(weight_decay), "group_name": "decay"},
    ]


@torch.no_grad()
def clip_gradients_per_parameter(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Released (DINO) clipping: each parameter's gradient is scaled to L2 norm ``max_norm`` when larger
    (coefficient ``max_norm / (norm + 1e-6)``), each on its own, not by a global norm.

    Returns:
        the per-parameter gradient norms before clipping (1-D tensor), for logging.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    # One stacked tensor of norms and coefficients: a handful of kernels instead of a few per parameter.
    norms = torch.stack(torch._foreach_norm(grads, 2.0)).float()
    coefs = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(coefs.unbind()))
    return norms


__all__ = [
    "learning_rate", "ema_momentum", "teacher_temperature", "weight_decay_groups", "clip_gradients_per_parameter",
]
