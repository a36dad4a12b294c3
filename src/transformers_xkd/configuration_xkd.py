"""Configurations of the XKD models.

Three configs, as CLAP has them: one per modality tower (`XKDVideoConfig`, `XKDAudioConfig`) and a composite
`XKDConfig` that holds both plus every pretraining setting. The defaults are the released ViT-B configuration
(`codes/train/configs/pretext/kinetics400/xkd.yaml` of the original repository). Where the paper and the released
code disagree, the config offers both, defaults to the released code, and the field's docstring says so.
"""

from __future__ import annotations

import difflib
from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

__all__ = ["XKDVideoConfig", "XKDAudioConfig", "XKDConfig", "XKD_VARIANTS", "XKD_OBJECTIVES"]

XKD_VARIANTS = ("xkd", "xkd-mas", "xkd-mats")
_TEACHER_VIEWS = ("local", "global")
_REFINE_MODES = ("mean", "softmax", "none")
# The paper's Table 1 rows: the audio-visual MAE baseline, + cross-modal KD, + domain alignment (full XKD).
XKD_OBJECTIVES = ("xkd", "mae+kd", "mae")


def _refuse_misspelled_keywords(config, kwargs: dict) -> None:
    """A keyword that is not a field but is close to one of this config's fields (`hiden_size`) is a typo that
    transformers would store as an extra attribute and ignore; raise, naming the field it resembles. Keywords that
    resemble no field pass through as transformers configs allow (hub metadata, task settings)."""
    if kwargs.get("model_type", config.model_type) != config.model_type:
        return  # another model's config.json (transformers warns); its fields are not typos of ours
    own_fields = [name for cls in type(config).__mro__ for name in getattr(cls, "__annotations__", {})
                  if cls.__module__ == __name__ and not name.startswith("_")]
    for key in kwargs:
        if key in own_fields or hasattr(type(config), key):
            continue
        close = difflib.get_close_matches(key, own_fields, n=1, cutoff=0.8)
        if close:
            raise ValueError(
                f"{type(config).__name__} got the keyword {key!r}, which is not one of its fields; did you mean "
                f"{close[0]!r}?"
            )


def _check_positive(config, *names):
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive integer, got {value!r}.")


def _check_heads(config, hidden_name, heads_name):
    hidden, heads = getattr(config, hidden_name), getattr(config, heads_name)
    if hidden % heads != 0:
        raise ValueError(
            f"{type(config).__name__}.{hidden_name}={hidden} is not divisible by {heads_name}={heads}: "
            "every attention head needs the same width."
        )


