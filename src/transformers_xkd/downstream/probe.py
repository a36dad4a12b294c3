"""Linear (FC) probe on frozen features (the released `codes/eval` linear configs): K400 top-1, FSD50K multi-label mAP.

The probe is one `nn.Linear` (optionally after dropout) trained with AdamW on cached clip features; test scores
are averaged over a video's clips (softmax, or sigmoid for multi-label) before the metric. Training on cached
features is equivalent to the released frozen-backbone linear eval without augmentation, and far cheaper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .features import FeatureSet
from .metrics import average_by_video, classification_metrics

__all__ = ["PROBE_RECIPES", "ProbeResult", "train_linear_probe"]

# Released linear-probe recipes (the released `codes/eval` configs).
PROBE_RECIPES = {
    "kinetics400": dict(lr=0.01, epochs=100, weight_decay=0.0, dropout=0.0, schedule="cosine"),
    "fsd50k": dict(lr=1e-3, epochs=50, weight_decay=0.0, dropout=0.3, schedule="constant", multi_label=True),
}


@dataclass
class ProbeResult:
    """Metrics (percent) of the trained probe plus the layer itself.

    Attributes:
        metrics: ``{"top1", "top5"}`` or ``{"mAP"}`` on test videos.
        weight `(C, D)`, bias `(C,)`: the probe.
        losses: mean training loss per epoch.
    """

    metrics: dict[str, float]
    weight: np.ndarray
    bias: np.ndarray
    losses: list[float] = field(default_factory=list)


def train_linear_probe(
    train: FeatureSet,
    test: FeatureSet,
    num_classes: int | None = None,
    multi_label: bool | None = None,
    lr: float = 0.01,
    epochs: int = 100,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    dropout: float = 0.0,
    schedule: str = "cosine",
    seed: int = 0,
    device: str = "cpu",
) -> ProbeResult:
    """Train `Linear(D, C)` on `train.features (N, D)`; evaluate per video on ``test``.

    Args:
        num_classes: defaults to the label width (multi-label) or 1 + the largest label.
        multi_label: BCE + mAP; defaults to ``train.labels.ndim == 2``.
        schedule: ``"cosine"`` (per step, to 0) or ``"constant"``.
    """
    multi_label = train.labels.ndim == 2 if multi_label is None else multi_label
    if num_classes is None:
        num_classes = train.labels.shape[1] if multi_label else int(max(train.labels.max(), test.labels.max()) + 1)
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.as_tensor(train.features, dtype=torch.float32)
    y = torch.as_tensor(train.labels, dtype=torch.float32 if multi_label else torch.long)
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(x.shape[1], num_classes)).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    def factor(step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / total)) if schedule == "cosine" else 1.0

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    losses = []
    head.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        running = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i: i + batch_size]
            logits = head(x[idx].to(device))
            target = y[idx].to(device)
            if multi_label:
                loss = F.binary_cross_entropy_with_logits(logits, target)
            else:
                loss = F.cross_entropy(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach()) * len(idx)
        losses.append(running / len(x))
    head.eval()
    with torch.no_grad():
        logits = head(torch.as_tensor(test.features, dtype=torch.float32, device=device)).cpu()
        probs = torch.sigmoid(logits) if multi_label else logits.softmax(-1)
    scores, labels, _ = average_by_video(probs.numpy(), test.video_ids, test.labels)
    linear = head[1]
    return ProbeResult(
        metrics=classification_metrics(scores, labels, multi_label),
        weight=linear.weight.detach().cpu().numpy(),
        bias=linear.bias.detach().cpu().numpy(),
        losses=losses,
    )
