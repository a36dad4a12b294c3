"""MNF + CSC objectives: "Robust Cross-Modal Distillation for Unconstrained Videos" (Xia et al., arXiv 2304.07775).

Each piece follows a file of the released code (GeWu-Lab/cross-modal-distillation @ d5ceee6); notation of
``shared/reference/peer_methods_and_user_asks.md`` section 1b: ``V`` student token map, ``v`` pooled student
feature, ``a`` teacher (audio) embedding, ``g`` gate, ``a~ = g * a`` filtered teacher, ``z`` calibrated feature.

* :class:`MNFModule` -- ``models/modality_noise_filter.py`` (the Modality Noise Filter).
* :func:`csc_temperature`, :func:`csc_loss` -- ``loss/csc_loss.py`` and ``train.py`` (``get_similarity``):
  Contrastive Semantic Calibration with the per-pair temperature.
* :func:`mnf_triplet_loss` -- ``train.py`` ``get_triplet_loss`` (margin 0.2).
* :func:`mnf_gate_sparsity_loss` -- the ``--use_norm`` term of ``train.py`` (released loop bug kept by default).
* :func:`mnf_objective` -- ``train_av_epoch``: both losses with the released two-optimizer gradient routing
  reproduced for one optimizer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = [
    "MNF_EPSILON",
    "MNFOutput",
    "MNFModule",
    "csc_temperature",
    "csc_loss",
    "mnf_triplet_loss",
    "mnf_gate_sparsity_loss",
    "MNFObjectiveOutput",
    "mnf_objective",
    "frozen_batchnorm_statistics",
]

MNF_EPSILON = 1e-10  # released EPISILON inside the log of csc_loss.py


@dataclass
class MNFOutput:
    """Output of :class:`MNFModule` (the released return tuple, by name).

    Attributes:
        logits: `(B, C)` auxiliary class scores ``p_n`` [selected_video_pred].
        calibrated: `(B, d)` ``z = ReLU(BN(W_p u))`` [selected_video_feature].
        filtered_teacher: `(B, d)` ``a~ = g * a`` [selected_audio_feature].
        gate: `(B, d)` ``g`` in (0, 1) [audio_weight].
        attention: `(B, 1, N)` attention of the filtered-teacher query over the student tokens (head average).
    """

    logits: torch.Tensor
    calibrated: torch.Tensor
    filtered_teacher: torch.Tensor
    gate: torch.Tensor
    attention: torch.Tensor


class MNFModule(nn.Module):
    r"""Modality Noise Filter (``models/modality_noise_filter.py``, ``MNF``).

    1. gate :math:`g = \sigma(W_2\, \mathrm{ReLU}(\mathrm{BN}(W_1 [a; \bar V])))`, :math:`\bar V = \mathrm{mean}_n V_n`,
       ``W_1: 2d -> d/2``, ``W_2: d/2 -> d``;
    2. filtered teacher :math:`\tilde a = g \odot a`;
    3. one query token :math:`\tilde a` attends over the student tokens ``V`` with a 2-head
       ``nn.MultiheadAttention(d, 2)`` (the ``--n_head`` flag of the release is unused) -> ``u``;
    4. :math:`z = \mathrm{ReLU}(\mathrm{BN}(W_p u))` and the auxiliary classifier :math:`p_n = W_n z`.

    About 1.7 M parameters for d = 512, C = 51.

    Args:
        hidden_size: ``d`` (teacher and student token width, equal as the gate input and the triplet need).
        num_labels: ``C``.
        num_heads: attention heads (2 released).
    """

    def __init__(self, hidden_size: int, num_labels: int, num_heads: int = 2):
        super().__init__()
        d = int(hidden_size)
        if d % 2 or d % num_heads:
            raise ValueError(f"MNFModule: hidden_size={d} must be even and divisible by num_heads={num_heads}")
        self.hidden_size = d
        self.gate = nn.Sequential(nn.Linear(2 * d, d // 2), nn.BatchNorm1d(d // 2), nn.ReLU(), nn.Linear(d // 2, d))
        self.attention = nn.MultiheadAttention(d, num_heads=num_heads, batch_first=True)
        self.projection = nn.Sequential(nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU())
        self.classifier = nn.Linear(d, num_labels)

    def gate_weights(self) -> list[torch.Tensor]:
        """``[W_1, W_2]``: the weights the sparsity term looks at (``fc_weights`` of the release)."""
        return [self.gate[0].weight, self.gate[3].weight]

    def forward(self, teacher: torch.Tensor, student_tokens: torch.Tensor) -> MNFOutput:
        """`teacher (B, d)`, `student_tokens (B, N, d)` -> :class:`MNFOutput`."""
        d = self.hidden_size
        if teacher.ndim != 2 or teacher.shape[1] != d:
            raise ValueError(f"MNFModule: teacher features must be (B, {d}), got {tuple(teacher.shape)}")
        if student_tokens.ndim != 3 or student_tokens.shape[0] != teacher.shape[0] or student_tokens.shape[2] != d:
            raise ValueError(f"MNFModule: student tokens must be ({teacher.shape[0]}, N, {d}), got "
                             f"{tuple(student_tokens.shape)}")
        context = student_tokens.mean(dim=1)
        gate = torch.sigmoid(self.gate(torch.cat([teacher, context], dim=-1)))
        filtered = gate * teacher
        attended, weights = self.attention(filtered[:, None], student_tokens, student_tokens, need_weights=True)
        calibrated = self.projection(attended[:, 0])
        return MNFOutput(self.classifier(calibrated), calibrated, filtered, gate, weights)


def csc_temperature(student_pooled: torch.Tensor, filtered_teacher: torch.Tensor, threshold: float = 0.07,
                    adaptive: bool = True) -> torch.Tensor | float:
    r"""Per-pair CSC temperature :math:`\tau_{ij} = \mathrm{stopgrad}(\cos(v_i, \tilde a_j)) + \theta`
    (``train.py``: ``get_similarity(video_feature, selected_audio_feature).detach()`` + ``--threshold``).

    ``adaptive=False`` (``--with_adj`` off) gives the constant :math:`\theta`. :math:`\theta` = 0.07 on UCF51,
    0.2 on ActivityNet (released scripts). Returns a `(B, B)` tensor, or the float :math:`\theta`.
    """
    if not adaptive:
        return float(threshold)
    cos = F.normalize(student_pooled, dim=1) @ F.normalize(filtered_teacher, dim=1).T
    return cos.detach() + threshold


def csc_loss(student_pooled: torch.Tensor, calibrated: torch.Tensor, labels: torch.Tensor,
             temperature: torch.Tensor | float) -> torch.Tensor:
    r"""Contrastive Semantic Calibration (``loss/csc_loss.py``, ``CSC_Loss``).

    .. math:: S_{ij} = \hat v_i \cdot \hat z_j, \quad P_{ij} = \mathrm{softmax}_j(S_{ij} / \tau_{ij}), \quad
              L = \mathrm{mean}_i \Big[-\frac{1}{|P(i)|}\sum_{j: y_j = y_i} \log(P_{ij} + \epsilon)\Big]

    with :math:`\epsilon = 10^{-10}`. The positives include the anchor, so a one-label batch is well defined (every
    pair is positive).

    Args:
        student_pooled: `(B, d)` ``v``; calibrated: `(B, d)` ``z`` (MNF output); labels: `(B,)`.
        temperature: a float, or the `(B, B)` per-pair :func:`csc_temperature`.
    """
    if student_pooled.ndim != 2 or student_pooled.shape != calibrated.shape:
        raise ValueError(f"csc_loss: student_pooled and calibrated must be (B, d) of one shape, got "
                         f"{tuple(student_pooled.shape)} and {tuple(calibrated.shape)}")
    b = student_pooled.shape[0]
    if labels.shape != (b,):
        raise ValueError(f"csc_loss: labels must be ({b},), got {tuple(labels.shape)}")
    if b == 0:
        return (student_pooled.sum() + calibrated.sum()) * 0.0
    if isinstance(temperature, torch.Tensor) and temperature.ndim > 0 and temperature.shape != (b, b):
        raise ValueError(f"csc_loss: a tensor temperature must be ({b}, {b}), got {tuple(temperature.shape)}")
    sim = F.normalize(student_pooled, dim=1) @ F.normalize(calibrated, dim=1).T
    p = torch.softmax(sim / temperature, dim=-1)
    pos = (labels[:, None] == labels[None, :]).to(p.dtype)
    return ((-torch.log(p + MNF_EPSILON) * pos).sum(-1) / pos.sum(1)).mean()


def mnf_triplet_loss(student_pooled: torch.Tensor, teacher: torch.Tensor, filtered_teacher: torch.Tensor,
                     margin: float = 0.2) -> torch.Tensor:
    r"""``train.py`` ``get_triplet_loss(v, a, a~, margin)``: anchor ``v``, "negative" the raw teacher ``a``, "positive"
    the filtered teacher:

    .. math:: L = \mathrm{mean}_i \max(0,\ \cos(v_i, a_i) - \cos(v_i, \tilde a_i) + m), \quad m = 0.2
    """
    if not (student_pooled.shape == teacher.shape == filtered_teacher.shape) or teacher.ndim != 2:
        raise ValueError("mnf_triplet_loss: all three inputs must be (B, d) of one shape, got "
                         f"{tuple(student_pooled.shape)}, {tuple(teacher.shape)}, {tuple(filtered_teacher.shape)}")
    if teacher.shape[0] == 0:
        return (student_pooled.sum() + filtered_teacher.sum()) * 0.0
    v = F.normalize(student_pooled, dim=1)
    cos_an = (v * F.normalize(teacher, dim=1)).sum(1)
    cos_ap = (v * F.normalize(filtered_teacher, dim=1)).sum(1)
    return torch.clamp(cos_an - cos_ap + margin, min=0.0).mean()


def mnf_gate_sparsity_loss(weights: list[torch.Tensor], weight: float = 0.001, all_layers: bool = False):
    r"""Gate sparsity (``--use_norm``): ``0.001 * mean_rows(sum |W|)`` of the gate's Linear weights.

    The released loop (``for w in fc_weights: norm_loss = 0.001 * w.abs().sum(1).mean()``) overwrites instead of
    summing, so only the *last* gate layer ``W_2`` is penalised. That is the default (released code);
    ``all_layers=True`` sums the term over both layers, as the loop was evidently meant to.
    """
    if not weights:
        raise ValueError("mnf_gate_sparsity_loss: no weights given")
    if not all_layers:
        return weight * weights[-1].abs().sum(1).mean()
    return sum(weight * w.abs().sum(1).mean() for w in weights)


@contextlib.contextmanager
def frozen_batchnorm_statistics(module: nn.Module):
    """Run ``module`` a second time in training mode without updating its BatchNorm running statistics twice.

    (Batch statistics are still used for the output, so a second pass on the same values gives the same output.)
    """
    # the second pass updates throw-away copies; the originals are put back by assignment (not in place, since
    # the first pass's autograd graph holds them)
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None:
            saved.append((m, m.running_mean, m.running_var, m.num_batches_tracked))
            m.running_mean, m.running_var = m.running_mean.clone(), m.running_var.clone()
            m.num_batches_tracked = m.num_batches_tracked.clone()
    try:
        yield
    finally:
        for m, mean, var, count in saved:
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count


@dataclass
class MNFObjectiveOutput:
    """What :func:`mnf_objective` returns.

    Attributes:
        loss: single-optimizer loss ``L_v + L_a(student detached)``; same gradients as the released routing.
        student_loss: ``L_v = w_v CE(p_v, y) + w_csc L_CSC`` [v_losses].
        mnf_loss: ``L_a = w_n CE(p_n, y) + L_sparsity + L_triplet`` [a_losses].
        terms: each term, detached, for logging.
        mnf_output: the attached MNF pass (attention weights etc.).
        num_distilled: rows with a teacher feature.
    """

    loss: torch.Tensor
    student_loss: torch.Tensor
    mnf_loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    mnf_output: MNFOutput | None = None
    num_distilled: int = 0


def mnf_objective(
    student_tokens: torch.Tensor,
    student_pooled: torch.Tensor,
    student_logits: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    mnf: MNFModule,
    teacher_mask: torch.Tensor | None = None,
    threshold: float = 0.07,
    adaptive_temperature: bool = True,
    use_triplet: bool = True,
    margin: float = 0.2,
    use_sparsity: bool = True,
    sparsity_weight: float = 0.001,
    sparsity_all_layers: bool = False,
    cls_v_weight: float = 1.0,
    cls_n_weight: float = 1.0,
    csc_weight: float = 1.0,
) -> MNFObjectiveOutput:
    """``train.py`` ``train_av_epoch`` (UCF51 script flags ``--with_adj --use_triplet --use_norm`` are the defaults).

    * Student: ``L_v = CE(p_v, y) + L_CSC(v, z, tau(v, a~))``.
    * MNF: ``L_a = CE(p_n, y) + L_sparsity + L_triplet(v, a, a~)``.

    **Gradient routing.** Released: ``zero(MNF grads); L_a.backward(retain_graph); zero(student grads);
    L_v.backward(); step both`` -- the student gets only dL_v (including the CSC path through ``z`` into ``V``), the
    MNF gets dL_a + dL_CSC. Here ``L_a`` is computed from a second MNF pass on the *detached* student tokens / pooled
    feature (its BatchNorm running statistics are not updated twice), and ``loss = L_v + L_a`` gives one optimizer
    the same gradients (tested against a literal two-optimizer loop).

    Rows without a teacher feature (``teacher_mask`` False) are excluded from every MNF term and kept in
    ``CE(p_v, y)`` (the CCL loader's rule; the MNF release has no missing features).
    """
    b = student_pooled.shape[0]
    if student_tokens.ndim != 3 or student_tokens.shape[0] != b or teacher.shape != student_pooled.shape:
        raise ValueError(
            f"mnf_objective: student_tokens (B, N, d), student_pooled (B, d) and teacher (B, d) must agree; got "
            f"{tuple(student_tokens.shape)}, {tuple(student_pooled.shape)}, {tuple(teacher.shape)} (project a teacher "
            "of another width to the student width first)")
    ce_v = F.cross_entropy(student_logits, labels)
    rows = slice(None) if teacher_mask is None else teacher_mask.to(torch.bool)
    count = b if teacher_mask is None else int(teacher_mask.sum())
    V, v, a, y = student_tokens[rows], student_pooled[rows], teacher[rows], labels[rows]
    terms = {"ce": ce_v.detach()}
    if count == 1 and mnf.training:
        # BatchNorm cannot normalise one sample (PyTorch raises); e.g. the last, short batch of an epoch
        logger.warning("mnf_objective: only one sample of the batch has a teacher feature; the MNF terms are dropped "
                       "for this batch (the MNF's BatchNorm needs two), CE is kept.")
    if count == 0 or (count == 1 and mnf.training):
        zero = sum(p.sum() for p in mnf.parameters()) * 0.0
        student_loss = cls_v_weight * ce_v
        return MNFObjectiveOutput(student_loss + zero, student_loss, zero, {**terms, "student": student_loss.detach()},
                                  None, count)
    out = mnf(a, V)
    tau = csc_temperature(v, out.filtered_teacher, threshold, adaptive_temperature)
    l_csc = csc_loss(v, out.calibrated, y, tau)
    student_loss = cls_v_weight * ce_v + csc_weight * l_csc
    # the MNF's own loss: the student enters only through detached tensors (it never gets dL_a)
    with frozen_batchnorm_statistics(mnf):
        out_d = mnf(a, V.detach())
    ce_n = F.cross_entropy(out_d.logits, y)
    mnf_loss = cls_n_weight * ce_n
    terms.update(csc=l_csc.detach(), mnf_ce=ce_n.detach())
    if use_sparsity:
        l_sp = mnf_gate_sparsity_loss(mnf.gate_weights(), sparsity_weight, sparsity_all_layers)
        mnf_loss = mnf_loss + l_sp
        terms["sparsity"] = l_sp.detach()
    if use_triplet:
        l_tri = mnf_triplet_loss(v.detach(), a, out_d.filtered_teacher, margin)
        mnf_loss = mnf_loss + l_tri
        terms["triplet"] = l_tri.detach()
    terms.update(student=student_loss.detach(), mnf=mnf_loss.detach())
    return MNFObjectiveOutput(student_loss + mnf_loss, student_loss, mnf_loss, terms, out, count)
