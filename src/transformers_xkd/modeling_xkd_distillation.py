"""Models of the related supervised cross-modal distillation methods (CCL, MNF + CSC) and their R(2+1)D student.

* `XKDR2Plus1DModel` / `XKDR2Plus1DForVideoClassification`: the 10-layer R(2+1)D both papers train from scratch
  (one residual block per stage, 64-128-256-512 channels), as a transformers model the video pipeline loads.
* `XKDForCCLDistillation`: student + classifier + one `CCLCompositionHead` per teacher (CCL-A / CCL-I / CCL-AI).
* `XKDForMNFDistillation`: student + classifier + `MNFModule`.

Both distillation models take ``forward(pixel_values, labels, teacher_features={"audio": (B, D), ...},
teacher_mask={"audio": (B,) bool})`` and return the single-optimizer loss (gradients as the released two-optimizer
loops give them), every loss term and the logits. Teachers are frozen and live outside the model (pre-extracted
features, or `downstream.distill.FrozenTeachers` run by the Trainer), so a saved folder holds only what trains.
After training, :meth:`export_classifier` writes the student + classifier as `XKDForVideoClassification` or
`XKDR2Plus1DForVideoClassification`, which `pipeline("video-classification")` loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_xkd import XKDVideoConfig
from .configuration_xkd_distillation import XKDDistillationConfig, XKDR2Plus1DConfig
from .distillation_ccl import CCLCompositionHead, ccl_objective
from .distillation_mnf import MNFModule, mnf_objective

__all__ = [
    "XKDR2Plus1DPreTrainedModel",
    "XKDR2Plus1DModel",
    "XKDR2Plus1DForVideoClassification",
    "XKDDistillationOutput",
    "XKDDistillationPreTrainedModel",
    "XKDForCCLDistillation",
    "XKDForMNFDistillation",
    "r2plus1d_intermediate_channels",
]


# ----------------------------------------------------------------------------------------------------------------
# R(2+1)D student
# ----------------------------------------------------------------------------------------------------------------
def r2plus1d_intermediate_channels(in_channels: int, out_channels: int, kernel: tuple[int, int, int]) -> int:
    """R(2+1)D paper sec. 3.5: ``M = floor(t d^2 N_in N_out / (d^2 N_in + t N_out))`` (same parameter count as 3-D)."""
    kt, kh, kw = kernel
    return (kt * kh * kw * in_channels * out_channels) // (kh * kw * in_channels + kt * out_channels)


def _triple(x) -> tuple[int, int, int]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x, x)


class XKDR2Plus1DConv(nn.Module):
    """One factorised convolution: spatial ``1 x k x k`` -> BN -> ReLU -> temporal ``k x 1 x 1`` (no biases)."""

    def __init__(self, config: XKDR2Plus1DConfig, in_channels: int, out_channels: int, kernel, stride=1, padding=0):
        super().__init__()
        (kt, kh, kw), (st, sh, sw), (pt, ph, pw) = _triple(kernel), _triple(stride), _triple(padding)
        mid = r2plus1d_intermediate_channels(in_channels, out_channels, (kt, kh, kw))
        self.spatial = nn.Conv3d(in_channels, mid, (1, kh, kw), stride=(1, sh, sw), padding=(0, ph, pw), bias=False)
        self.norm = nn.BatchNorm3d(mid, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)
        self.temporal = nn.Conv3d(mid, out_channels, (kt, 1, 1), stride=(st, 1, 1), padding=(pt, 0, 0), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal(F.relu(self.norm(self.spatial(x))))


class XKDR2Plus1DBlock(nn.Module):
    """Residual block: conv -> BN -> ReLU -> conv -> BN, plus the (projected when downsampling) input, ReLU."""

    def __init__(self, config: XKDR2Plus1DConfig, in_channels: int, out_channels: int, downsample: bool):
        super().__init__()
        bn = lambda c: nn.BatchNorm3d(c, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)  # noqa: E731
        stride = 2 if downsample else 1
        self.conv1 = XKDR2Plus1DConv(config, in_channels, out_channels, 3, stride=stride, padding=1)
        self.norm1 = bn(out_channels)
        self.conv2 = XKDR2Plus1DConv(config, out_channels, out_channels, 3, padding=1)
        self.norm2 = bn(out_channels)
        self.shortcut = None
        if downsample:
            # released: a (2+1)D 1x1x1 conv with stride 2 in t, h and w, then BN
            self.shortcut = nn.Sequential(XKDR2Plus1DConv(config, in_channels, out_channels, 1, stride=2),
                                          bn(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x)))))
        return F.relu((x if self.shortcut is None else self.shortcut(x)) + residual)


class XKDR2Plus1DPreTrainedModel(PreTrainedModel):
    config: XKDR2Plus1DConfig
    config_class = XKDR2Plus1DConfig
    base_model_prefix = "r2plus1d"
    main_input_name = "pixel_values"
    input_modalities = ("video",)

    @torch.no_grad()
    def _init_weights(self, module):
        # PyTorch's default initialisation, which the released R(2+1)D keeps
        _pytorch_default_init(module)


def _pytorch_default_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv3d, nn.Conv2d)):
        init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        if module.bias is not None:
            if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
                init.zeros_(module.bias)  # nn.MultiheadAttention's out_proj
            else:
                fan_in = module.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                init.uniform_(module.bias, -bound, bound)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)
        if module.running_mean is not None:
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
    elif isinstance(module, nn.MultiheadAttention):
        init.xavier_uniform_(module.in_proj_weight)
        init.zeros_(module.in_proj_bias)


class XKDR2Plus1DModel(XKDR2Plus1DPreTrainedModel):
    """The R(2+1)D of CCL / MNF (``models/r21d.py``; depth "18" = one residual block per stage).

    Stem: factorised ``3 x 7 x 7`` conv, stride ``1 x 2 x 2`` (to 64 channels), BN, ReLU, no max-pool; four stages of
    64, 128, 256, 512 channels, the last three halving t, h and w in their first block; global average pool.
    A 16 x 112 x 112 clip gives a ``2 x 7 x 7`` map: 98 tokens of 512 (MNF's ``V``) and the 512-d pooled feature.

    Parameters: 14,365,303 for the default config (no classifier; the classifier adds ``513 C``), counted by
    ``tests/test_related_methods.py``.
    """

    def __init__(self, config: XKDR2Plus1DConfig):
        super().__init__(config)
        first = config.hidden_sizes[0]
        self.stem = XKDR2Plus1DConv(config, config.num_channels, first, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3))
        self.stem_norm = nn.BatchNorm3d(first, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)
        stages = []
        in_channels = first
        for i, (blocks, width) in enumerate(zip(config.layer_sizes, config.hidden_sizes)):
            layer = [XKDR2Plus1DBlock(config, in_channels, width, downsample=i > 0)]
            layer += [XKDR2Plus1DBlock(config, width, width, downsample=False) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layer))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        r"""
        Args:
            pixel_values (`(batch, frames, 3, height, width)`): normalised frames (the package's video layout).

        Returns: `BaseModelOutputWithPooling` with `last_hidden_state` `(batch, t * h * w, 512)` (the last stage's
        map as tokens, time-major) and `pooler_output` `(batch, 512)` (their mean = the global average pool).
        """
        if pixel_values.ndim != 5 or pixel_values.shape[2] != self.config.num_channels:
            raise ValueError(f"XKDR2Plus1DModel: pixel_values must be (batch, frames, {self.config.num_channels}, "
                             f"height, width), got {tuple(pixel_values.shape)}")
        x = pixel_values.permute(0, 2, 1, 3, 4)  # (B, C, T, H, W)
        x = F.relu(self.stem_norm(self.stem(x)))
        for stage in self.stages:
            x = stage(x)
        tokens = x.flatten(2).transpose(1, 2)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=tokens.mean(dim=1))


class XKDR2Plus1DForVideoClassification(XKDR2Plus1DPreTrainedModel):
    """R(2+1)D + linear classifier on the pooled feature (the released ``with_classifier=True``)."""

    def __init__(self, config: XKDR2Plus1DConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.r2plus1d = XKDR2Plus1DModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        """Returns `ImageClassifierOutput` with `logits` `(batch, num_labels)` (and the CE loss with labels)."""
        logits = self.classifier(self.dropout(self.r2plus1d(pixel_values).pooler_output))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


# ----------------------------------------------------------------------------------------------------------------
# Distillation models
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class XKDDistillationOutput(ModelOutput):
    """Output of `XKDForCCLDistillation` / `XKDForMNFDistillation`.

    Args:
        loss: the single-optimizer loss (student loss + auxiliary losses on detached student tensors), or `None`
            without labels.
        logits: `(batch, num_labels)` student logits.
        pooler_output: `(batch, d)` student pooled feature (the retrieval feature).
        student_loss: the student's objective ``L_v``.
        auxiliary_loss: the auxiliary modules' own objective (``sum_k L_m,k`` or ``L_a``).
        loss_terms: every term by name (detached scalars).
        num_distilled: `{teacher: rows with a teacher feature}`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    student_loss: torch.FloatTensor | None = None
    auxiliary_loss: torch.FloatTensor | None = None
    loss_terms: dict | None = None
    num_distilled: dict | None = None


class XKDDistillationPreTrainedModel(PreTrainedModel):
    """Student + classifier + auxiliary modules; subclasses add the method's modules and objective."""

    config: XKDDistillationConfig
    config_class = XKDDistillationConfig
    base_model_prefix = "distillation"
    main_input_name = "pixel_values"
    input_modalities = ("video",)
    #: names of the top-level modules trained at ``lr * aux_lr_multiplier``
    auxiliary_module_names: tuple[str, ...] = ("teacher_projections",)

    def __init__(self, config: XKDDistillationConfig):
        super().__init__(config)
        student_config = config.build_student_config()
        if config.student_type == "xkd":
            from .modeling_xkd import XKDVideoModel

            self.student = XKDVideoModel(student_config)
        else:
            self.student = XKDR2Plus1DModel(student_config)
        self.hidden_size = int(student_config.hidden_size)
        if config.num_labels < 2:
            raise ValueError(f"{type(self).__name__}: config.num_labels must be >= 2 (a labelled dataset), got "
                             f"{config.num_labels}")
        self.classifier = nn.Linear(self.hidden_size, config.num_labels)
        # a teacher of another width: a learned projection to the student width (not in the released code)
        self.teacher_projections = nn.ModuleDict({
            name: nn.Linear(config.teacher_size(name), self.hidden_size)
            for name in config.teachers if config.teacher_size(name) != self.hidden_size
        })

    @torch.no_grad()
    def _init_weights(self, module):
        # auxiliary modules and the classifier: PyTorch defaults (released); the student inits itself
        _pytorch_default_init(module)

    # -- pieces --------------------------------------------------------------------------------------------------
    def student_outputs(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(tokens (B, N, d), pooled (B, d))` of the student (XKD: patch tokens without CLS, mean-pooled)."""
        out = self.student(pixel_values)
        if self.config.student_type == "xkd":
            return out.last_hidden_state[:, 1:], out.pooler_output
        return out.last_hidden_state, out.pooler_output

    def project_teacher(self, name: str, features: torch.Tensor) -> torch.Tensor:
        expected = self.config.teacher_size(name)
        if features.ndim != 2 or features.shape[1] != expected:
            raise ValueError(f"teacher_features[{name!r}] must be (batch, {expected}) (config.{name}_teacher_size), "
                             f"got {tuple(features.shape)}")
        features = features.detach().to(self.classifier.weight.dtype)  # frozen teacher: stop-gradient
        return self.teacher_projections[name](features) if name in self.teacher_projections else features

    def _teacher_inputs(self, teacher_features, teacher_mask, batch: int):
        teacher_features = dict(teacher_features or {})
        teacher_mask = dict(teacher_mask or {})
        missing = [t for t in self.config.teachers if t not in teacher_features]
        if missing:
            raise ValueError(f"{type(self).__name__}: teacher_features lacks {missing} (config.teachers = "
                             f"{self.config.teachers}); pass {{name: (batch, dim) tensor}}")
        unknown = [t for t in teacher_features if t not in self.config.teachers]
        if unknown:
            raise ValueError(f"{type(self).__name__}: teacher_features has {unknown}, which config.teachers "
                             f"({self.config.teachers}) does not train")
        feats, masks = {}, {}
        for name in self.config.teachers:
            t = teacher_features[name]
            if t.shape[0] != batch:
                raise ValueError(f"teacher_features[{name!r}] has {t.shape[0]} rows for a batch of {batch}")
            feats[name] = self.project_teacher(name, t)
            if teacher_mask.get(name) is not None:
                masks[name] = teacher_mask[name].to(torch.bool)
        return feats, masks

    def auxiliary_parameters(self):
        for name in self.auxiliary_module_names:
            module = getattr(self, name, None)
            if module is not None:
                yield from (p for p in module.parameters() if p.requires_grad)

    def parameter_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict]:
        """Optimizer groups: student + classifier at ``lr``, auxiliary modules at ``lr * aux_lr_multiplier``.

        (The released code gives each its own optimizer with the same settings but this lr; one optimizer with two
        groups updates identically.) Each group carries ``"name"`` and ``"lr_scale"``.
        """
        aux = list(self.auxiliary_parameters())
        aux_ids = {id(p) for p in aux}
        main = [p for p in self.parameters() if p.requires_grad and id(p) not in aux_ids]
        mult = self.config.resolved_aux_lr_multiplier
        groups = [{"params": main, "lr": lr, "lr_scale": 1.0, "weight_decay": weight_decay, "name": "student"}]
        if aux:
            groups.append({"params": aux, "lr": lr * mult, "lr_scale": mult, "weight_decay": weight_decay,
                           "name": "auxiliary"})
        return groups

    def export_classifier(self, folder=None, video_processor=None):
        """The student + classifier as a standalone classification model (saved to ``folder`` when given).

        XKD students become `XKDForVideoClassification`, R(2+1)D students `XKDR2Plus1DForVideoClassification`;
        ``video_processor`` is saved next to it, so that `pipeline("video-classification", model=folder)` works.
        """
        labels = dict(id2label=dict(self.config.id2label), label2id=dict(self.config.label2id))
        if self.config.student_type == "xkd":
            from .modeling_xkd import XKDForVideoClassification

            cfg = XKDVideoConfig(**{**self.student.config.to_dict(), **labels, "classifier_dropout": 0.0})
            model = XKDForVideoClassification(cfg)
            model.video_model.load_state_dict(self.student.state_dict(), strict=True)
        else:
            cfg = XKDR2Plus1DConfig(**{**self.student.config.to_dict(), **labels})
            model = XKDR2Plus1DForVideoClassification(cfg)
            model.r2plus1d.load_state_dict(self.student.state_dict(), strict=True)
        model.classifier.load_state_dict(self.classifier.state_dict(), strict=True)
        model.eval()
        if folder is not None:
            model.save_pretrained(str(folder))
            if video_processor is not None:
                video_processor.save_pretrained(str(folder))
        return model


class XKDForCCLDistillation(XKDDistillationPreTrainedModel):
    """CCL (CVPR 2021): student + classifier + one `CCLCompositionHead` per teacher; `method="baseline"` is the
    student with CE only (``scripts/run_baseline.sh``).

    The loss is :func:`~transformers_xkd.distillation_ccl.ccl_objective` (CCL-A, CCL-I or CCL-AI by
    ``config.teachers``).
    """

    auxiliary_module_names = ("teacher_projections", "composition_heads")

    def __init__(self, config: XKDDistillationConfig):
        if config.method not in ("ccl", "baseline"):
            raise ValueError(f"XKDForCCLDistillation needs method 'ccl' or 'baseline', got {config.method!r}")
        super().__init__(config)
        self.composition_heads = nn.ModuleDict({
            name: CCLCompositionHead(self.hidden_size, config.num_labels, config.ccl_normalize_composition_inputs)
            for name in config.teachers
        })
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                teacher_features: dict | None = None, teacher_mask: dict | None = None, **kwargs):
        r"""
        Args:
            pixel_values (`(batch, frames, 3, height, width)`): the student's (augmented) clips.
            labels (`(batch,)`): class ids; without them only logits are computed.
            teacher_features (`dict[str, (batch, dim)]`): one frozen feature per teacher of ``config.teachers``.
            teacher_mask (`dict[str, (batch,) bool]`, *optional*): False where a teacher feature is missing.
        """
        tokens, pooled = self.student_outputs(pixel_values)
        logits = self.classifier(pooled)
        if labels is None:
            return XKDDistillationOutput(logits=logits, pooler_output=pooled)
        labels = labels.long()
        if self.config.method == "baseline" or not self.config.teachers:
            ce = F.cross_entropy(logits, labels)
            return XKDDistillationOutput(loss=ce, logits=logits, pooler_output=pooled, student_loss=ce,
                                         loss_terms={"ce": ce.detach()}, num_distilled={})
        feats, masks = self._teacher_inputs(teacher_features, teacher_mask, pooled.shape[0])
        temps = {"audio": self.config.ccl_audio_temperature, "image": self.config.ccl_image_temperature}
        out = ccl_objective(pooled, logits, labels, feats, self.composition_heads, temps, masks,
                            self.config.ccl_loss_weight, self.config.ccl_kl_weight, self.config.on_single_label)
        aux = sum(out.composition_losses.values())
        return XKDDistillationOutput(loss=out.loss, logits=logits, pooler_output=pooled,
                                     student_loss=out.student_loss, auxiliary_loss=aux, loss_terms=out.terms,
                                     num_distilled=out.num_distilled)


class XKDForMNFDistillation(XKDDistillationPreTrainedModel):
    """MNF + CSC: student + classifier + `MNFModule` (trained at 0.2 x the student's lr by default).

    The loss is :func:`~transformers_xkd.distillation_mnf.mnf_objective`.
    """

    auxiliary_module_names = ("teacher_projections", "mnf")

    def __init__(self, config: XKDDistillationConfig):
        if config.method != "mnf-csc":
            raise ValueError(f"XKDForMNFDistillation needs method 'mnf-csc', got {config.method!r}")
        super().__init__(config)
        self.mnf = MNFModule(self.hidden_size, config.num_labels, config.mnf_num_heads)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                teacher_features: dict | None = None, teacher_mask: dict | None = None, **kwargs):
        """Arguments as `XKDForCCLDistillation.forward` (one teacher, ``config.teachers[0]``)."""
        tokens, pooled = self.student_outputs(pixel_values)
        logits = self.classifier(pooled)
        if labels is None:
            return XKDDistillationOutput(logits=logits, pooler_output=pooled)
        labels = labels.long()
        feats, masks = self._teacher_inputs(teacher_features, teacher_mask, pooled.shape[0])
        name = self.config.teachers[0]
        c = self.config
        out = mnf_objective(tokens, pooled, logits, feats[name], labels, self.mnf, masks.get(name), c.mnf_threshold,
                            c.mnf_adaptive_temperature, c.mnf_use_triplet, c.mnf_margin, c.mnf_use_sparsity,
                            c.mnf_sparsity_weight, c.mnf_sparsity_all_layers, c.mnf_cls_v_weight, c.mnf_cls_n_weight,
                            c.mnf_csc_weight)
        return XKDDistillationOutput(loss=out.loss, logits=logits, pooler_output=pooled,
                                     student_loss=out.student_loss, auxiliary_loss=out.mnf_loss,
                                     loss_terms=out.terms, num_distilled={name: out.num_distilled})


def _register_distillation() -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    from .video_processing_xkd import XKDVideoProcessor

    AutoConfig.register("xkd_r2plus1d", XKDR2Plus1DConfig, exist_ok=True)
    AutoConfig.register("xkd_distillation", XKDDistillationConfig, exist_ok=True)
    AutoModel.register(XKDR2Plus1DConfig, XKDR2Plus1DModel, exist_ok=True)
    AutoModelForVideoClassification.register(XKDR2Plus1DConfig, XKDR2Plus1DForVideoClassification, exist_ok=True)
    AutoVideoProcessor.register(
        XKDR2Plus1DConfig, video_processor_classes={"torchvision": XKDVideoProcessor, "pil": XKDVideoProcessor},
        exist_ok=True,
    )


_register_distillation()