@strict
class _XKDTowerConfig(PreTrainedConfig):
    r"""The fields both tower configs share: the ViT encoder (defaults = the released ViT-B).

    Args:
        hidden_size (`int`, defaults to 768): width of the encoder.
        num_hidden_layers (`int`, defaults to 12): transformer blocks.
        num_attention_heads (`int`, defaults to 12): attention heads per block.
        intermediate_size (`int`, defaults to 3072): MLP width (mlp ratio 4).
        hidden_act (`str`, defaults to `"gelu"`): exact (erf) GELU as released.
        layer_norm_eps (`float`, defaults to 1e-5): PyTorch's default, used by the released code everywhere
            (not timm's 1e-6 nor transformers' 1e-12).
        qkv_bias (`bool`, defaults to `False`): the released blocks have no qkv bias.
        hidden_dropout_prob (`float`, defaults to 0.0): dropout after attention projection and MLP.
        attention_probs_dropout_prob (`float`, defaults to 0.0): dropout on attention probabilities.
        initializer_range (`float`, defaults to 0.02): std of the CLS/position-embedding initialisation.
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    qkv_bias: bool = False
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _check_positive(self, "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        _check_heads(self, "hidden_size", "num_attention_heads")


@strict
class XKDVideoConfig(_XKDTowerConfig):
    r"""Configuration of the XKD video encoder (`XKDVideoModel`) and its classification head.

    A ViT over 3-D "tubelets": a clip of `num_frames` x `image_size` x `image_size` is cut into
    `tubelet_size` x `patch_size` x `patch_size` patches (392 tokens at the defaults), each embedded linearly, with
    a learned CLS token and learned position embeddings; pre-norm blocks without qkv bias.

    Args:
        image_size (`int`, defaults to 112): height and width of the pretraining clip. Other sizes work by
            interpolating the position embeddings (224 is used for fine-tuning).
        num_frames (`int`, defaults to 32): frames per clip (4 s at 8 fps). The video pipeline samples this many.
        num_channels (`int`, defaults to 3): RGB.
        tubelet_size (`int`, defaults to 4): frames per patch.
        patch_size (`int`, defaults to 16): pixels per patch side.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act, layer_norm_eps,
        qkv_bias, hidden_dropout_prob, attention_probs_dropout_prob, initializer_range: the encoder, shared with
            `XKDAudioConfig` (see `_XKDTowerConfig`; defaults = the released ViT-B).
        classifier_dropout (`float`, defaults to 0.5): dropout before the classification layer of
            `XKDForVideoClassification` (the released fine-tuning `Classifier`).
    """

    model_type = "xkd_video"
    base_config_key = "video_config"

    image_size: int = 112
    num_frames: int = 32
    num_channels: int = 3
    tubelet_size: int = 4
    patch_size: int = 16
    classifier_dropout: float = 0.5

    def __post_init__(self, **kwargs):
        _refuse_misspelled_keywords(self, kwargs)
        super().__post_init__(**kwargs)
        _check_positive(self, "image_size", "num_frames", "num_channels", "tubelet_size", "patch_size")
        if self.num_frames % self.tubelet_size != 0:
            raise ValueError(
                f"XKDVideoConfig.num_frames={self.num_frames} is not divisible by tubelet_size={self.tubelet_size}."
            )
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"XKDVideoConfig.image_size={self.image_size} is not divisible by patch_size={self.patch_size}."
            )

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """(time, height, width) patch grid at the configured size: (8, 7, 7) by default."""
        side = self.image_size // self.patch_size
        return (self.num_frames // self.tubelet_size, side, side)

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid_size
        return t * h * w

    @property
    def patch_dim(self) -> int:
        """Values in one patch: tubelet_size * patch_size**2 * num_channels (3072 by default)."""
        return self.tubelet_size * self.patch_size * self.patch_size * self.num_channels


@strict
class XKDAudioConfig(_XKDTowerConfig):
    r"""Configuration of the XKD audio encoder (`XKDAudioModel`) and its classification head.

    A ViT over a log-mel spectrogram of `num_mel_bins` x `max_length` frames cut into
    `frequency_patch_size` x `time_patch_size` patches, tokens ordered frequency-major (20 x 28 = 560 at the
    defaults), learned CLS and position embeddings.

    Args:
        num_mel_bins (`int`, defaults to 80): mel bins. Fixed: the position embeddings are interpolated along
            time only, as released.
        max_length (`int`, defaults to 448): spectrogram frames of the pretraining input (4 s at 16 kHz with
            hop 143).
        frequency_patch_size (`int`, defaults to 4): mel bins per patch.
        time_patch_size (`int`, defaults to 16): frames per patch.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act, layer_norm_eps,
        qkv_bias, hidden_dropout_prob, attention_probs_dropout_prob, initializer_range: the encoder, shared with
            `XKDVideoConfig` (see `_XKDTowerConfig`).
        classifier_dropout (`float`, defaults to 0.0): dropout before the classification layer of
            `XKDForAudioClassification` (the released audio head is a plain linear layer; FSD50K used 0.3).
    """

    model_type = "xkd_audio"
    base_config_key = "audio_config"

    num_mel_bins: int = 80
    max_length: int = 448
    frequency_patch_size: int = 4
    time_patch_size: int = 16
    classifier_dropout: float = 0.0

    def __post_init__(self, **kwargs):
        _refuse_misspelled_keywords(self, kwargs)
        super().__post_init__(**kwargs)
        _check_positive(self, "num_mel_bins", "max_length", "frequency_patch_size", "time_patch_size")
        if self.num_mel_bins % self.frequency_patch_size != 0:
            raise ValueError(
                f"XKDAudioConfig.num_mel_bins={self.num_mel_bins} is not divisible by "
                f"frequency_patch_size={self.frequency_patch_size}."
            )
        if self.max_length % self.time_patch_size != 0:
            raise ValueError(
                f"XKDAudioConfig.max_length={self.max_length} is not divisible by "
                f"time_patch_size={self.time_patch_size}."
            )

    @property
    def grid_size(self) -> tuple[int, int]:
        """(frequency, time) patch grid: (20, 28) by default."""
        return (self.num_mel_bins // self.frequency_patch_size, self.max_length // self.time_patch_size)

    @property
    def num_patches(self) -> int:
        f, t = self.grid_size
        return f * t

    @property
    def patch_dim(self) -> int:
        return self.frequency_patch_size * self.time_patch_size


@strict
class XKDConfig(PreTrainedConfig):
    r"""Configuration of `XKDModel` (both towers) and `XKDForPretraining` (the whole method).

    Args:
        video_config (`dict` or `XKDVideoConfig`, *optional*): the video tower.
        audio_config (`dict` or `XKDAudioConfig`, *optional*): the audio tower.
        variant (`str`, defaults to `"xkd"`): `"xkd"` (separate towers), `"xkd-mas"` (the video and audio students
            share their transformer blocks) or `"xkd-mats"` (students and teachers share their blocks).
        video_mask_ratio (`float`, defaults to 0.85): fraction of video tubelets dropped for reconstruction.
        audio_mask_ratio (`float`, defaults to 0.80): fraction of audio patches dropped.
        norm_pix_loss (`bool`, defaults to `True`): standardise each target patch (unbiased variance, eps 1e-6).
        decoder_hidden_size (`int`, defaults to 384), decoder_num_hidden_layers (`int`, defaults to 4),
        decoder_num_attention_heads (`int`, defaults to 12), decoder_intermediate_size (`int`, defaults to 1536):
            the reconstruction decoders (one per modality; no final norm, as released).
        projector_hidden_size (`int`, defaults to 2048), projector_bottleneck_size (`int`, defaults to 256),
        projector_output_size (`int`, defaults to 8192), projector_num_layers (`int`, defaults to 3): the
            DINO-style projector heads.
        projector_share_hidden_norm (`bool`, defaults to `True`): the released head uses ONE LayerNorm module
            after every hidden layer; `False` gives each hidden layer its own, as the paper's text reads.
        projector_norm_last_layer (`bool`, defaults to `True`): freeze the weight-norm magnitude of the last layer
            at 1.
        student_temperature (`float`, defaults to 0.1): softmax temperature of the students.
        video_teacher_temperature (`float`, defaults to 0.1), audio_teacher_temperature (`float`, defaults to
            0.07): teacher temperatures after warm-up (released xkd.yaml and paper Table S4; the paper's Sec. B.1
            mentions 0.04 -> 0.06, which is what the released MAS config uses for audio).
        video_warmup_teacher_temperature (`float`, defaults to 0.1), audio_warmup_teacher_temperature (`float`,
            defaults to 0.07): teacher temperatures at epoch 0, linearly warmed up to the final values.
        teacher_temperature_warmup_epochs (`int`, defaults to 30).
        center_momentum (`float`, defaults to 0.9): momentum of the teacher-output centers.
        reconstruction_loss_weight (`float`, defaults to 5.0), alignment_loss_weight (`float`, defaults to 1.0),
        distillation_loss_weight (`float`, defaults to 1.0): lambda weights of Eq. 12.
        normalize_loss_weights (`bool`, defaults to `True`): divide the weighted sum by the sum of the weights,
            as the released code does (the paper writes the plain weighted sum).
        ema_momentum_start (`float`, defaults to 0.997), ema_momentum_end (`float`, defaults to 1.0): the cosine
            EMA schedule of the teachers (per iteration).
        teacher_view (`str`, defaults to `"local"`): which view the teachers see. `"local"` = the first local view,
            as the released code does; `"global"` = the full global view, as the paper (Fig. 1, Alg. 1) says.
        refine_mode (`str`, defaults to `"mean"`): cross-modal attention refinement of the teacher features
            (Eq. 3-6). `"mean"` as released, `"softmax"` (the released alternative that no config uses) or `"none"`
            (plain mean pooling: the "w/o refine" ablation).
        mmd_gammas (`list[float]`): the bandwidths gamma of the Gaussian kernels exp(-gamma * d^2) summed in the
            MMD of Eq. 7-9.
        num_local_video_views (`int`, defaults to 1): local video views per sample (3 for MAS/MATS as released).
        num_local_audio_views (`int`, defaults to 1): local audio views per sample.
        local_num_frames (`int`, defaults to 8), local_image_size (`int`, defaults to 96): size of a local video
            view. local_max_length (`int`, defaults to 112): frames of a local audio view.
        ema_shared_teacher_blocks_twice (`bool`, defaults to `True`): in XKD-MATS the released code updates the
            shared teacher blocks once per modality, i.e. with momentum m^2 per step; `False` updates them once.
        initializer_range (`float`, defaults to 0.02).
        objective (`str`, defaults to `"xkd"`): which terms of Eq. 12 the pretraining forward computes, the rows of
            the paper's Table 1. `"xkd"`: reconstruction + domain alignment + distillation (the method).
            `"mae+kd"`: reconstruction + distillation, no MMD is computed (the "w/o domain alignment" row).
            `"mae"`: reconstruction only, the audio-visual MAE baseline: the projector heads, the teacher forward,
            the local-view student passes, the refinement, the MMD and the center update are all skipped (the
            student heads are frozen, so they take no optimizer state), and the output's distillation / alignment /
            monitor fields are None. In every objective the teachers still follow the students by EMA, so the
            towers a probe evaluates (the teachers) are comparable across rows. With `normalize_loss_weights`,
            the total is divided by the sum of the weights of the terms that are computed. Not part of the
            released code, which reaches the MAE row only by zero weights (and still pays for every branch).
    """

    model_type = "xkd"
    sub_configs_defaults: ClassVar[dict] = {"video_config": XKDVideoConfig, "audio_config": XKDAudioConfig}

    video_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    variant: str = "xkd"
    video_mask_ratio: float = 0.85
    audio_mask_ratio: float = 0.80
    norm_pix_loss: bool = True
    decoder_hidden_size: int = 384
    decoder_num_hidden_layers: int = 4
    decoder_num_attention_heads: int = 12
    decoder_intermediate_size: int = 1536
    projector_hidden_size: int = 2048
    projector_bottleneck_size: int = 256
    projector_output_size: int = 8192
    projector_num_layers: int = 3
    projector_share_hidden_norm: bool = True
    projector_norm_last_layer: bool = True
    student_temperature: float = 0.1
    video_teacher_temperature: float = 0.1
    audio_teacher_temperature: float = 0.07
    video_warmup_teacher_temperature: float = 0.1
    audio_warmup_teacher_temperature: float = 0.07
    teacher_temperature_warmup_epochs: int = 30
    center_momentum: float = 0.9
    reconstruction_loss_weight: float = 5.0
    alignment_loss_weight: float = 1.0
    distillation_loss_weight: float = 1.0
    normalize_loss_weights: bool = True
    ema_momentum_start: float = 0.997
    ema_momentum_end: float = 1.0
    teacher_view: str = "local"
    refine_mode: str = "mean"
    mmd_gammas: list[float] | tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
    num_local_video_views: int = 1
    num_local_audio_views: int = 1
    local_num_frames: int = 8
    local_image_size: int = 96
    local_max_length: int = 112
    ema_shared_teacher_blocks_twice: bool = True
    initializer_range: float = 0.02
    objective: str = "xkd"

    def __post_init__(self, **kwargs):
        _refuse_misspelled_keywords(self, kwargs)
        super().__post_init__(**kwargs)
        self.mmd_gammas = [float(g) for g in self.mmd_gammas]
        if self.variant not in XKD_VARIANTS:
            raise ValueError(f"XKDConfig.variant must be one of {XKD_VARIANTS}, got {self.variant!r}.")
        for name in ("video_mask_ratio", "audio_mask_ratio"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"XKDConfig.{name} must lie strictly between 0 and 1, got {value}.")
        if self.teacher_view not in _TEACHER_VIEWS:
            raise ValueError(f"XKDConfig.teacher_view must be one of {_TEACHER_VIEWS}, got {self.teacher_view!r}.")
        if self.refine_mode not in _REFINE_MODES:
            raise ValueError(f"XKDConfig.refine_mode must be one of {_REFINE_MODES}, got {self.refine_mode!r}.")
        if self.objective not in XKD_OBJECTIVES:
            raise ValueError(f"XKDConfig.objective must be one of {XKD_OBJECTIVES}, got {self.objective!r}.")
        _check_positive(
            self, "decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
            "decoder_intermediate_size", "projector_hidden_size", "projector_bottleneck_size",
            "projector_output_size", "projector_num_layers", "num_local_video_views", "num_local_audio_views",
            "local_num_frames", "local_image_size", "local_max_length",
        )
        _check_heads(self, "decoder_hidden_size", "decoder_num_attention_heads")
        if self.projector_num_layers < 2:
            raise ValueError("XKDConfig.projector_num_layers must be at least 2 (hidden and bottleneck layers).")
        if not self.mmd_gammas or any(g <= 0 for g in self.mmd_gammas):
            raise ValueError(f"XKDConfig.mmd_gammas must be a non-empty list of positive numbers, got {self.mmd_gammas}.")
        for name in ("student_temperature", "video_teacher_temperature", "audio_teacher_temperature",
                     "video_warmup_teacher_temperature", "audio_warmup_teacher_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"XKDConfig.{name} must be positive, got {getattr(self, name)}.")
        if not 0.0 <= self.center_momentum < 1.0:
            raise ValueError(f"XKDConfig.center_momentum must lie in [0, 1), got {self.center_momentum}.")
        if not 0.0 <= self.ema_momentum_start <= self.ema_momentum_end <= 1.0:
            raise ValueError(
                "XKDConfig needs 0 <= ema_momentum_start <= ema_momentum_end <= 1, got "
                f"{self.ema_momentum_start} -> {self.ema_momentum_end}."
            )
        if self.variant != "xkd":
            v, a = self.video_config, self.audio_config
            for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
                if getattr(v, name) != getattr(a, name):
                    raise ValueError(
                        f"XKDConfig.variant={self.variant!r} shares transformer blocks between the towers, so "
                        f"video_config.{name}={getattr(v, name)} must equal audio_config.{name}={getattr(a, name)}."
                    )
        lv = self.video_config
        if self.local_num_frames % lv.tubelet_size or self.local_image_size % lv.patch_size:
            raise ValueError(
                f"XKDConfig local video view {self.local_num_frames}x{self.local_image_size}x{self.local_image_size} "
                f"is not divisible into {lv.tubelet_size}x{lv.patch_size}x{lv.patch_size} tubelets."
            )
        if self.local_max_length % self.audio_config.time_patch_size:
            raise ValueError(
                f"XKDConfig.local_max_length={self.local_max_length} is not divisible by the audio "
                f"time_patch_size={self.audio_config.time_patch_size}."
            )

    @property
    def shares_student_blocks(self) -> bool:
        return self.variant in ("xkd-mas", "xkd-mats")

    @property
    def shares_teacher_blocks(self) -> bool:
        return self.variant == "xkd-mats"
