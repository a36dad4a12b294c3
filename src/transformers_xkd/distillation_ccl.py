"""CCL objectives: "Distilling Audio-Visual Knowledge by Compositional Contrastive Learning" (Chen et al., CVPR 2021).

Every function follows a file of the released code (yanbeic/CCL @ b590483); notation of
``shared/reference/peer_methods_and_user_asks.md`` section 1a: ``s`` student pooled feature, ``t`` teacher feature,
``m`` compositional embedding, ``z_v`` / ``z_m`` logits, ``y`` labels.

* :func:`ccl_contrastive_loss` -- ``loss/nce_loss.py`` (multi-class contrastive distillation, one direction);
  :func:`ccl_symmetric_contrastive_loss` -- ``NCE(x, y) + NCE(y, x)`` as ``training.py`` calls it.
* :func:`ccl_symmetric_kl_loss` -- ``loss/jsd_loss.py`` (called "JSD" there; it is the symmetric KL).
* :class:`CCLCompositionHead` -- ``models/composition_classifier.py`` with ``normalization=True`` (as ``main.py``
  builds it).
* :func:`ccl_teacher_terms` / :func:`ccl_objective` -- the per-teacher composition and student objectives of
  ``training.py`` (``train_a_epoch``, ``train_i_epoch``, ``train_ai_epoch``), with the released two-optimizer
  gradient routing reproduced for a single optimizer (see :func:`ccl_objective`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = [
    "CCL_EPSILON",
    "CCL_TEMPERATURES",
    "SingleLabelBatchError",
    "ccl_contrastive_loss",
    "ccl_symmetric_contrastive_loss",
    "ccl_symmetric_kl_loss",
    "CCLCompositionHead",
    "CCLTeacherTerms",
    "CCLObjectiveOutput",
    "ccl_teacher_terms",
    "ccl_objective",
]

# released EPISILON inside every log (nce_loss.py, jsd_loss.py)
CCL_EPSILON = 1e-10
# main.py: NCELoss(temperature=0.5) for audio pairs, NCELoss(temperature=0.1) for image pairs
CCL_TEMPERATURES = {"audio": 0.5, "image": 0.1}
_SINGLE_LABEL_MODES = ("drop", "error")


class SingleLabelBatchError(ValueError):
    """A contrastive term got a batch whose samples all share one label (no negatives)."""


def _zero_like_graph(*tensors: torch.Tensor) -> torch.Tensor:
    # a zero that stays connected to the inputs, so that backward() works and gives zero gradients
    return sum(t.sum() for t in tensors) * 0.0


def _has_negatives(labels: torch.Tensor) -> bool:
    return labels.numel() > 1 and bool((labels != labels[0]).any())


def ccl_contrastive_loss(
    x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, temperature: float, on_single_label: str = "drop"
) -> torch.Tensor:
    r"""Multi-class contrastive distillation loss of CCL, one direction (``loss/nce_loss.py``, ``NCELoss``).

    Both sides are L2-normalised; :math:`c_{ij} = 1 - \|\hat x_i - \hat y_j\|^2 / 2` (the cosine),
    :math:`p_{ij} = \mathrm{softmax}_j(c_{ij} / \tau)`; positives :math:`P(i) = \{j: y_j = y_i\}` (the anchor
    itself included), negatives :math:`N(i)` the rest, and

    .. math:: \ell_i = -\frac{1}{|P(i)|}\sum_{j\in P(i)} \log(p_{ij} + \epsilon)
              - \frac{1}{|N(i)|}\sum_{j\in N(i)} \log(1 - p_{ij} + \epsilon), \qquad L = \mathrm{mean}_i\, \ell_i

    with the released :math:`\epsilon = 10^{-10}`.

    Args:
        x, y: `(B, D)` embeddings (rows are paired by index only through the labels).
        labels: `(B,)` class ids.
        temperature: :math:`\tau` (0.5 audio, 0.1 image in the released scripts).
        on_single_label: a batch whose samples all share one label has no negatives and the released code returns
            NaN (0 / 0). ``"drop"`` (default) returns a zero that keeps the graph and logs a warning; ``"error"``
            raises :class:`SingleLabelBatchError`.

    Returns: scalar tensor.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"ccl_contrastive_loss: x and y must be (B, D) of the same shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if labels.shape != (x.shape[0],):
        raise ValueError(f"ccl_contrastive_loss: labels must be ({x.shape[0]},), got {tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"ccl_contrastive_loss: temperature must be > 0, got {temperature}")
    if on_single_label not in _SINGLE_LABEL_MODES:
        raise ValueError(f"on_single_label must be one of {_SINGLE_LABEL_MODES}, got {on_single_label!r}")
    if not _has_negatives(labels):
        msg = (f"ccl_contrastive_loss: all {labels.numel()} samples of the batch share one label, so no anchor has "
               "a negative (the released NCELoss would return NaN)")
        if on_single_label == "error":
            raise SingleLabelBatchError(msg + "; use batches with at least two classes.")
        logger.warning(msg + "; the contrastive term is dropped for this batch.")
        return _zero_like_graph(x, y)
    xn, yn = F.normalize(x, dim=1), F.normalize(y, dim=1)
    cos = xn @ yn.T  # = 1 - ||xn_i - yn_j||^2 / 2 for unit vectors
    p = torch.softmax(cos / temperature, dim=1)
    pos = (labels[:, None] == labels[None, :]).to(p.dtype)
    neg = 1.0 - pos
    pos_term = -(torch.log(p + CCL_EPSILON) * pos).sum(1) / pos.sum(1)
    neg_term = -(torch.log(1.0 - p + CCL_EPSILON) * neg).sum(1) / neg.sum(1)
    return (pos_term + neg_term).mean()


def ccl_symmetric_contrastive_loss(x, y, labels, temperature: float, on_single_label: str = "drop") -> torch.Tensor:
    """``NCE(x, y) + NCE(y, x)``: how ``training.py`` applies :func:`ccl_contrastive_loss` to every pair."""
    return (ccl_contrastive_loss(x, y, labels, temperature, on_single_label)
            + ccl_contrastive_loss(y, x, labels, temperature, on_single_label))


def ccl_symmetric_kl_loss(p_logits: torch.Tensor, q_logits: torch.Tensor, weight: float = 0.5) -> torch.Tensor:
    r"""Logit-level term of CCL (``loss/jsd_loss.py``, ``JSDLoss(weight=0.5)``): despite the name, the symmetric KL

    .. math:: L = w \cdot \mathrm{mean}_i \sum_c \big[p_{ic}\log(p_{ic}/q_{ic} + \epsilon)
              + q_{ic}\log(q_{ic}/p_{ic} + \epsilon)\big]

    with :math:`p, q` the softmax of the two logit tensors, :math:`\epsilon = 10^{-10}` and :math:`w = 0.5`.
    """
    if p_logits.shape != q_logits.shape or p_logits.ndim != 2:
        raise ValueError(f"ccl_symmetric_kl_loss: logits must be (B, C) of one shape, got {tuple(p_logits.shape)} "
                         f"and {tuple(q_logits.shape)}")
    if p_logits.shape[0] == 0:
        return _zero_like_graph(p_logits, q_logits)
    p, q = torch.softmax(p_logits, dim=1), torch.softmax(q_logits, dim=1)
    loss = (p * torch.log(p / q + CCL_EPSILON)).sum(1) + (q * torch.log(q / p + CCL_EPSILON)).sum(1)
    return loss.mean() * weight


class CCLCompositionHead(nn.Module):
    r"""The compositional embedding of CCL (``models/composition_classifier.py``, built with normalization=True).

    .. math:: r = W_c [\hat t; \hat s] + b_c, \qquad m = t + r, \qquad z_m = W_o m + b_o

    a single Linear ``2d -> d`` on the concatenation of the L2-normalised teacher and student features, a residual on
    the *un-normalised* teacher feature, and a Linear ``d -> C`` classifier. (``0.55 M`` parameters for d = 512,
    C = 51.)

    Args:
        hidden_size: ``d``, the width of the teacher and student features (equal, as the residual needs).
        num_labels: ``C``.
        normalize_inputs: L2-normalise both inputs before the concatenation (released: True).
    """

    def __init__(self, hidden_size: int, num_labels: int, normalize_inputs: bool = True):
        super().__init__()
        self.hidden_size, self.normalize_inputs = int(hidden_size), bool(normalize_inputs)
        self.composition = nn.Linear(2 * hidden_size, hidden_size)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, teacher: torch.Tensor, student: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, d)`, `(B, d)` -> `(logits (B, C), composition m (B, d))`."""
        if teacher.shape != student.shape or teacher.ndim != 2 or teacher.shape[1] != self.hidden_size:
            raise ValueError(f"CCLCompositionHead: teacher and student features must both be (B, {self.hidden_size}),"
                             f" got {tuple(teacher.shape)} and {tuple(student.shape)}")
        t, s = teacher, student
        if self.normalize_inputs:
            t, s = F.normalize(t, dim=1), F.normalize(s, dim=1)
        composition = teacher + self.composition(torch.cat([t, s], dim=1))
        return self.classifier(composition), composition


@dataclass
class CCLTeacherTerms:
    """The loss terms of one teacher ``k`` (``training.py``; names of the released variables in brackets).

    Attributes:
        composition_ce: ``CE(z_m, y)`` [loss_cls_a / loss_cls_i].
        student_composition: ``symNCE(s, m)`` [loss_vm].
        student_teacher: ``symNCE(s, t)`` [loss_va / loss_vi].
        composition_teacher: ``symNCE(m, t)`` [loss_ma / loss_mi].
        kl: ``0.5 * symKL(z_v, z_m)`` [loss_jsd_a / loss_jsd_i].
    """

    composition_ce: torch.Tensor
    student_composition: torch.Tensor
    student_teacher: torch.Tensor
    composition_teacher: torch.Tensor
    kl: torch.Tensor

    @property
    def composition_loss(self) -> torch.Tensor:
        """``L_m,k = CE(z_m, y) + symNCE(s, m) + symNCE(m, t) + 0.5 symKL`` [total_loss_a / total_loss_i]."""
        return self.composition_ce + self.student_composition + self.composition_teacher + self.kl

    @property
    def student_distillation(self) -> torch.Tensor:
        """The teacher's share of the student loss: ``symNCE(s, m) + symNCE(s, t) + 0.5 symKL`` [loss_ct_av + jsd]."""
        return self.student_composition + self.student_teacher + self.kl


def ccl_teacher_terms(
    student_features: torch.Tensor,
    student_logits: torch.Tensor,
    teacher_features: torch.Tensor,
    labels: torch.Tensor,
    head: CCLCompositionHead,
    temperature: float,
    kl_weight: float = 0.5,
    on_single_label: str = "drop",
    warn: bool = True,
) -> CCLTeacherTerms:
    """All terms of one teacher on the rows given (the caller drops rows without a teacher feature first).

    A one-label batch (no negatives) drops the three contrastive terms (``on_single_label="drop"``, one warning)
    or raises :class:`SingleLabelBatchError` (``"error"``); CE and KL are kept.
    """
    if student_features.shape[0] == 0:
        zero = _zero_like_graph(student_features, student_logits, teacher_features,
                                *[p for p in head.parameters()])
        return CCLTeacherTerms(zero, zero, zero, zero, zero)
    comp_logits, composition = head(teacher_features, student_features)
    if not _has_negatives(labels):
        # one check (and one warning) for the three contrastive pairs instead of six
        zero = _zero_like_graph(student_features, composition, teacher_features)
        if on_single_label == "error":
            raise SingleLabelBatchError(
                f"CCL: all {labels.numel()} distilled samples of the batch share one label, so the contrastive terms "
                "have no negatives (the released NCELoss would return NaN); use batches with at least two classes.")
        if warn:
            logger.warning(f"CCL: all {labels.numel()} distilled samples of the batch share one label (no negatives); "
                           "the contrastive terms are dropped for this batch, CE and KL are kept.")
        return CCLTeacherTerms(F.cross_entropy(comp_logits, labels), zero, zero, zero,
                               ccl_symmetric_kl_loss(student_logits, comp_logits, kl_weight))
    nce = lambda a, b: ccl_symmetric_contrastive_loss(a, b, labels, temperature, on_single_label)  # noqa: E731
    return CCLTeacherTerms(
        composition_ce=F.cross_entropy(comp_logits, labels),
        student_composition=nce(student_features, composition),
        student_teacher=nce(student_features, teacher_features),
        composition_teacher=nce(composition, teacher_features),
        kl=ccl_symmetric_kl_loss(student_logits, comp_logits, kl_weight),
    )


@dataclass
class CCLObjectiveOutput:
    """What :func:`ccl_objective` returns.

    Attributes:
        loss: the single-optimizer loss ``L_v + sum_k L_m,k(student detached)``: its gradients equal the released
            two-optimizer routing on every parameter.
        student_loss: ``L_v`` (the value the released code logs as the student's loss).
        composition_losses: ``{teacher: L_m,k}``.
        terms: every term by name (floats detached), for logging.
        num_distilled: ``{teacher: rows that had a teacher feature}``.
    """

    loss: torch.Tensor
    student_loss: torch.Tensor
    composition_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    num_distilled: dict[str, int] = field(default_factory=dict)


def ccl_objective(
    student_features: torch.Tensor,
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_features: dict[str, torch.Tensor],
    heads: dict[str, CCLCompositionHead] | nn.ModuleDict,
    temperatures: dict[str, float] | None = None,
    teacher_masks: dict[str, torch.Tensor] | None = None,
    loss_weight: float = 0.5,
    kl_weight: float = 0.5,
    on_single_label: str = "drop",
) -> CCLObjectiveOutput:
    r"""CCL-A / CCL-I (one teacher) and CCL-AI (two teachers), as ``training.py`` computes them.

    * Composition branch per teacher: ``L_m,k = CE(z_m, y) + symNCE(s, m) + symNCE(m, t) + 0.5 symKL(z_v, z_m)``.
    * Student, one teacher: ``L_v = CE(z_v, y) + symNCE(s, m) + symNCE(s, t) + 0.5 symKL(z_v, z_m)``.
    * Student, two teachers: ``L_v = CE(z_v, y) + lambda sum_k [symNCE(s, m_k) + symNCE(s, t_k)]
      + lambda sum_k 0.5 symKL(z_v, z_m_k)`` with ``lambda = loss_weight`` (0.5 in ``run_ccl_ai.sh``); the
      single-teacher scripts do not scale by it (released behaviour, kept).

    **Gradient routing.** The released loop is ``zero(head grads); L_m.backward(retain_graph); zero(student grads);
    L_v.backward(); step(head); step(student)``: the student receives only dL_v, each head dL_m + dL_v. One optimizer
    gets the same gradients from ``loss = L_v + sum_k L_m,k`` where ``L_m,k`` is computed from the *detached*
    student feature and logits (tested against a literal two-optimizer loop).

    Rows whose teacher feature is missing (``teacher_masks[k]`` False) are excluded from teacher ``k``'s terms and
    kept in ``CE(z_v, y)``, as the released loader does with its zero vectors.

    Args:
        student_features: `(B, d)` pooled student feature ``s``.
        student_logits: `(B, C)` ``z_v``.
        labels: `(B,)`.
        teacher_features: ``{"audio": (B, d), "image": (B, d)}`` (stop-gradient is the caller's: frozen teachers).
        heads: one :class:`CCLCompositionHead` per teacher name.
        temperatures: per teacher (default :data:`CCL_TEMPERATURES`).
        teacher_masks: per teacher `(B,)` bool, True where the feature exists (default all True).
        loss_weight: ``lambda`` of CCL-AI (only used with two or more teachers).
        kl_weight: the JSDLoss weight (0.5).
        on_single_label: see :func:`ccl_contrastive_loss`.
    """
    if student_logits.shape[0] != student_features.shape[0] or labels.shape != (student_features.shape[0],):
        raise ValueError("ccl_objective: student_features (B, d), student_logits (B, C) and labels (B,) must share B; "
                         f"got {tuple(student_features.shape)}, {tuple(student_logits.shape)}, {tuple(labels.shape)}")
    temperatures = {**CCL_TEMPERATURES, **(temperatures or {})}
    teacher_masks = teacher_masks or {}
    ce = F.cross_entropy(student_logits, labels)
    terms: dict[str, torch.Tensor] = {"ce": ce.detach()}
    distill = []
    composition_losses = {}
    counts = {}
    for name, t in teacher_features.items():
        if name not in heads:
            raise KeyError(f"ccl_objective: no composition head for teacher {name!r} (heads: {list(heads.keys())})")
        if name not in temperatures:
            raise KeyError(f"ccl_objective: no temperature for teacher {name!r}")
        if t.shape != student_features.shape:
            raise ValueError(f"ccl_objective: teacher {name!r} features must be {tuple(student_features.shape)} "
                             f"(project them to the student width first), got {tuple(t.shape)}")
        mask = teacher_masks.get(name)
        if mask is None:
            rows = slice(None)
            counts[name] = int(t.shape[0])
        else:
            rows = mask.to(torch.bool)
            counts[name] = int(rows.sum())
        s, z, tk, yk = student_features[rows], student_logits[rows], t[rows], labels[rows]
        head = heads[name]
        attached = ccl_teacher_terms(s, z, tk, yk, head, temperatures[name], kl_weight, on_single_label)
        # the head's own loss sees the student through detached tensors: the student never gets dL_m
        detached = ccl_teacher_terms(s.detach(), z.detach(), tk, yk, head, temperatures[name], kl_weight,
                                     on_single_label, warn=False)
        distill.append(attached.student_distillation)
        composition_losses[name] = detached.composition_loss
        for key in ("composition_ce", "student_composition", "student_teacher", "composition_teacher", "kl"):
            terms[f"{name}_{key}"] = getattr(attached, key).detach()
    weight = loss_weight if len(teacher_features) > 1 else 1.0
    student_loss = ce + weight * sum(distill) if distill else ce
    loss = student_loss + sum(composition_losses.values()) if composition_losses else student_loss
    terms["student"] = student_loss.detach()
    for name, value in composition_losses.items():
        terms[f"{name}_composition"] = value.detach()
    return CCLObjectiveOutput(loss, student_loss, composition_losses, terms, counts)
