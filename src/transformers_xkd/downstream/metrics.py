"""Offline classification metrics (no `evaluate.load`, which fetches metric code from the Hub and fails offline).

All functions take numpy arrays (or anything `np.asarray` accepts) and return plain Python floats in percent,
the unit the paper reports.
"""

from __future__ import annotations

import numpy as np

__all__ = ["top_k_accuracy", "mean_average_precision", "average_by_video", "classification_metrics"]


def top_k_accuracy(scores, labels, k: int = 1) -> float:
    """Top-k accuracy in percent.

    Args:
        scores (`(N, C)`): any monotone class scores (logits, probabilities, SVM decision values).
        labels (`(N,)`): integer class indices.
        k (`int`): how many of the highest-scored classes count as a hit; clipped to C.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores must be (N, C) with N = len(labels) = {labels.shape[0]}, got {scores.shape}")
    if scores.shape[0] == 0:
        raise ValueError("top_k_accuracy: no samples to score")
    k = min(int(k), scores.shape[1])
    # Not sklearn.metrics.top_k_accuracy_score: it raises for two classes given as (N, 2) scores (it wants the
    # binary 1-D form), warns at k >= C (top5 of a <= 5-class task), rejects labels outside range(C), and breaks
    # ties towards the highest class index; on untied scores of 3+ classes the two agree exactly.
    # argpartition: O(N C) instead of a full sort; ties broken arbitrarily, as torch.topk does
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float(100.0 * np.mean(np.any(top == labels[:, None], axis=1)))


def mean_average_precision(scores, targets) -> float:
    """Macro mean average precision in percent (FSD50K's metric), over the classes that have a positive.

    Args:
        scores (`(N, C)`): class scores (sigmoid probabilities or logits).
        targets (`(N, C)`): multi-hot {0, 1} targets.
    """
    from sklearn.metrics import average_precision_score

    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores and targets must both be (N, C); got {scores.shape} and {targets.shape}")
    present = targets.sum(axis=0) > 0
    if not present.any():
        raise ValueError("mean_average_precision: no class has a positive target")
    # AP is undefined for a class with no positive; sklearn would warn and return 0, which biases the mean down
    return float(100.0 * average_precision_score(targets[:, present], scores[:, present], average="macro"))


def average_by_video(scores, video_ids, labels=None):
    """Average clip scores per video (the paper's test protocol).

    Args:
        scores (`(N_clips, C)`), video_ids (`(N_clips,)` ints), labels (`(N_clips,)` or `(N_clips, C)`, optional).

    Returns:
        `(video_scores (V, C), video_labels or None, unique_ids (V,))`, videos in increasing id order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    video_ids = np.asarray(video_ids).reshape(-1)
    uniq, inverse = np.unique(video_ids, return_inverse=True)
    sums = np.zeros((len(uniq), scores.shape[1]))
    np.add.at(sums, inverse, scores)
    counts = np.bincount(inverse, minlength=len(uniq))[:, None]
    video_labels = None
    if labels is not None:
        labels = np.asarray(labels)
        first = np.zeros(len(uniq), dtype=np.int64)
        first[inverse[::-1]] = np.arange(len(inverse))[::-1]  # index of each video's first clip
        video_labels = labels[first]
    return sums / counts, video_labels, uniq


def classification_metrics(scores, labels, multi_label: bool = False) -> dict[str, float]:
    """`{"top1", "top5"}` for single-label, `{"mAP"}` (plus `top1` of the arg-max) for multi-label."""
    if multi_label:
        return {"mAP": mean_average_precision(scores, labels)}
    return {"top1": top_k_accuracy(scores, labels, 1), "top5": top_k_accuracy(scores, labels, 5)}
