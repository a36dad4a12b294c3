"""Linear SVM evaluation on frozen features (the released `codes/eval` SVM code).

``sklearn.svm.LinearSVC(C, max_iter=1000)`` (squared hinge, L2, one-vs-rest), one fit per cost of the released
sweep; every training clip is a sample; at test time the decision values of a video's clips are averaged and the
arg-max is the prediction. The released code reports the best test top-1 over the sweep, and so does
:func:`svm_sweep` (``best_cost``); note that this picks C on the test set, as the paper's numbers do.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from .features import FeatureSet
from .metrics import average_by_video, top_k_accuracy

__all__ = ["SVM_COST_SWEEPS", "SVMSweepResult", "svm_sweep", "svm_to_linear"]

# Released cost sweeps per dataset (the released `codes/eval` configs), in the released order.
SVM_COST_SWEEPS: dict[str, list[float]] = {
    "ucf101": [0.001, 0.01, 0.1, 1.0],
    "hmdb51": [0.001, 0.01, 0.1, 1.0],
    "kinetics400": [0.1, 0.001, 0.01, 1.0],
    "esc50": [1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0],
    "kinetics_sound": [1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0],
}


@dataclass
class SVMSweepResult:
    """Outcome of a cost sweep.

    Attributes:
        best_cost: the C with the highest video-level top-1 (first one in sweep order on ties).
        best_top1 / best_top5: its accuracies in percent.
        top1_per_cost / top5_per_cost: every cost's accuracy.
        weight `(C_classes, D)` / bias `(C_classes,)`: the best SVM as a linear layer (``decision = x @ W.T + b``).
        classes: the label ids the rows of ``weight`` stand for.
        num_train_clips / num_test_videos / num_test_clips: sizes.
    """

    best_cost: float
    best_top1: float
    best_top5: float
    top1_per_cost: dict[float, float] = field(default_factory=dict)
    top5_per_cost: dict[float, float] = field(default_factory=dict)
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    classes: np.ndarray | None = None
    num_train_clips: int = 0
    num_test_videos: int = 0
    num_test_clips: int = 0

    def summary(self) -> str:
        rows = [f"  C={c:g}: top-1 {a:.2f}%  top-5 {self.top5_per_cost[c]:.2f}%" for c, a in self.top1_per_cost.items()]
        return "\n".join(
            [f"linear SVM sweep ({self.num_train_clips} train clips, {self.num_test_videos} test videos x "
             f"{self.num_test_clips // max(self.num_test_videos, 1)} clips):"]
            + rows
            + [f"best C={self.best_cost:g}: top-1 {self.best_top1:.2f}%"]
        )

    def to_dict(self) -> dict:
        return {
            "best_cost": self.best_cost, "best_top1": self.best_top1, "best_top5": self.best_top5,
            "top1_per_cost": {str(k): v for k, v in self.top1_per_cost.items()},
            "top5_per_cost": {str(k): v for k, v in self.top5_per_cost.items()},
            "num_train_clips": self.num_train_clips, "num_test_videos": self.num_test_videos,
        }


def svm_to_linear(svm, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted `LinearSVC` as `(weight (num_classes, D), bias (num_classes,))` over all ``num_classes`` ids.

    Binary SVMs have one row (the positive class score ``s``); it becomes ``[-s/2, s/2]``, which has the same
    arg-max. Classes absent from training get a very low score so they are never predicted.
    """
    coef = np.asarray(svm.coef_, dtype=np.float32)
    intercept = np.asarray(svm.intercept_, dtype=np.float32)
    classes = np.asarray(svm.classes_)
    if coef.shape[0] == 1 and len(classes) == 2:
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    weight = np.zeros((num_classes, coef.shape[1]), dtype=np.float32)
    bias = np.full((num_classes,), -1e4, dtype=np.float32)
    weight[classes] = coef
    bias[classes] = intercept
    return weight, bias


def _video_scores(svm, test: FeatureSet, num_classes: int):
    weight, bias = svm_to_linear(svm, num_classes)
    clip_scores = test.features @ weight.T + bias  # (N_clips, C), the SVM decision values
    return average_by_video(clip_scores, test.video_ids, test.labels)


def svm_sweep(
    train: FeatureSet,
    test: FeatureSet,
    costs: list[float] | str = "ucf101",
    max_iter: int = 1000,
    seed: int | None = 0,
    num_classes: int | None = None,
    verbose: bool = False,
) -> SVMSweepResult:
    """Fit one `LinearSVC` per cost on the training clips, score test videos by averaged clip decisions.

    Args:
        train / test: clip features (`FeatureSet`), single-label.
        costs: a list of C values, or a dataset name of :data:`SVM_COST_SWEEPS`.
        max_iter: liblinear iterations (1000 released; a ConvergenceWarning is silenced as in the released runs).
        seed: ``random_state`` of the SVM.
        num_classes: total classes (defaults to 1 + the largest label seen).

    Returns:
        :class:`SVMSweepResult` with ``best_cost`` and per-cost accuracies.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    if isinstance(costs, str):
        if costs not in SVM_COST_SWEEPS:
            raise ValueError(f"unknown sweep {costs!r}; known: {sorted(SVM_COST_SWEEPS)} (or pass a list of costs)")
        costs = SVM_COST_SWEEPS[costs]
    costs = [float(c) for c in costs]
    if not costs or any(c <= 0 for c in costs):
        raise ValueError(f"costs must be a non-empty list of positive numbers, got {costs}")
    if train.labels.ndim != 1:
        raise ValueError("svm_sweep is single-label; use probe.train_linear_probe(multi_label=True) for mAP")
    if len(np.unique(train.labels)) < 2:
        raise ValueError("svm_sweep needs at least two classes in the training features")
    num_classes = num_classes or int(max(train.labels.max(), test.labels.max()) + 1)
    top1, top5, fitted = {}, {}, {}
    for c in costs:
        # dual="auto": liblinear picks the primal when clips outnumber dimensions (the same optimum, faster)
        svm = LinearSVC(C=c, max_iter=max_iter, random_state=seed, dual="auto")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            svm.fit(train.features, train.labels)
        scores, labels, _ = _video_scores(svm, test, num_classes)
        top1[c] = top_k_accuracy(scores, labels, 1)
        top5[c] = top_k_accuracy(scores, labels, 5)
        fitted[c] = svm
        if verbose:
            print(f"C={c:g}: top-1 {top1[c]:.2f}%")
    best = max(costs, key=lambda c: (top1[c], -costs.index(c)))
    weight, bias = svm_to_linear(fitted[best], num_classes)
    return SVMSweepResult(
        best_cost=best, best_top1=top1[best], best_top5=top5[best], top1_per_cost=top1, top5_per_cost=top5,
        weight=weight, bias=bias, classes=np.asarray(fitted[best].classes_),
        num_train_clips=len(train), num_test_videos=test.num_videos, num_test_clips=len(test),
    )
