"""Configurations of the related supervised cross-modal distillation methods, CCL and MNF + CSC, and their student.

* `XKDR2Plus1DConfig`: the small R(2+1)D student both papers train from scratch.
* `XKDDistillationConfig`: one config for `XKDForCCLDistillation` and `XKDForMNFDistillation` (method, teachers,
  student, every loss hyper-parameter with the released default).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

__all__ = ["XKDR2Plus1DConfig", "XKDDistillationConfig", "DISTILLATION_METHODS", "DISTILLATION_TEACHERS",
           "KINETICS_MEAN", "KINETICS_STD"]

DISTILLATION_METHODS = ("ccl", "mnf-csc", "baseline")
DISTILLATION_TEACHERS = ("audio", "image")
STUDENT_TYPES = ("xkd", "r2plus1d")
# 3D-ResNets-PyTorch get_mean_std(value_scale=1, dataset="kinetics"), the normalisation CCL's loader uses
KINETICS_MEAN = (0.4345, 0.4051, 0.3775)
KINETICS_STD = (0.2768, 0.2713, 0.2737)


@strict
class XKDR2Plus1DConfig(PreTrainedConfig):
    r"""The R(2+1)D student of CCL (``models/r21d.py``) and MNF (``models/r21d_with_featuremap.py``).

    ``--model_depth 18`` maps to ``layer_sizes=(1, 1, 1, 1)``: one residual block per stage. Every convolution is
    factorised into a spatial ``1 x k x k`` and a temporal ``k x 1 x 1`` convolution with
    ``M = floor(k_t k_h k_w C_in C_out / (k_h k_w C_in + k_t C_out))`` intermediate channels (R(2+1)D paper, sec. 3.5),
    BatchNorm + ReLU between them, no conv biases.

    Args:
        layer_sizes (`list[int]`, defaults to `[1, 1, 1, 1]`): residual blocks per stage.
        hidden_sizes (`list[int]`, defaults to `[64, 128, 256, 512]`): channels per stage.
        num_channels (`int`, defaults to 3), num_frames (`int`, defaults to 16), image_size (`int`, defaults to 112):
            the input clip (the video pipeline samples `num_frames` frames).
        batch_norm_eps (`float`, defaults to 1e-5), batch_norm_momentum (`float`, defaults to 0.1): PyTorch defaults.
        classifier_dropout (`float`, defaults to 0.0): none in the release.
    """

    model_type = "xkd_r2plus1d"

    layer_sizes: list[int] | tuple[int, ...] = (1, 1, 1, 1)
    hidden_sizes: list[int] | tuple[int, ...] = (64, 128, 256, 512)
    num_channels: int = 3
    num_frames: int = 16
    image_size: int = 112
    batch_norm_eps: float = 1e-5
    batch_norm_momentum: float = 0.1
    classifier_dropout: float = 0.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.layer_sizes = [int(x) for x in self.layer_sizes]
        self.hidden_sizes = [int(x) for x in self.hidden_sizes]
        if len(self.layer_sizes) != len(self.hidden_sizes) or not self.layer_sizes:
            raise ValueError(f"XKDR2Plus1DConfig: layer_sizes {self.layer_sizes} and hidden_sizes {self.hidden_sizes} "
                             "must have the same (non-zero) length")
        if any(x < 1 for x in self.layer_sizes + self.hidden_sizes):
            raise ValueError("XKDR2Plus1DConfig: layer_sizes and hidden_sizes must be positive")

    @property
    def hidden_size(self) -> int:
        """Width of the pooled feature and of the tokens (512 released)."""
        return self.hidden_sizes[-1]


@strict
class XKDDistillationConfig(PreTrainedConfig):
    r"""Configuration of `XKDForCCLDistillation` / `XKDForMNFDistillation`.

    Args:
        method (`str`, defaults to `"ccl"`): `"ccl"`, `"mnf-csc"` or `"baseline"` (student + classifier, CE only).
        teachers (`list[str]`, defaults to `["audio"]`): CCL: `["audio"]` (CCL-A), `["image"]` (CCL-I) or
            `["audio", "image"]` (CCL-AI); MNF: `["audio"]` (one teacher, as released).
        student_type (`str`, defaults to `"r2plus1d"`): `"r2plus1d"` (`XKDR2Plus1DConfig`) or `"xkd"`
            (`XKDVideoConfig`).
        student_config (`dict`, *optional*): the student's config (defaults of its class when omitted).
        audio_teacher_size (`int`, defaults to 512), image_teacher_size (`int`, defaults to 512): widths of the
            teacher features. When one differs from the student width a learned `Linear(teacher, student)`
            projection is added (`teacher_projections`, an auxiliary module; not in the released code, whose
            teachers are 512-d like the student).
        ccl_audio_temperature (`float`, defaults to 0.5), ccl_image_temperature (`float`, defaults to 0.1): NCE
            temperatures (released `main.py`).
        ccl_loss_weight (`float`, defaults to 0.5): lambda of CCL-AI (`run_ccl_ai.sh --loss_weight=0.5`); single
            teacher runs are not scaled (released).
        ccl_kl_weight (`float`, defaults to 0.5): `JSDLoss(weight=0.5)`.
        ccl_normalize_composition_inputs (`bool`, defaults to `True`): `generate_prediction(normalization=True)`.
        mnf_threshold (`float`, defaults to 0.07): theta of the CSC temperature (UCF51; 0.2 on ActivityNet).
        mnf_adaptive_temperature (`bool`, defaults to `True`): `--with_adj` (per-pair temperature).
        mnf_use_triplet (`bool`, defaults to `True`), mnf_margin (`float`, defaults to 0.2).
        mnf_use_sparsity (`bool`, defaults to `True`), mnf_sparsity_weight (`float`, defaults to 0.001).
        mnf_sparsity_all_layers (`bool`, defaults to `False`): `False` reproduces the released loop bug (only the
            last gate layer is penalised); `True` penalises both.
        mnf_num_heads (`int`, defaults to 2).
        mnf_cls_v_weight (`float`, defaults to 1.0), mnf_cls_n_weight (`float`, defaults to 1.0),
        mnf_csc_weight (`float`, defaults to 1.0): `--cls_v_weight`, `--cls_n_weight`, `--adj_loss`.
        aux_lr_multiplier (`float`, *optional*): learning-rate factor of the auxiliary modules (composition heads,
            MNF, projections). `None`: 1.0 for CCL (its head optimizers use the student's lr), 0.2 for MNF.
        on_single_label (`str`, defaults to `"drop"`): a batch of one class has no negatives for CCL's NCE:
            `"drop"` the term with a warning, or `"error"`.
    """

    model_type = "xkd_distillation"

    method: str = "ccl"
    teachers: list[str] | tuple[str, ...] = ("audio",)
    student_type: str = "r2plus1d"
    student_config: dict | None = None
    audio_teacher_size: int = 512
    image_teacher_size: int = 512
    ccl_audio_temperature: float = 0.5
    ccl_image_temperature: float = 0.1
    ccl_loss_weight: float = 0.5
    ccl_kl_weight: float = 0.5
    ccl_normalize_composition_inputs: bool = True
    mnf_threshold: float = 0.07
    mnf_adaptive_temperature: bool = True
    mnf_use_triplet: bool = True
    mnf_margin: float = 0.2
    mnf_use_sparsity: bool = True
    mnf_sparsity_weight: float = 0.001
    mnf_sparsity_all_layers: bool = False
    mnf_num_heads: int = 2
    mnf_cls_v_weight: float = 1.0
    mnf_cls_n_weight: float = 1.0
    mnf_csc_weight: float = 1.0
    aux_lr_multiplier: float | None = None
    on_single_label: str = "drop"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.teachers = [str(t) for t in self.teachers]
        if self.method not in DISTILLATION_METHODS:
            raise ValueError(f"XKDDistillationConfig.method must be one of {DISTILLATION_METHODS}, got {self.method!r}")
        bad = [t for t in self.teachers if t not in DISTILLATION_TEACHERS]
        if bad or len(set(self.teachers)) != len(self.teachers):
            raise ValueError(f"XKDDistillationConfig.teachers must be distinct names from {DISTILLATION_TEACHERS}, "
                             f"got {self.teachers}")
        if self.method == "baseline":
            self.teachers = []
        elif not self.teachers:
            raise ValueError(f"XKDDistillationConfig: method {self.method!r} needs at least one teacher")
        if self.method == "mnf-csc" and len(self.teachers) != 1:
            raise ValueError("XKDDistillationConfig: MNF + CSC distils one teacher (released: audio), got "
                             f"{self.teachers}")
        if self.student_type not in STUDENT_TYPES:
            raise ValueError(f"XKDDistillationConfig.student_type must be one of {STUDENT_TYPES}, got "
                             f"{self.student_type!r}")
        if self.on_single_label not in ("drop", "error"):
            raise ValueError(f"XKDDistillationConfig.on_single_label must be 'drop' or 'error', got "
                             f"{self.on_single_label!r}")
        if self.student_config is not None and not isinstance(self.student_config, dict):
            self.student_config = self.student_config.to_dict()

    @property
    def resolved_aux_lr_multiplier(self) -> float:
        """``aux_lr_multiplier`` or the method's released value (CCL 1.0, MNF 0.2)."""
        if self.aux_lr_multiplier is not None:
            return float(self.aux_lr_multiplier)
        return 0.2 if self.method == "mnf-csc" else 1.0

    def teacher_size(self, name: str) -> int:
        return {"audio": self.audio_teacher_size, "image": self.image_teacher_size}[name]

    def build_student_config(self):
        """The student's `XKDR2Plus1DConfig` / `XKDVideoConfig` from ``student_config``."""
        from .configuration_xkd import XKDVideoConfig

        cls = XKDR2Plus1DConfig if self.student_type == "r2plus1d" else XKDVideoConfig
        data = dict(self.student_config or {})
        for key in ("model_type", "transformers_version", "architectures", "id2label", "label2id", "num_labels"):
            data.pop(key, None)
        return cls(**data)
