"""PyTorch XKD: cross-modal knowledge distillation with domain alignment (Sarkar & Etemad, AAAI 2024).

Everything of the model is in this file, transformers-style: the tubelet/patch embeddings, the pre-norm ViT block,
the two encoders, the classification heads, and the pretraining model with its losses (each a small named
function whose docstring gives the equation number of the paper).

Tensor layouts (as VideoMAE and AST take them):
    pixel_values: (batch, frames, channels, height, width), ImageNet-normalised RGB.
    input_values: (batch, time, mel_bins), normalised log-mel.
"""


import copy
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
    SequenceClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple
from transformers.utils import logging as hf_logging
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_xkd import XKDAudioConfig, XKDConfig, XKDVideoConfig

logger = hf_logging.get_logger(__name__)

__all__ = [
    "XKDVideoModel",
    "XKDAudioModel",
    "XKDModel",
    "XKDForVideoClassification",
    "XKDForAudioClassification",
    "XKDForPretraining",
    "XKDVideoPreTrainedModel",
    "XKDAudioPreTrainedModel",
    "XKDPreTrainedModel",
    "XKDModelOutput",
    "XKDOutput",
    "XKDForPretrainingOutput",
    "random_masking",
    "patchify_video",
    "patchify_audio",
    "masked_reconstruction_loss",
    "cross_modal_attention_weights",
    "refine_features",
    "gaussian_mmd",
    "cross_modal_distillation_loss",
    "XKDCrossModalDistillationLoss",
    "combine_losses",
    "ema_update",
    "teacher_collapse_statistics",
]


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class XKDModelOutput(ModelOutput):
    """Output of `XKDVideoModel` / `XKDAudioModel`.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch, 1 + tokens, hidden)`): CLS first, after the final
            LayerNorm. With masking, `tokens` is the number of visible patches.
        pooler_output (`torch.FloatTensor` of shape `(batch, hidden)`): mean of the patch tokens (CLS excluded) of
            `last_hidden_state`: the feature the paper evaluates.
        mask (`torch.FloatTensor` of shape `(batch, num_patches)`, *optional*): 1 where a patch was dropped (only
            when `mask_ratio` is given).
        ids_restore (`torch.LongTensor` of shape `(batch, num_patches)`, *optional*): the permutation that undoes
            the masking shuffle.
        cls_attention (`torch.FloatTensor` of shape `(batch, heads, num_patches)`, *optional*): the last block's
            attention from CLS to each patch token (only with `output_cls_attention=True`).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): input of every block plus the last block's output
            (before the final norm), each `(batch, 1 + tokens, hidden)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*): `(batch, heads, 1 + tokens, 1 + tokens)` per block
            (eager attention only; sdpa gives none).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    cls_attention: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class XKDForPretrainingOutput(ModelOutput):
    """Output of `XKDForPretraining.forward`. Every loss is a scalar.

    Args:
        loss: the weighted total of Eq. 12.
        reconstruction_loss: mean of the video and audio masked-reconstruction losses (Eq. 1-2).
        video_reconstruction_loss, audio_reconstruction_loss: each modality's reconstruction loss.
        distillation_loss: mean of the two cross-modal KD directions (Eq. 10-11).
        video_to_audio_distillation_loss: the video teacher teaching the audio student.
        audio_to_video_distillation_loss: the audio teacher teaching the video student.
        alignment_loss: domain alignment (Eq. 9), mean of the student and teacher MMD terms.
        student_alignment_loss: MMD between the video and audio student projections.
        teacher_alignment_loss: MMD between the refined teacher projections (no gradient: teachers are EMA).
        video_teacher_entropy, audio_teacher_entropy: mean entropy of the sharpened, centred teacher distributions
            (collapse monitor, Sec. B.5: it falls to 0 when a teacher collapses to one dimension).
        video_teacher_student_kl, audio_teacher_student_kl: mean KL(teacher || student) of each KD direction
            (collapse monitor: it falls to 0 when both collapse to the same output).
        video_mask, audio_mask (`(batch, num_patches)`): 1 where a patch was masked.
        video_reconstruction (`(batch, num_patches, patch_dim)`), audio_reconstruction: decoder outputs.
        video_teacher_batch_entropy, audio_teacher_batch_entropy: entropy of the batch-mean teacher distribution
            (collapse monitor: near 0 when one dimension dominates for every sample; near log K, together with a
            per-sample entropy near log K, when the teacher outputs the uniform distribution).
        video_teacher_spread, audio_teacher_spread: standard deviation across the batch of the teacher head's
            outputs, averaged over dimensions (collapse monitor: near 0 when the teacher outputs one constant).
        Fields of terms that `config.objective` does not compute are None.
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    video_reconstruction_loss: torch.FloatTensor | None = None
    audio_reconstruction_loss: torch.FloatTensor | None = None
    distillation_loss: torch.FloatTensor | None = None
    video_to_audio_distillation_loss: torch.FloatTensor | None = None
    audio_to_video_distillation_loss: torch.FloatTensor | None = None
    alignment_loss: torch.FloatTensor | None = None
    student_alignment_loss: torch.FloatTensor | None = None
    teacher_alignment_loss: torch.FloatTensor | None = None
    video_teacher_entropy: torch.FloatTensor | None = None
    audio_teacher_entropy: torch.FloatTensor | None = None
    video_teacher_student_kl: torch.FloatTensor | None = None
    audio_teacher_student_kl: torch.FloatTensor | None = None
    video_mask: torch.FloatTensor | None = None
    audio_mask: torch.FloatTensor | None = None
    video_reconstruction: torch.FloatTensor | None = None
    audio_reconstruction: torch.FloatTensor | None = None
    video_teacher_batch_entropy: torch.FloatTensor | None = None
    audio_teacher_batch_entropy: torch.FloatTensor | None = None
    video_teacher_spread: torch.FloatTensor | None = None
    audio_teacher_spread: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------------------
# Input checks: a clear message naming the input, never a shape error from deep inside a convolution
# ----------------------------------------------------------------------------------------------------------------


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    # Cheap next to the encoder on the CPU; a NaN in the input would otherwise silently poison every output and the
    # EMA. On an accelerator with gradients on (training), the check would stall the device once per input, so it
    # is left to the training loop's non-finite-loss stop.
    if tensor.device.type != "cpu" and torch.is_grad_enabled():
        return
    if torch.compiler.is_compiling():
        return
    # One reduction pass: any NaN/inf makes the sum non-finite; the elementwise test only confirms (a sum can
    # overflow on huge but finite values).
    if not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():
        raise ValueError(f"`{name}` contains NaN or infinite values; check the preprocessing of this batch.")


def _check_not_empty(name: str, tensor: torch.Tensor) -> None:
    if tensor.shape[0] == 0:
        raise ValueError(f"`{name}` is an empty batch (shape {tuple(tensor.shape)}); pass at least one clip.")


def _to_model_dtype(name: str, tensor: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Floating inputs take the model's dtype (a float32 batch into a bf16 model is cast to bf16, as the model
    computes in bf16 anyway); anything else is refused by the input checks."""
    if tensor.is_floating_point() and tensor.dtype != weight.dtype and weight.is_floating_point():
        return tensor.to(weight.dtype)
    return tensor


def _check_same_batch(**inputs: torch.Tensor) -> None:
    """Inputs that are paired sample by sample (video with audio, global with local views) need one batch size."""
    sizes = {name: tensor.shape[0] for name, tensor in inputs.items() if isinstance(tensor, torch.Tensor)}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"`{name}` {size}" for name, size in sizes.items())
        raise ValueError(f"these inputs are paired sample by sample but have different batch sizes: {listed}.")


def _check_labels(labels: torch.Tensor, logits: torch.Tensor, config) -> None:
    """Class indices in [0, num_labels) of shape (batch,), or multi-hot / regression targets of the logits' shape."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"`labels` must be a torch.Tensor, got {type(labels).__name__}.")
    batch, num_labels = logits.shape
    if labels.shape[0] != batch:
        raise ValueError(f"`labels` has {labels.shape[0]} rows but the batch has {batch} samples.")
    if not labels.is_floating_point():
        if labels.dtype == torch.bool or config.problem_type == "multi_label_classification":
            raise ValueError(
                f"`labels` for multi-label classification must be float multi-hot targets of shape {(batch, num_labels)},"
                f" got {labels.dtype} {tuple(labels.shape)}."
            )
        if labels.ndim != 1:
            raise ValueError(f"`labels` as class indices must have shape ({batch},), got {tuple(labels.shape)}.")
        kept = labels[labels != -100]  # -100: cross-entropy's ignore_index
        low, high = (int(kept.min()), int(kept.max())) if kept.numel() else (0, 0)
        if low < 0 or high >= num_labels:
            raise ValueError(
                f"`labels` holds class index {high if high >= num_labels else low}, outside [0, {num_labels}) "
                f"(num_labels={num_labels}); set num_labels in the config to the number of classes."
            )
    elif num_labels > 1 and tuple(labels.shape) != (batch, num_labels):
        raise ValueError(
            f"float `labels` are multi-hot targets and must have shape {(batch, num_labels)}, got {tuple(labels.shape)}"
            "; class indices must be an integer tensor."
        )


def _check_video_input(pixel_values: torch.Tensor, config: XKDVideoConfig, name: str = "pixel_values") -> None:
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(pixel_values).__name__}.")
    if pixel_values.ndim != 5:
        raise ValueError(
            f"`{name}` must have shape (batch, frames, channels, height, width), got {tuple(pixel_values.shape)}."
        )
    _check_not_empty(name, pixel_values)
    if not pixel_values.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got {pixel_values.dtype}.")
    _, frames, channels, height, width = pixel_values.shape
    if channels != config.num_channels:
        raise ValueError(
            f"`{name}` has {channels} channels in dimension 2 but the model expects {config.num_channels} "
            f"(shape {tuple(pixel_values.shape)}; expected (batch, frames, channels, height, width))."
        )
    if frames % config.tubelet_size:
        raise ValueError(
            f"`{name}` has {frames} frames, which is not divisible by the tubelet size {config.tubelet_size}."
        )
    if height % config.patch_size or width % config.patch_size:
        raise ValueError(
            f"`{name}` has frames of {height}x{width}, which is not divisible by the patch size {config.patch_size}."
        )
    _check_finite(name, pixel_values)


def _check_audio_input(input_values: torch.Tensor, config: XKDAudioConfig, name: str = "input_values") -> None:
    if not isinstance(input_values, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(input_values).__name__}.")
    if input_values.ndim != 3:
        raise ValueError(f"`{name}` must have shape (batch, time, mel_bins), got {tuple(input_values.shape)}.")
    _check_not_empty(name, input_values)
    if not input_values.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got {input_values.dtype}.")
    _, time, mel = input_values.shape
    if mel != config.num_mel_bins:
        raise ValueError(
            f"`{name}` has {mel} mel bins in its last dimension but the model expects {config.num_mel_bins} "
            f"(shape {tuple(input_values.shape)}; expected (batch, time, mel_bins))."
        )
    if time % config.time_patch_size:
        raise ValueError(
            f"`{name}` has {time} time frames, which is not divisible by the time patch size "
            f"{config.time_patch_size}."
        )
    _check_finite(name, input_values)


def _precise_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32: the precision-critical reductions never run below float32
    and never downcast a float64 caller (tests and references compare in float64)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _autocast_off(tensor: torch.Tensor):
    """Disable autocast for one block: under bf16 autocast the matmuls inside a loss (the MMD's distance `addmm`)
    are cast down to bf16 even when their inputs were cast up to float32."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


# ----------------------------------------------------------------------------------------------------------------
# Patchify (the released flattening orders) and masking
# ----------------------------------------------------------------------------------------------------------------


def patchify_video(pixel_values: torch.Tensor, tubelet_size: int, patch_size: int) -> torch.Tensor:
    """Cut `(B, T, C, H, W)` into `(B, (T/pt)(H/p)(W/p), pt*p*p*C)` patches.

    Tokens are t-major, then h, then w; each patch vector is ordered (pt, ph, pw, c) with the channel fastest:
    the released `b c (t pt) (h ph) (w pw) -> b (t h w) (pt ph pw c)`. This is the reconstruction target order.
    """
    b, t, c, h, w = pixel_values.shape
    nt, nh, nw = t // tubelet_size, h // patch_size, w // patch_size
    x = pixel_values.reshape(b, nt, tubelet_size, c, nh, patch_size, nw, patch_size)
    x = x.permute(0, 1, 4, 6, 2, 5, 7, 3)
    return x.reshape(b, nt * nh * nw, tubelet_size * patch_size * patch_size * c)


def patchify_audio(input_values: torch.Tensor, frequency_patch_size: int, time_patch_size: int) -> torch.Tensor:
    """Cut `(B, time, mel)` into `(B, (mel/fp)(time/tp), fp*tp)` patches, frequency-major.

    The released `b c (h ph) (w pw) -> b (h w) (ph pw c)` on `(B, 1, mel, time)`, with h = frequency.
    """
    b, t, m = input_values.shape
    nf, nt = m // frequency_patch_size, t // time_patch_size
    x = input_values.transpose(1, 2).reshape(b, nf, frequency_patch_size, nt, time_patch_size)
    return x.permute(0, 1, 3, 2, 4).reshape(b, nf * nt, frequency_patch_size * time_patch_size)


def random_masking(
    sequence: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by sorting uniform noise (MAE; not tube masking).

    Args:
        sequence: `(B, L, D)` patch tokens, position embeddings already added.
        mask_ratio: fraction to drop; `round(L * (1 - mask_ratio))` tokens are kept (59 of 392 video tokens at 0.85,
            112 of 560 audio tokens at 0.80, as released).
        noise: optional `(B, L)` noise; the tokens with the smallest noise are kept. Pass it to make tests
            deterministic.

    Returns:
        kept `(B, len_keep, D)`, mask `(B, L)` (1 = dropped), ids_restore `(B, L)`.
    """
    batch, length, dim = sequence.shape
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"`mask_ratio` must be a number strictly between 0 and 1, got {mask_ratio!r}.")
    len_keep = int(round(length * (1 - mask_ratio)))
    if len_keep < 1:
        raise ValueError(f"`mask_ratio`={mask_ratio} keeps no patch of {length}; use a smaller ratio.")
    if noise is None:
        noise = torch.rand(batch, length, device=sequence.device)
    elif noise.shape != (batch, length):
        raise ValueError(f"masking `noise` must have shape {(batch, length)}, got {tuple(noise.shape)}.")
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    kept = torch.gather(sequence, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(batch, length, device=sequence.device, dtype=sequence.dtype)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return kept, mask, ids_restore


# ----------------------------------------------------------------------------------------------------------------
# Position-embedding interpolation, as released
# ----------------------------------------------------------------------------------------------------------------


def _interpolate_video_position_embeddings(
    position_embeddings: torch.Tensor, source_grid: tuple[int, int, int], target_grid: tuple[int, int, int]
) -> torch.Tensor:
    """Trilinear over the (t, h, w) grid with DINO's +0.1 scale factors (released `vit_video.py`)."""
    if tuple(source_grid) == tuple(target_grid):
        return position_embeddings
    cls_pos, patch_pos = position_embeddings[:, :1], position_embeddings[:, 1:]
    dim = patch_pos.shape[-1]
    t0, h0, w0 = source_grid
    t1, h1, w1 = target_grid
    grid = patch_pos.reshape(1, t0, h0, w0, dim).permute(0, 4, 1, 2, 3)
    # scale_factor (not size) is what the released code passes; torch uses it as given in the coordinate mapping.
    grid = F.interpolate(
        grid.to(_precise_dtype(grid)),  # bf16 position tables are interpolated in float32; float64 stays
        scale_factor=((t1 + 0.1) / t0, (h1 + 0.1) / h0, (w1 + 0.1) / w0),
        mode="trilinear",
        align_corners=False,
    ).to(patch_pos.dtype)
    if grid.shape[-3:] != (t1, h1, w1):
        raise ValueError(f"position-embedding interpolation gave grid {tuple(grid.shape[-3:])}, expected {target_grid}.")
    patch_pos = grid.permute(0, 2, 3, 4, 1).reshape(1, t1 * h1 * w1, dim)
    return torch.cat([cls_pos, patch_pos], dim=1)


def _interpolate_audio_position_embeddings(
    position_embeddings: torch.Tensor, source_grid: tuple[int, int], target_grid: tuple[int, int]
) -> torch.Tensor:
    """Bicubic along time only, +0.1 scale factor (released `vit_audio.py`); the frequency grid is fixed."""
    if tuple(source_grid) == tuple(target_grid):
        return position_embeddings
    cls_pos, patch_pos = position_embeddings[:, :1], position_embeddings[:, 1:]
    dim = patch_pos.shape[-1]
    f0, t0 = source_grid
    f1, t1 = target_grid
    grid = patch_pos.reshape(1, f0, t0, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid.to(_precise_dtype(grid)), scale_factor=(1.0, (t1 + 0.1) / t0), mode="bicubic", align_corners=False
    ).to(patch_pos.dtype)
    if grid.shape[-2:] != (f1, t1):
        raise ValueError(f"position-embedding interpolation gave grid {tuple(grid.shape[-2:])}, expected {target_grid}.")
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, f1 * t1, dim)
    return torch.cat([cls_pos, patch_pos], dim=1)


# ----------------------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------------------


class XKDVideoPatchEmbeddings(nn.Module):
    """Tubelet embedding: a Conv3d with kernel = stride = (tubelet, patch, patch), `(B, T, C, H, W)` ->
    `(B, (T/pt)(H/p)(W/p), D)` t-major tokens.

    The parameter lives in an `nn.Conv3d` (state-dict name `projection.weight`, shape `(D, C, pt, p, p)`), but the
    forward cuts the clip into non-overlapping tubelets and applies one matmul with the same weight viewed as
    `(D, C*pt*p*p)`. With kernel = stride that is the same linear map, and the CPU convolution kernels are much
    slower than a matmul for it (about 9x in bf16). `conv_forward` keeps the convolution as the readable reference.
    Equivalent to the released `nn.Linear(3072, 768)` on (pt, ph, pw, c)-flattened patches; the conversion script
    permutes that weight into this one.
    """

    def __init__(self, config: XKDVideoConfig):
        super().__init__()
        self.config = config
        kernel = (config.tubelet_size, config.patch_size, config.patch_size)
        self.projection = nn.Conv3d(config.num_channels, config.hidden_size, kernel_size=kernel, stride=kernel)

    @property
    def weight(self) -> torch.Tensor:
        """The projection weight, for generic code that reads `get_input_embeddings().weight` (dtype, device,
        gradient checks)."""
        return self.projection.weight

    def patch_grid(self, pixel_values: torch.Tensor) -> tuple[int, int, int]:
        """(time, height, width) patch grid of a `(B, T, C, H, W)` input."""
        _, t, _, h, w = pixel_values.shape
        return (t // self.config.tubelet_size, h // self.config.patch_size, w // self.config.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # A tensor (not a tuple) so that `enable_input_require_grads` and PEFT's hooks on the input embeddings work.
        b, t, c, h, w = pixel_values.shape
        pt, p = self.config.tubelet_size, self.config.patch_size
        grid = self.patch_grid(pixel_values)
        # (B, nt, pt, C, nh, p, nw, p) -> (B, nt, nh, nw, C, pt, p, p): the conv weight's (c, pt, ph, pw) order
        x = pixel_values.reshape(b, grid[0], pt, c, grid[1], p, grid[2], p).permute(0, 1, 4, 6, 3, 2, 5, 7)
        x = x.reshape(b, grid[0] * grid[1] * grid[2], c * pt * p * p)
        weight = self.projection.weight.reshape(self.projection.out_channels, -1)
        return F.linear(x, weight, self.projection.bias)

    def conv_forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Reference path: the Conv3d itself. (B, T, C, H, W) -> (B, C, T, H, W) -> (B, D, t, h, w) -> tokens."""
        x = self.projection(pixel_values.permute(0, 2, 1, 3, 4))
        grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), grid


class XKDAudioPatchEmbeddings(nn.Module):
    """Spectrogram patch embedding: a Conv2d with kernel = stride = (frequency patch, time patch), frequency-major
    tokens: `(B, time, mel)` -> `(B, (mel/fp)(time/tp), D)`.

    As for video, the forward is the equivalent patchify + one matmul with the conv weight viewed as `(D, fp*tp)`;
    `conv_forward` is the convolution reference.
    """

    def __init__(self, config: XKDAudioConfig):
        super().__init__()
        self.config = config
        kernel = (config.frequency_patch_size, config.time_patch_size)
        self.projection = nn.Conv2d(1, config.hidden_size, kernel_size=kernel, stride=kernel)

    @property
    def weight(self) -> torch.Tensor:
        """The projection weight, for generic code that reads `get_input_embeddings().weight` (dtype, device,
        gradient checks)."""
        return self.projection.weight

    def patch_grid(self, input_values: torch.Tensor) -> tuple[int, int]:
        """(frequency, time) patch grid of a `(B, time, mel)` input."""
        return (input_values.shape[2] // self.config.frequency_patch_size,
                input_values.shape[1] // self.config.time_patch_size)

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        fp, tp = self.config.frequency_patch_size, self.config.time_patch_size
        # patchify_audio's per-patch order (fp, tp) is the Conv2d weight's (1, fp, tp) order
        x = patchify_audio(input_values, fp, tp)
        weight = self.projection.weight.reshape(self.projection.out_channels, -1)
        return F.linear(x, weight, self.projection.bias)

    def conv_forward(self, input_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Reference path: (B, time, mel) -> (B, 1, mel, time) -> Conv2d (B, D, f, t) -> (B, f*t, D)."""
        x = self.projection(input_values.transpose(1, 2).unsqueeze(1))
        grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), grid


class _XKDEmbeddingsBase(nn.Module):
    """Patch tokens + learned position embeddings, optional MAE masking, then CLS (+ its position) prepended.

    The order matters for fidelity: positions are added before masking, CLS after (released `vit_video.py`).
    """

    def __init__(self, config, patch_embeddings: nn.Module, num_patches: int):
        super().__init__()
        self.config = config
        self.patch_embeddings = patch_embeddings
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_patches + 1, config.hidden_size))

    def _interpolate(self, grid):  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def forward(
        self,
        inputs: torch.Tensor,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = True,
    ):
        tokens, grid = self.patch_embeddings(inputs), self.patch_embeddings.patch_grid(inputs)
        if tuple(grid) != tuple(self.config.grid_size) and not interpolate_pos_encoding:
            raise ValueError(
                f"input gives a patch grid {tuple(grid)} but the model was trained on {tuple(self.config.grid_size)}; "
                "pass interpolate_pos_encoding=True to interpolate the position embeddings."
            )
        position_embeddings = self._interpolate(grid)
        tokens = tokens + position_embeddings[:, 1:]
        mask = ids_restore = None
        if mask_ratio is not None:
            tokens, mask, ids_restore = random_masking(tokens, mask_ratio, noise)
        cls = (self.cls_token + position_embeddings[:, :1]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1), mask, ids_restore


class XKDVideoEmbeddings(_XKDEmbeddingsBase):
    def __init__(self, config: XKDVideoConfig):
        super().__init__(config, XKDVideoPatchEmbeddings(config), config.num_patches)

    def _interpolate(self, grid):
        return _interpolate_video_position_embeddings(self.position_embeddings, self.config.grid_size, grid)


class XKDAudioEmbeddings(_XKDEmbeddingsBase):
    def __init__(self, config: XKDAudioConfig):
        super().__init__(config, XKDAudioPatchEmbeddings(config), config.num_patches)

    def _interpolate(self, grid):
        return _interpolate_audio_position_embeddings(self.position_embeddings, self.config.grid_size, grid)


# ----------------------------------------------------------------------------------------------------------------
# Transformer block
# ----------------------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Readable reference attention: softmax(q k^T * scale) v. Inputs `(B, heads, L, head_dim)`.

    The softmax runs in the input dtype, as released (`attn.softmax(dim=-1)`); torch's bf16/fp16 softmax kernels
    accumulate in float32 and round once. An explicit float32 softmax plus a cast back gives the same values to one
    bf16 unit but cost 4x the time on the CPU (two extra full passes over the L x L map).
    """
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class XKDAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (no bias, as released) and an output projection.

    The qkv rows are [q | k | v], each split into heads of contiguous `head_dim` (the timm layout), so released
    weights load unchanged. The kernel is chosen by `config._attn_implementation` (sdpa by default).
    """

    def __init__(self, config, hidden_size: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.attention_dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)

    def _split_qkv(self, hidden_states: torch.Tensor):
        batch, length, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, self.head_dim)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        query, key, value = self._split_qkv(hidden_states)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            is_causal=False,
            **kwargs,
        )
        attn_output = self.proj_dropout(self.proj(attn_output.reshape(batch, length, -1)))
        return attn_output, attn_weights

    def cls_attention(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Attention probabilities of the CLS query over every token, `(B, heads, L)`.

        One query row instead of the full L x L map, so the refine step needs no eager pass: it costs the key
        projection of one block and a (1 x L) product per head.
        """
        batch, length, dim = hidden_states.shape
        w_q, w_k, _ = self.qkv.weight.split(dim, dim=0)
        b_q = b_k = None
        if self.qkv.bias is not None:
            b_q, b_k, _ = self.qkv.bias.split(dim, dim=0)
        query = F.linear(hidden_states[:, :1], w_q, b_q).reshape(batch, 1, self.num_heads, self.head_dim)
        key = F.linear(hidden_states, w_k, b_k).reshape(batch, length, self.num_heads, self.head_dim)
        logits = torch.einsum("bqhd,bkhd->bhqk", query, key).squeeze(2) * self.scaling
        return logits.to(_precise_dtype(logits)).softmax(dim=-1)


class XKDMLP(nn.Module):
    def __init__(self, config, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(self.act(self.fc1(hidden_states)))))


class XKDLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)). LayerNorm eps from the config (1e-5)."""

    def __init__(self, config, hidden_size: int | None = None, num_heads: int | None = None,
                 intermediate_size: int | None = None):
        super().__init__()
        hidden_size = hidden_size or config.hidden_size
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attention = XKDAttention(config, hidden_size, num_heads or config.num_attention_heads)
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = XKDMLP(config, hidden_size, intermediate_size or config.intermediate_size)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        attn_output, _ = self.attention(self.layernorm_before(hidden_states), **kwargs)
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.layernorm_after(hidden_states))


class XKDEncoder(nn.Module):
    """The stack of blocks. In XKD-MAS/MATS one `XKDEncoder` object is shared by the video and audio towers."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([XKDLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, output_cls_attention: bool = False, **kwargs):
        cls_attention = None
        last = len(self.layer) - 1
        for index, layer in enumerate(self.layer):
            if output_cls_attention and index == last:
                cls_attention = layer.attention.cls_attention(layer.layernorm_before(hidden_states))
            hidden_states = layer(hidden_states, **kwargs)
        return hidden_states, cls_attention


# ----------------------------------------------------------------------------------------------------------------
# Pre-trained model bases
# ----------------------------------------------------------------------------------------------------------------


class _XKDInitMixin:
    """Released initialisation: xavier-uniform Linear weights, zero biases, LayerNorm (1, 0), CLS N(0, .02),
    position embeddings truncated-normal(.02) cut at +-2 absolute; projector-head Linears truncated-normal(.02).

    Uses `transformers.initialization`, which skips tensors loaded from a checkpoint. Every branch acts on the
    module that owns the parameter directly: for remote code, transformers skips modules without direct
    parameters.
    """

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, XKDProjectionLinear):
            init.trunc_normal_(module.weight, std=std)
            init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            # The released tokenizer is a Linear on flattened patches: xavier over (fan_in = patch_dim, fan_out = D);
            # a conv kernel with kernel = stride has the same fans.
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
        elif isinstance(module, _XKDEmbeddingsBase):
            init.normal_(module.cls_token, std=std)
            init.trunc_normal_(module.position_embeddings, std=std, a=-2.0, b=2.0)
        elif isinstance(module, XKDDecoder):
            init.trunc_normal_(module.position_embeddings, std=std, a=-2.0, b=2.0)
            init.normal_(module.mask_token, std=std)
        elif isinstance(module, XKDWeightNormLinear):
            # PyTorch's default Linear init for the direction (as DINO leaves it), magnitude 1
            bound = 1.0 / math.sqrt(module.weight_v.shape[1])
            init.uniform_(module.weight_v, -bound, bound)
            init.ones_(module.weight_g)
        elif isinstance(module, XKDCrossModalDistillationLoss):
            init.zeros_(module.center)


# When a single tower (or its classifier) loads from an XKDModel / XKDForPretraining folder, the other tower, the
# students, heads, decoders and centers are expected leftovers, not a silent partial load of this tower.
_NOT_THE_VIDEO_TOWER = [r"^audio_model\.", r"^audio_student\.", r"^video_student\.", r"_head\.", r"_decoder\.",
                        r"_teacher_center$"]
_NOT_THE_AUDIO_TOWER = [r"^video_model\.", r"^video_student\.", r"^audio_student\.", r"_head\.", r"_decoder\.",
                        r"_teacher_center$"]


class _DropLoadReport(logging.Filter):
    """Hides transformers' multi-line LOAD REPORT while `from_pretrained` runs: `_XKDLoudLoadingMixin` raises with
    the same key names instead (or writes its one-line note for a fresh head)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


def _is_safetensors_error(error: BaseException) -> bool:
    return type(error).__name__ == "SafetensorError" or "deserializing header" in str(error)


def _unreadable_safetensors(folder: str) -> str | None:
    """The first `*.safetensors` file of a local folder that safetensors cannot open (truncated, not a file)."""
    from safetensors import safe_open

    if not os.path.isdir(folder):
        return None
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            path = os.path.join(folder, name)
            try:
                with safe_open(path, framework="pt") as handle:
                    handle.keys()
            except Exception:  # noqa: BLE001 - any failure to open is what we report
                return path
    return None


def _list_keys(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


class _XKDLoudLoadingMixin:
    """`from_pretrained` that stops when the weights do not fit the model (DEVELOPERS rule "loading is loud").

    transformers 5 only logs a report of missing, unexpected and mismatched keys and initialises whatever is
    missing. Built on that report (`output_loading_info`): any missing, unexpected or (size-)mismatched key raises
    a `ValueError` naming the keys, except for the one expected case, a fresh classification head on a backbone
    folder (`_fresh_head_keys`), which loads with a one-line note naming the new head keys. Leftovers that a class
    declares expected (`_keys_to_ignore_on_load_unexpected`: a tower from an XKDModel or pretraining folder) are
    not errors. `allow_partial_load=True` loads anyway, with a one-line warning. A `*.safetensors` file that
    cannot be read (truncated) is named.
    """

    _fresh_head_keys: tuple[str, ...] = ()  # regexes of keys a backbone folder lacks by design (new heads)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, allow_partial_load: bool = False, **kwargs):
        want_info = kwargs.pop("output_loading_info", False)
        ignore_mismatched = kwargs.get("ignore_mismatched_sizes", False)
        # Mismatches are judged below (a resized head is the fresh-head case), so transformers must not raise first.
        kwargs["ignore_mismatched_sizes"] = True
        report_logger = logging.getLogger(PreTrainedModel.__module__)
        report_filter = _DropLoadReport()
        report_logger.addFilter(report_filter)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        except Exception as error:
            if not _is_safetensors_error(error):
                raise
            folder = os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder", "") or "")
            bad = _unreadable_safetensors(folder) or os.path.join(folder, "model.safetensors")
            raise OSError(
                f"cannot read the weights file {bad}: {error}. The file is truncated or damaged (an interrupted "
                "download or copy?); copy or save it again."
            ) from error
        finally:
            report_logger.removeFilter(report_filter)
        cls._check_loading_info(model, info, pretrained_model_name_or_path, ignore_mismatched, allow_partial_load)
        return (model, info) if want_info else model

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        # transformers merges every child's `_keys_to_ignore_on_load_unexpected` into the parent's; the towers' rule
        # ("the other tower is an expected leftover") would then hide any unexpected key of XKDModel or
        # XKDForPretraining. Only the loaded class's own rule applies.
        merged = self._keys_to_ignore_on_load_unexpected
        self._keys_to_ignore_on_load_unexpected = set(type(self)._keys_to_ignore_on_load_unexpected or [])
        try:
            super()._adjust_missing_and_unexpected_keys(loading_info)
        finally:
            self._keys_to_ignore_on_load_unexpected = merged

    @classmethod
    def _check_loading_info(cls, model, info, source, ignore_mismatched: bool, allow_partial_load: bool) -> None:
        fresh = re.compile("|".join(cls._fresh_head_keys)) if cls._fresh_head_keys else None
        is_head = (lambda key: fresh is not None and fresh.search(key) is not None)  # noqa: E731
        missing = set(info["missing_keys"])
        unexpected = set(info["unexpected_keys"])
        mismatched = {key: (tuple(a), tuple(b)) for key, a, b in info["mismatched_keys"]}
        new_head = {key for key in missing if is_head(key)}
        if ignore_mismatched:  # a head resized on purpose (other num_labels) is a fresh head too
            new_head |= {key for key in mismatched if is_head(key)}
        problems = []
        if missing - new_head:
            problems.append(f"keys missing from the folder (would be left at random init): {_list_keys(missing - new_head)}")
        if unexpected:
            problems.append(f"keys in the folder but not in {type(model).__name__} (would be dropped): {_list_keys(unexpected)}")
        bad_shapes = {key: shapes for key, shapes in mismatched.items() if key not in new_head}
        if bad_shapes:
            shown = [f"{key} {shapes[0]} in the folder vs {shapes[1]} in the model" for key, shapes in
                     sorted(bad_shapes.items())[:8]]
            problems.append("keys of another shape: " + "; ".join(shown) + (" ..." if len(bad_shapes) > 8 else ""))
        if bad_shapes and all(is_head(key) for key in bad_shapes):
            problems.append("for a new head with another number of labels pass ignore_mismatched_sizes=True")
        if problems and not allow_partial_load:
            raise ValueError(
                f"{type(model).__name__}.from_pretrained({str(source)!r}): the weights do not fit this model: "
                + "; ".join(problems)
                + ". Is it the right class for this folder (a tower folder holds one XKDVideoModel/XKDAudioModel, "
                "an XKDModel folder both teachers, only a pretraining folder fits XKDForPretraining)? Pass "
                "allow_partial_load=True to load it anyway."
            )
        if problems:
            logger.warning(f"{type(model).__name__}: partial load from {source} (allow_partial_load=True): "
                           + "; ".join(problems))
        if new_head:
            logger.warning(f"{type(model).__name__}: new head initialised from scratch (not in {source}): "
                           f"{_list_keys(new_head)}")


class XKDVideoPreTrainedModel(_XKDLoudLoadingMixin, _XKDInitMixin, PreTrainedModel):
    config: XKDVideoConfig
    _keys_to_ignore_on_load_unexpected = _NOT_THE_VIDEO_TOWER
    base_model_prefix = "video_model"
    main_input_name = "pixel_values"
    input_modalities = ("video",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["XKDVideoEmbeddings", "XKDLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": XKDLayer, "attentions": XKDAttention}


class XKDAudioPreTrainedModel(_XKDLoudLoadingMixin, _XKDInitMixin, PreTrainedModel):
    config: XKDAudioConfig
    _keys_to_ignore_on_load_unexpected = _NOT_THE_AUDIO_TOWER
    base_model_prefix = "audio_model"
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["XKDAudioEmbeddings", "XKDLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": XKDLayer, "attentions": XKDAttention}


class _XKDTowerModel:
    """The body both encoders share: embeddings (patch tokens, positions, optional masking, CLS), the block stack,
    the final LayerNorm; `pooler_output` is the mean of the patch tokens (CLS excluded), the paper's feature.

    A mixin placed before the tower's `PreTrainedModel` base, so that each tower keeps its own config class,
    `base_model_prefix` and input name; the submodule names (and so the state-dict keys) are the same for both.
    """

    embeddings_class: type[nn.Module]

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = self.embeddings_class(config)
        self.encoder = XKDEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding (a module returning a tensor, as `enable_input_require_grads` and PEFT expect)."""
        return self.embeddings.patch_embeddings

    def _encode(self, inputs, mask_ratio, noise, interpolate_pos_encoding, output_cls_attention, kwargs):
        hidden_states, mask, ids_restore = self.embeddings(
            inputs, mask_ratio=mask_ratio, noise=noise, interpolate_pos_encoding=interpolate_pos_encoding
        )
        hidden_states, cls_attention = self.encoder(
            hidden_states, output_cls_attention=output_cls_attention, **kwargs
        )
        hidden_states = self.layernorm(hidden_states)
        return XKDModelOutput(
            last_hidden_state=hidden_states,
            pooler_output=hidden_states[:, 1:].mean(dim=1),
            mask=mask,
            ids_restore=ids_restore,
            cls_attention=None if cls_attention is None else cls_attention[..., 1:],
        )


class XKDVideoModel(_XKDTowerModel, XKDVideoPreTrainedModel):
    """The XKD video encoder: tubelet embedding, CLS, learned positions, pre-norm blocks, final LayerNorm."""

    embeddings_class = XKDVideoEmbeddings

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = True,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
        output_cls_attention: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> XKDModelOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch, frames, 3, height, width)`): ImageNet-normalised
                frames (32 x 112 x 112 in pretraining). Other frame counts and sizes interpolate the position
                embeddings trilinearly, as released.
            interpolate_pos_encoding (`bool`, defaults to `True`): set `False` to refuse inputs of another size.
            mask_ratio (`float`, *optional*): drop this fraction of tubelets (MAE masking, used in pretraining).
            noise (`torch.FloatTensor` of shape `(batch, num_patches)`, *optional*): masking noise.
            output_cls_attention (`bool`): also return the last block's CLS-to-patch attention `(B, heads, N)`.
            output_hidden_states, output_attentions, return_dict: as everywhere in transformers.

        Returns: `XKDModelOutput` with `pooler_output` `(batch, hidden)` = the paper's video feature.
        """
        _check_video_input(pixel_values, self.config)
        pixel_values = _to_model_dtype("pixel_values", pixel_values, self.embeddings.patch_embeddings.projection.weight)
        return self._encode(pixel_values, mask_ratio, noise, interpolate_pos_encoding, output_cls_attention, kwargs)


class XKDAudioModel(_XKDTowerModel, XKDAudioPreTrainedModel):
    """The XKD audio encoder over log-mel spectrograms (frequency-major patch tokens)."""

    embeddings_class = XKDAudioEmbeddings

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_values: torch.Tensor,
        interpolate_pos_encoding: bool = True,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
        output_cls_attention: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> XKDModelOutput:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch, time, mel_bins)`): normalised log-mel, 448 x 80 for
                4 s. Other lengths (a multiple of the time patch) interpolate the positions along time.
            interpolate_pos_encoding, mask_ratio, noise, output_cls_attention: as in `XKDVideoModel.forward`.

        Returns: `XKDModelOutput` with `pooler_output` `(batch, hidden)` = the paper's audio feature.
        """
        _check_audio_input(input_values, self.config)
        input_values = _to_model_dtype("input_values", input_values, self.embeddings.patch_embeddings.projection.weight)
        return self._encode(input_values, mask_ratio, noise, interpolate_pos_encoding, output_cls_attention, kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Classification heads (thin)
# ----------------------------------------------------------------------------------------------------------------


class XKDForVideoClassification(XKDVideoPreTrainedModel):
    """Video encoder + dropout + linear on the pooled feature (the released fine-tuning `Classifier`)."""

    _fresh_head_keys = (r"^classifier\.",)  # a backbone folder has no head: the one expected missing key

    def __init__(self, config: XKDVideoConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.video_model = XKDVideoModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self.classifier:
            # released Classifier: orthogonal weight, zero bias
            init.orthogonal_(module.weight)
            init.zeros_(module.bias)

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = True, **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutput:
        r"""
        Args:
            pixel_values (`(batch, frames, 3, height, width)`): see `XKDVideoModel.forward`.
            labels (`(batch,)` class indices, or `(batch, num_labels)` for multi-label): optional targets.
        Returns: `ImageClassifierOutput` with `logits` `(batch, num_labels)`.
        """
        outputs = self.video_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            _check_labels(labels, logits, self.config)
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class XKDForAudioClassification(XKDAudioPreTrainedModel):
    """Audio encoder + linear on the pooled feature. Multi-label (BCE) with
    `problem_type="multi_label_classification"` (FSD50K)."""

    _fresh_head_keys = (r"^classifier\.",)  # a backbone folder has no head: the one expected missing key

    def __init__(self, config: XKDAudioConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.audio_model = XKDAudioModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self.classifier:
            # released audio head: N(0, 0.01), zero bias
            init.normal_(module.weight, std=0.01)
            init.zeros_(module.bias)

    @can_return_tuple
    def forward(
        self, input_values: torch.Tensor, labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = True, **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutput:
        r"""
        Args:
            input_values (`(batch, time, mel_bins)`): see `XKDAudioModel.forward`.
            labels (`(batch,)` class indices, or `(batch, num_labels)` multi-hot): optional targets.
        Returns: `SequenceClassifierOutput` with `logits` `(batch, num_labels)`.
        """
        outputs = self.audio_model(input_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            _check_labels(labels, logits, self.config)
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


# ----------------------------------------------------------------------------------------------------------------
# Pretraining pieces: projector head, decoder
# ----------------------------------------------------------------------------------------------------------------


class XKDProjectionLinear(nn.Linear):
    """A Linear of the projector head; its own class only so that it gets DINO's truncated-normal init."""


class XKDWeightNormLinear(nn.Module):
    """Bias-free linear with weight normalisation W = g * v / ||v|| (row-wise), as DINO's last layer.

    `weight_g` is frozen at 1 when `norm_last_layer` is set (released), so only the direction `weight_v` learns.
    """

    def __init__(self, in_features: int, out_features: int, train_magnitude: bool):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=train_magnitude)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return F.linear(x, weight)


class XKDProjectionHead(nn.Module):
    """DINO-style projector: (Linear, LayerNorm, GELU) x (layers - 1), Linear to the bottleneck, L2-normalise,
    weight-normalised Linear to `projector_output_size`, then LayerNorm without affine parameters.

    `(B, hidden) -> (B, projector_output_size)`. With `projector_share_hidden_norm` (released) one LayerNorm module
    serves every hidden layer.
    """

    def __init__(self, config: XKDConfig, in_features: int):
        super().__init__()
        hidden, bottleneck = config.projector_hidden_size, config.projector_bottleneck_size
        sizes = [in_features] + [hidden] * (config.projector_num_layers - 1) + [bottleneck]
        self.layers = nn.ModuleList([XKDProjectionLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        num_norms = 1 if config.projector_share_hidden_norm else config.projector_num_layers - 1
        self.hidden_norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(num_norms)])
        self.last_layer = XKDWeightNormLinear(
            bottleneck, config.projector_output_size, train_magnitude=not config.projector_norm_last_layer
        )
        self.output_norm = nn.LayerNorm(config.projector_output_size, elementwise_affine=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features
        for index, linear in enumerate(self.layers[:-1]):
            norm = self.hidden_norms[0 if len(self.hidden_norms) == 1 else index]
            x = F.gelu(norm(linear(x)))
        x = F.normalize(self.layers[-1](x), dim=-1)
        return self.output_norm(self.last_layer(x))


class XKDDecoder(nn.Module):
    """MAE decoder: project the visible latent to the decoder width, append mask tokens, unshuffle, add learned
    positions, blocks, no final norm, project to patch values. `(B, 1 + kept, D) -> (B, num_patches, patch_dim)`.
    """

    def __init__(self, config: XKDConfig, tower_config, num_patches: int, patch_dim: int):
        super().__init__()
        width = config.decoder_hidden_size
        self.num_patches = num_patches
        self.decoder_embed = nn.Linear(tower_config.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_patches + 1, width))
        self.layers = nn.ModuleList(
            [
                XKDLayer(tower_config, width, config.decoder_num_attention_heads, config.decoder_intermediate_size)
                for _ in range(config.decoder_num_hidden_layers)
            ]
        )
        self.decoder_pred = nn.Linear(width, patch_dim)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        batch, visible, width = x.shape
        if ids_restore.shape[1] != self.num_patches:
            # The released MAE only ever decodes full-size global views; its decoder's own position-embedding
            # interpolation keeps a grid formula (N // tubelet) that the released encoder code marks as wrong.
            raise ValueError(
                f"the reconstruction decoder expects the pretraining size ({self.num_patches} patches), "
                f"got {ids_restore.shape[1]}."
            )
        mask_tokens = self.mask_token.expand(batch, self.num_patches + 1 - visible, -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, width))
        x = torch.cat([x[:, :1], patches], dim=1) + self.position_embeddings
        for layer in self.layers:
            x = layer(x)
        return self.decoder_pred(x)[:, 1:]


# ----------------------------------------------------------------------------------------------------------------
# Losses and the refine step (each with its equation in the paper)
# ----------------------------------------------------------------------------------------------------------------


def masked_reconstruction_loss(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix_loss: bool = True
) -> torch.Tensor:
    """Masked reconstruction, Eq. 1-2: mean squared error over masked patches only.

    Args:
        prediction, target: `(B, N, patch_dim)`; mask: `(B, N)`, 1 = masked.
        norm_pix_loss: standardise each target patch with its mean and unbiased variance, (x - mu) / sqrt(var + 1e-6).

    Computed in float32 with autocast off (float64 if an input is float64): the per-patch variance of a bf16 target
    loses the small patches' contrast, and the 1e-6 of the denominator is below bf16's resolution of 1.
    """
    dtype = _precise_dtype(prediction, target)
    with _autocast_off(prediction):
        prediction, target, mask = prediction.to(dtype), target.to(dtype), mask.to(dtype)
        if norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        per_patch = ((prediction - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()


def cross_modal_attention_weights(
    video_attention: torch.Tensor, audio_attention: torch.Tensor, mode: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-modal attention maps, Eq. 3-5.

    With A_v `(B, H, Nv)` and A_a `(B, H, Na)` the teachers' CLS-to-patch attention, the cross-modal map is
    M[b,h,i,j] = A_a[b,h,i] * A_v[b,h,j]. Mode "mean" (released) weights each video token by the mean over audio
    tokens of M divided by the mean video attention, and vice versa; M is never materialised because its means
    factorise: mean_i M[..., i, j] = A_v[j] * mean(A_a).

    Returns: video weights `(B, H, Nv)`, audio weights `(B, H, Na)`.
    """
    dtype = _precise_dtype(video_attention, audio_attention)
    v = video_attention.to(dtype)
    a = audio_attention.to(dtype)
    v_mean = v.mean(dim=-1, keepdim=True)
    a_mean = a.mean(dim=-1, keepdim=True)
    video_rows = v * a_mean  # mean over audio tokens of M, for each video token
    audio_rows = a * v_mean  # mean over video tokens of M, for each audio token
    if mode == "mean":
        return video_rows / v_mean, audio_rows / a_mean
    if mode == "softmax":
        return video_rows.softmax(dim=-1), audio_rows.softmax(dim=-1)
    raise ValueError(f"refine mode must be 'mean' or 'softmax', got {mode!r}.")


def refine_features(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Refine teacher tokens with cross-modal weights and pool them, Eq. 6.

    omega = mean over heads of `weights` `(B, H, N)`; F' = s * omega * F with the per-sample scale
    s = sqrt(||mean_n F||^2 / ||mean_n (omega * F)||^2), which keeps the pooled feature's energy and cancels any
    per-sample constant in omega. Returns mean_n F', `(B, D)`.

    Args:
        features: `(B, N, D)` teacher patch tokens (after the final norm, CLS removed).
        weights: `(B, H, N)`.
    """
    omega = weights.mean(dim=1).unsqueeze(-1).to(features.dtype)  # (B, N, 1)
    pooled = features.mean(dim=1)
    weighted = (omega * features).mean(dim=1)
    energy_before = pooled.pow(2).sum(dim=-1, keepdim=True)
    energy_after = weighted.pow(2).sum(dim=-1, keepdim=True)
    return (energy_before / energy_after).sqrt() * weighted


def gaussian_mmd(x: torch.Tensor, y: torch.Tensor, gammas) -> torch.Tensor:
    """Multi-bandwidth Gaussian MMD^2 (biased estimator), Eq. 7-8.

    K(a, b) = sum_gamma exp(-gamma ||a - b||^2); MMD^2 = mean K(x, x) + mean K(y, y) - 2 mean K(x, y), diagonals
    included. Squared distances are ||a||^2 + ||b||^2 - 2 a.b clamped at 1e-30, as released (DomainBed).

    Precision (why this is not the released code's arithmetic, though it is its formula): the projector's rows are
    LayerNorm-ed, so ||a||^2 = d = 8192, while early in training the rows differ by a few percent; the expansion
    then cancels catastrophically. Measured on such rows: float32 is 10 % off, bf16 (what autocast gives the
    `addmm`) returns 0 or even negative values. So: (1) autocast is disabled and the computation runs in float32
    (float64 stays float64); (2) both sets are first shifted by their common mean, which leaves every distance
    unchanged but makes the norms as small as the spread: float32 is then within ~1e-4 (relative) of float64.

    Args:
        x: `(n, d)`, y: `(m, d)`; gammas: the kernel bandwidths.
    """

    def kernel(a, b):
        a_sq = a.pow(2).sum(dim=-1, keepdim=True)
        b_sq = b.pow(2).sum(dim=-1, keepdim=True)
        distances = torch.addmm(b_sq.transpose(0, 1), a, b.transpose(0, 1), alpha=-2).add_(a_sq).clamp_min_(1e-30)
        return sum(torch.exp(distances * -gamma) for gamma in gammas)

    dtype = _precise_dtype(x, y)
    with _autocast_off(x):
        x, y = x.to(dtype), y.to(dtype)
        shift = torch.cat([x, y]).mean(dim=0, keepdim=True).detach()  # translation-invariant: distances unchanged
        x, y = x - shift, y - shift
        return kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean()


def cross_modal_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    teacher_temperature: float,
    student_temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-modal knowledge distillation, Eq. 10-11: cross-entropy between the sharpened, centred teacher
    distribution and the student distribution.

    q = softmax((t - c) / tau_t) (no gradient), loss = mean over (student view, sample) of -sum_k q_k log p_k with
    p = softmax(s / tau_s). Every student view is paired with the single teacher view (no pair is skipped, as
    released).

    Args:
        student_logits: `(V * B, K)`, the student's views stacked view-major.
        teacher_logits: `(B, K)`; center: `(1, K)`.

    Returns: loss, mean teacher entropy, mean KL(q || p), and the teacher batch mean `(1, K)` (for the center).

    Computed in float32 with autocast off (float64 stays float64): the centring subtracts two nearly equal
    numbers and the temperatures (0.07-0.1) multiply the difference by 10-14 before the exponential, so a bf16
    teacher - center (8 bits) would decide the target distribution.
    """
    batch = teacher_logits.shape[0]
    if student_logits.shape[0] % batch:
        raise ValueError(
            f"student logits ({student_logits.shape[0]} rows) are not a whole number of views of batch {batch}."
        )
    views = student_logits.shape[0] // batch
    dtype = _precise_dtype(student_logits, teacher_logits)
    with _autocast_off(student_logits):
        teacher = teacher_logits.detach().to(dtype)
        q = F.softmax((teacher - center.to(dtype)) / teacher_temperature, dim=-1).repeat(views, 1)
        log_p = F.log_softmax(student_logits.to(dtype) / student_temperature, dim=-1)
        loss = -(q * log_p).sum(dim=-1).mean()
        with torch.no_grad():
            log_q = torch.log(q.clamp_min(1e-30))
            entropy = -(q * log_q).sum(dim=-1).mean()
            kl = (q * (log_q - log_p)).sum(dim=-1).mean()
        return loss, entropy, kl, teacher.mean(dim=0, keepdim=True)


class XKDCrossModalDistillationLoss(nn.Module):
    """One direction of the cross-modal distillation (Eq. 10-11) with the state it owns: the centre of the
    teacher's outputs (DINO's centring), as DINOv2's `DINOLoss` owns its `center`.

    `forward` gives the loss, the teacher entropy, KL(q || p) and the teacher batch mean (see
    `cross_modal_distillation_loss`); `update_center` moves the centre, c <- m c + (1 - m) mean_batch(t), with the
    batch mean averaged over processes when torch.distributed is initialised (so every rank keeps the same centre).

    The buffer is `center` `(1, K)`. `XKDForPretraining` saves it under the names checkpoints have always used
    (`video_teacher_center`, `audio_teacher_center`), see `XKDForPretraining._CENTER_KEYS`.
    """

    def __init__(self, output_size: int, center_momentum: float):
        super().__init__()
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, output_size))

    def forward(self, student_logits, teacher_logits, teacher_temperature: float, student_temperature: float):
        return cross_modal_distillation_loss(
            student_logits, teacher_logits, self.center, teacher_temperature, student_temperature
        )

    @torch.no_grad()
    def update_center(self, batch_mean: torch.Tensor) -> None:
        """c <- m c + (1 - m) batch mean; the batch mean is averaged over processes when distributed."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            batch_mean = batch_mean.clone()
            torch.distributed.all_reduce(batch_mean)
            batch_mean /= torch.distributed.get_world_size()
        m = self.center_momentum
        self.center.mul_(m).add_(batch_mean.to(self.center.dtype), alpha=1 - m)


def combine_losses(reconstruction, alignment, distillation, config: XKDConfig) -> torch.Tensor:
    """Total loss, Eq. 12: lambda_r L_rec + lambda_da L_da + lambda_kd L_kd, divided by the sum of the lambdas
    when `config.normalize_loss_weights` (released: (5 rec + da + kd) / 7)."""
    w_r, w_a, w_d = (config.reconstruction_loss_weight, config.alignment_loss_weight,
                     config.distillation_loss_weight)
    total = w_r * reconstruction + w_a * alignment + w_d * distillation
    if config.normalize_loss_weights:
        total = total / (w_r + w_a + w_d)
    return total


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """Teacher update, Eq. 13: theta_t <- m theta_t + (1 - m) theta_s, over parameters in registration order.

    Shared modules are visited as often as they appear (remove_duplicate=False): XKD-MATS's shared teacher blocks
    get one update per modality call, as released.
    """
    t_params = [p for _, p in teacher.named_parameters(remove_duplicate=False)]
    s_params = [p for _, p in student.named_parameters(remove_duplicate=False)]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student do not have the same parameters.")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, [s.detach().to(t.dtype) for t, s in zip(t_params, s_params)], alpha=1 - momentum)


# ----------------------------------------------------------------------------------------------------------------
# Composite models
# ----------------------------------------------------------------------------------------------------------------


class XKDPreTrainedModel(_XKDLoudLoadingMixin, _XKDInitMixin, PreTrainedModel):
    config: XKDConfig
    base_model_prefix = "xkd"
    main_input_name = "pixel_values"
    input_modalities = ("video", "audio")
    supports_gradient_checkpointing = True
    _no_split_modules = ["XKDVideoEmbeddings", "XKDAudioEmbeddings", "XKDLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True


@dataclass
class XKDOutput(ModelOutput):
    """Output of `XKDModel.forward`, laid out as CLIP's and CLAP's: tensors first, the per-tower outputs last, so
    that `outputs[0]` is a tensor and `to_tuple()` flattens. Fields of a tower that got no input are `None` (and
    left out of tuples and of `keys()`).

    Args:
        video_embeds (`torch.FloatTensor` of shape `(batch, video hidden)`): the video feature (pooled patch tokens).
        audio_embeds (`torch.FloatTensor` of shape `(batch, audio hidden)`): the audio feature.
        audio_visual_embeds (`torch.FloatTensor` of shape `(batch, video hidden + audio hidden)`, *optional*): the
            late fusion (each feature L2-normalised, then concatenated), only when both inputs are given.
        video_model_output (`XKDModelOutput`): the video tower's full output.
        audio_model_output (`XKDModelOutput`): the audio tower's full output.
    """

    video_embeds: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    audio_visual_embeds: torch.FloatTensor | None = None
    video_model_output: XKDModelOutput | None = None
    audio_model_output: XKDModelOutput | None = None

    def to_tuple(self) -> tuple:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


def _as_features_output(tower_output: XKDModelOutput) -> BaseModelOutputWithPooling:
    return BaseModelOutputWithPooling(
        last_hidden_state=tower_output.last_hidden_state,
        pooler_output=tower_output.pooler_output,
        hidden_states=tower_output.hidden_states,
        attentions=tower_output.attentions,
    )


def _late_fusion(video_embeds: torch.Tensor, audio_embeds: torch.Tensor) -> torch.Tensor:
    return torch.cat([F.normalize(video_embeds, dim=-1), F.normalize(audio_embeds, dim=-1)], dim=-1)


class XKDModel(XKDPreTrainedModel):
    """Both encoders. In a converted release these are the EMA teachers, which the paper evaluates."""

    # From a pretraining folder XKDModel gives the teachers (as the towers do); the rest is expected to stay behind.
    _keys_to_ignore_on_load_unexpected = [r"^video_student\.", r"^audio_student\.", r"_head\.", r"_decoder\.",
                                          r"_teacher_center$"]

    def __init__(self, config: XKDConfig):
        super().__init__(config)
        self.video_model = XKDVideoModel(config.video_config)
        self.audio_model = XKDAudioModel(config.audio_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The video patch embedding (the main input's); the audio one is `audio_model.get_input_embeddings()`."""
        return self.video_model.get_input_embeddings()

    @can_return_tuple
    def get_video_features(
        self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling:
        """`(B, T, 3, H, W)` -> `BaseModelOutputWithPooling` whose `pooler_output` `(B, hidden)` is the video
        feature (mean of the normalised patch tokens); `last_hidden_state`, and `hidden_states` / `attentions`
        when asked (`output_hidden_states`, `output_attentions`), are the video tower's. A tuple with
        `return_dict=False`."""
        return _as_features_output(self.video_model(pixel_values, return_dict=True, **kwargs))

    @can_return_tuple
    def get_audio_features(
        self, input_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling:
        """`(B, time, mel)` -> `BaseModelOutputWithPooling` with the audio feature `(B, hidden)` in
        `pooler_output` (as `get_video_features`)."""
        return _as_features_output(self.audio_model(input_values, return_dict=True, **kwargs))

    def get_audio_visual_features(self, pixel_values: torch.Tensor, input_values: torch.Tensor) -> torch.Tensor:
        """Late fusion (Kinetics-Sound protocol): each feature L2-normalised, then concatenated, `(B, 2 * hidden)`.

        Returns the fused tensor itself (not an output object): it is not the output of one encoder, so there are
        no hidden states to go with it; `forward` with both inputs gives it as `audio_visual_embeds` next to both
        towers' outputs.
        """
        _check_same_batch(pixel_values=pixel_values, input_values=input_values)
        video = self.get_video_features(pixel_values, return_dict=True).pooler_output
        audio = self.get_audio_features(input_values, return_dict=True).pooler_output
        return _late_fusion(video, audio)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> XKDOutput:
        """Runs whichever towers get an input (`kwargs` such as `output_hidden_states` go to both).

        Returns: `XKDOutput`: `video_embeds`, `audio_embeds`, `audio_visual_embeds` (both inputs only), then
        `video_model_output`, `audio_model_output`.
        """
        if pixel_values is None and input_values is None:
            raise ValueError("XKDModel needs `pixel_values`, `input_values` or both.")
        _check_same_batch(pixel_values=pixel_values, input_values=input_values)
        video = None if pixel_values is None else self.video_model(pixel_values, return_dict=True, **kwargs)
        audio = None if input_values is None else self.audio_model(input_values, return_dict=True, **kwargs)
        return XKDOutput(
            video_embeds=None if video is None else video.pooler_output,
            audio_embeds=None if audio is None else audio.pooler_output,
            audio_visual_embeds=None if video is None or audio is None else _late_fusion(
                video.pooler_output, audio.pooler_output),
            video_model_output=video,
            audio_model_output=audio,
        )


def _as_views(views, name: str) -> list[torch.Tensor]:
    """Accept local views as a list of tensors or one tensor with a view dimension at index 1."""
    if isinstance(views, torch.Tensor):
        return list(views.unbind(1))
    if isinstance(views, (list, tuple)) and views and all(isinstance(v, torch.Tensor) for v in views):
        return list(views)
    raise ValueError(f"`{name}` must be a tensor with a view dimension at index 1 or a non-empty list of tensors.")


@torch.no_grad()
def teacher_collapse_statistics(
    teacher_logits: torch.Tensor, center: torch.Tensor, teacher_temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantities that see both DINO collapse modes of a teacher head (`(B, K)` outputs, `(1, K)` center).

    Returns (entropy of the batch-mean distribution mean_b softmax((t_b - c) / tau), the standard deviation of
    t over the batch averaged over the K dimensions). One dimension dominating drives the first to 0; a constant
    (hence, once centred, uniform) output drives the second to 0 and the per-sample entropy to log K. Computed in
    float64: near-uniform distributions over thousands of dimensions are what it must resolve.
    """
    t = teacher_logits.detach().double()
    q = F.softmax((t - center.double()) / teacher_temperature, dim=-1)
    mean_q = q.mean(dim=0)
    batch_entropy = -(mean_q * torch.log(mean_q.clamp_min(1e-300))).sum()
    spread = t.std(dim=0, unbiased=False).mean() if t.shape[0] > 1 else t.new_zeros(())
    return batch_entropy.float(), spread.float()


class XKDForPretraining(XKDPreTrainedModel):
    """The whole of XKD (Algorithm 1): masked reconstruction, EMA teachers, cross-modal attention refinement,
    MMD domain alignment and cross-modal distillation, for the variants XKD, XKD-MAS and XKD-MATS.

    Submodules: `video_model` / `audio_model` are the EMA **teachers** (named so that
    `XKDVideoModel.from_pretrained(<this folder>)` gives the teacher, which the paper uses downstream);
    `video_student` / `audio_student` the students; four `XKDProjectionHead`s; two `XKDDecoder`s; and the
    teacher-output centers `video_teacher_center` / `audio_teacher_center` (buffers, saved with the model).
    """

    def __init__(self, config: XKDConfig):
        super().__init__(config)
        v_cfg, a_cfg = config.video_config, config.audio_config
        self.video_model = XKDVideoModel(v_cfg)
        self.audio_model = XKDAudioModel(a_cfg)
        self.video_student = XKDVideoModel(v_cfg)
        self.audio_student = XKDAudioModel(a_cfg)
        if config.shares_student_blocks:
            self.audio_student.encoder = self.video_student.encoder
        if config.shares_teacher_blocks:
            self.audio_model.encoder = self.video_model.encoder
        self.video_teacher_head = XKDProjectionHead(config, v_cfg.hidden_size)
        self.audio_teacher_head = XKDProjectionHead(config, a_cfg.hidden_size)
        self.video_student_head = XKDProjectionHead(config, v_cfg.hidden_size)
        self.audio_student_head = XKDProjectionHead(config, a_cfg.hidden_size)
        self.video_decoder = XKDDecoder(config, v_cfg, v_cfg.num_patches, v_cfg.patch_dim)
        self.audio_decoder = XKDDecoder(config, a_cfg, a_cfg.num_patches, a_cfg.patch_dim)
        # Eq. 10-11, each direction with the centre of its teacher: the video teacher teaches the audio student
        self.video_to_audio_distillation = XKDCrossModalDistillationLoss(
            config.projector_output_size, config.center_momentum)
        self.audio_to_video_distillation = XKDCrossModalDistillationLoss(
            config.projector_output_size, config.center_momentum)
        self.post_init()
        self.copy_students_to_teachers()

    def get_input_embeddings(self) -> nn.Module:
        """The video student's patch embedding (the trained one; the teachers are EMA copies)."""
        return self.video_student.get_input_embeddings()

    # --- teachers -------------------------------------------------------------------------------------------

    def _teacher_student_pairs(self):
        return [
            (self.video_model, self.video_student),
            (self.video_teacher_head, self.video_student_head),
            (self.audio_model, self.audio_student),
            (self.audio_teacher_head, self.audio_student_head),
        ]

    @torch.no_grad()
    def copy_students_to_teachers(self) -> None:
        """Teachers start as copies of the students and never receive gradients (released behaviour)."""
        for teacher, student in self._teacher_student_pairs():
            teacher.load_state_dict(student.state_dict())
        self.freeze_teachers()

    def freeze_teachers(self) -> None:
        """Teachers (and the frozen weight-norm magnitudes) take no gradient. Loading a checkpoint re-creates
        parameters with requires_grad=True, so `from_pretrained` calls this again."""
        self.video_model.requires_grad_(False)
        self.audio_model.requires_grad_(False)
        self.video_teacher_head.requires_grad_(False)
        self.audio_teacher_head.requires_grad_(False)
        if self.config.objective == "mae":  # the MAE row never runs the heads: no gradients, no optimizer state
            self.video_student_head.requires_grad_(False)
            self.audio_student_head.requires_grad_(False)
        if self.config.projector_norm_last_layer:
            for head in (self.video_student_head, self.audio_student_head):
                head.last_layer.weight_g.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        if isinstance(model, tuple):  # output_loading_info=True
            model[0].freeze_teachers()
        else:
            model.freeze_teachers()
        return model

    @torch.no_grad()
    def update_teachers(self, momentum: float) -> None:
        """EMA step (Eq. 13) of both teachers (backbone and projector head) towards the students.

        In XKD-MATS the shared teacher blocks are updated once per modality (effective momentum m^2 per step) as
        released, unless `config.ema_shared_teacher_blocks_twice` is False.
        """
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"EMA momentum must lie in [0, 1], got {momentum}.")
        pairs = self._teacher_student_pairs()
        if self.config.shares_teacher_blocks and not self.config.ema_shared_teacher_blocks_twice:
            ema_update(self.video_model, self.video_student, momentum)
            ema_update(self.video_teacher_head, self.video_student_head, momentum)
            # the audio tower without its (already updated) shared blocks
            for name in ("embeddings", "layernorm"):
                ema_update(getattr(self.audio_model, name), getattr(self.audio_student, name), momentum)
            ema_update(self.audio_teacher_head, self.audio_student_head, momentum)
            return
        for teacher, student in pairs:
            ema_update(teacher, student, momentum)

    def student_parameters(self):
        """Trainable parameters of the students and their heads: what the released code clips (per parameter)."""
        # a throwaway container: its `parameters()` yields a parameter shared by two students (MAS) once
        students = nn.ModuleList(
            [self.video_student, self.video_student_head, self.audio_student, self.audio_student_head]
        )
        return (p for p in students.parameters() if p.requires_grad)

    def train(self, mode: bool = True):
        super().train(mode)
        # Teachers always run in eval mode (no dropout), as a frozen EMA network should.
        self.video_model.eval()
        self.audio_model.eval()
        return self

    # --- saving: shared blocks ---------------------------------------------------------------------------------

    # The distillation-loss modules own the centres; checkpoints (save_pretrained, accelerate's save_state, the
    # converter) have always named them `video_teacher_center` / `audio_teacher_center` and keep doing so. These are
    # the only keys whose saved name differs from the module path; `state_dict` writes the saved names, loading
    # accepts both, and the attributes of those names read and replace the modules' buffers.
    _CENTER_KEYS = {"video_teacher_center": "video_to_audio_distillation.center",
                    "audio_teacher_center": "audio_to_video_distillation.center"}

    @property
    def video_teacher_center(self) -> torch.Tensor:
        """Centre of the video teacher's outputs `(1, K)` (owned by `video_to_audio_distillation`)."""
        return self.video_to_audio_distillation.center

    @property
    def audio_teacher_center(self) -> torch.Tensor:
        """Centre of the audio teacher's outputs `(1, K)` (owned by `audio_to_video_distillation`)."""
        return self.audio_to_video_distillation.center

    def __setattr__(self, name, value):
        # transformers' loader sets a loaded tensor with setattr(model, saved_name, tensor) (wrapped as a
        # Parameter, since the saved name is not one of this module's own buffers): route it to the owner's buffer.
        if name in type(self)._CENTER_KEYS and isinstance(value, torch.Tensor):
            tensor = value.detach() if isinstance(value, nn.Parameter) else value
            if getattr(value, "_is_hf_initialized", False):
                tensor._is_hf_initialized = True  # loaded: the init pass must not zero it again
            owner = self._CENTER_KEYS[name].rpartition(".")[0]
            setattr(getattr(self, owner), "center", tensor)
            return
        super().__setattr__(name, value)

    def get_parameter_or_buffer(self, target: str):
        return super().get_parameter_or_buffer(self._CENTER_KEYS.get(target, target))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torch's load_state_dict (accelerate's load_state, tests): saved names -> module paths, in place
        for saved, path in self._CENTER_KEYS.items():
            if prefix + saved in state_dict:
                state_dict[prefix + path] = state_dict.pop(prefix + saved)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def state_dict(self, *args, **kwargs):
        # MAS/MATS share one block stack between two towers. Saving writes every tower in full (as the released
        # backbone files do) so that each tower loads on its own; the duplicates are cloned because safetensors
        # refuses aliased tensors. Loading writes the same values into the shared module twice.
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for saved, path in self._CENTER_KEYS.items():
            if prefix + path in state:
                state[prefix + saved] = state.pop(prefix + path)
        if not self.config.shares_student_blocks:
            return state
        seen = set()
        for key, tensor in state.items():
            ptr = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            if ptr in seen and tensor.device.type != "meta":
                state[key] = tensor.clone()
            seen.add(ptr)
        return state

    # --- forward --------------------------------------------------------------------------------------------

    def _teacher_view(self, global_view, local_views):
        return local_views[0] if self.config.teacher_view == "local" else global_view

    @torch.no_grad()
    def _teacher_features(self, pixel_values, input_values):
        video = self.video_model(pixel_values, output_cls_attention=True)
        audio = self.audio_model(input_values, output_cls_attention=True)
        video_tokens, audio_tokens = video.last_hidden_state[:, 1:], audio.last_hidden_state[:, 1:]
        if self.config.refine_mode == "none":
            return video_tokens.mean(dim=1), audio_tokens.mean(dim=1)
        video_weights, audio_weights = cross_modal_attention_weights(
            video.cls_attention, audio.cls_attention, self.config.refine_mode
        )
        return refine_features(video_tokens, video_weights), refine_features(audio_tokens, audio_weights)


    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_values: torch.Tensor,
        local_pixel_values,
        local_input_values,
        video_noise: torch.Tensor | None = None,
        audio_noise: torch.Tensor | None = None,
        teacher_temperatures: tuple[float, float] | None = None,
        **kwargs,
    ) -> XKDForPretrainingOutput:
        r"""One XKD step's forward (Algorithm 1).

        Args:
            pixel_values (`(B, 32, 3, 112, 112)`): global video view (masked for the student's reconstruction).
            input_values (`(B, 448, 80)`): global audio view.
            local_pixel_values: local video views, `(B, V, 8, 3, 96, 96)` or a list of V `(B, 8, 3, 96, 96)`.
            local_input_values: local audio views, `(B, V, 112, 80)` or a list of `(B, 112, 80)`.
            video_noise, audio_noise (`(B, num_patches)`, *optional*): masking noise (tests).
            teacher_temperatures (`(video, audio)`, *optional*): this epoch's teacher temperatures (warm-up);
                defaults to the config's final values.

        Which view the teachers see follows `config.teacher_view` ("local": the first local view, as released).
        In training mode the teacher centers are updated after the loss, as released. `config.objective` selects
        the terms computed ("mae": reconstruction only; the local views are then checked but not used).
        """
        cfg = self.config
        v_cfg, a_cfg = cfg.video_config, cfg.audio_config
        local_video = _as_views(local_pixel_values, "local_pixel_values")
        local_audio = _as_views(local_input_values, "local_input_values")
        _check_same_batch(pixel_values=pixel_values, input_values=input_values,
                          **{f"local_pixel_values[{i}]": v for i, v in enumerate(local_video)},
                          **{f"local_input_values[{i}]": a for i, a in enumerate(local_audio)})
        for index, view in enumerate(local_video):
            _check_video_input(view, v_cfg, f"local_pixel_values[{index}]")
        for index, view in enumerate(local_audio):
            _check_audio_input(view, a_cfg, f"local_input_values[{index}]")
        tau_v, tau_a = teacher_temperatures or (cfg.video_teacher_temperature, cfg.audio_teacher_temperature)

        # Masked reconstruction (the student encoders on the masked global views)
        v_latent = self.video_student(pixel_values, mask_ratio=cfg.video_mask_ratio, noise=video_noise)
        a_latent = self.audio_student(input_values, mask_ratio=cfg.audio_mask_ratio, noise=audio_noise)
        v_pred = self.video_decoder(v_latent.last_hidden_state, v_latent.ids_restore)
        a_pred = self.audio_decoder(a_latent.last_hidden_state, a_latent.ids_restore)
        v_rec = masked_reconstruction_loss(
            v_pred, patchify_video(pixel_values, v_cfg.tubelet_size, v_cfg.patch_size), v_latent.mask,
            cfg.norm_pix_loss,
        )
        a_rec = masked_reconstruction_loss(
            a_pred, patchify_audio(input_values, a_cfg.frequency_patch_size, a_cfg.time_patch_size),
            a_latent.mask, cfg.norm_pix_loss,
        )
        reconstruction = (v_rec + a_rec) / 2
        objective = cfg.objective
        if objective == "mae":
            # The audio-visual MAE baseline (Table 1): no heads, teachers, local-view passes or MMD.
            return XKDForPretrainingOutput(
                loss=reconstruction, reconstruction_loss=reconstruction, video_reconstruction_loss=v_rec,
                audio_reconstruction_loss=a_rec, video_mask=v_latent.mask, audio_mask=a_latent.mask,
                video_reconstruction=v_pred, audio_reconstruction=a_pred,
            )

        # Students: the global feature is the masked latent's pooled visible tokens (released), then local views
        v_local = self.video_student(torch.cat(local_video, dim=0)).pooler_output
        a_local = self.audio_student(torch.cat(local_audio, dim=0)).pooler_output
        v_student = self.video_student_head(torch.cat([v_latent.pooler_output, v_local], dim=0))
        a_student = self.audio_student_head(torch.cat([a_latent.pooler_output, a_local], dim=0))

        # Teachers (no gradient), refined by the cross-modal attention
        v_feat, a_feat = self._teacher_features(
            self._teacher_view(pixel_values, local_video), self._teacher_view(input_values, local_audio)
        )
        with torch.no_grad():
            v_teacher = self.video_teacher_head(v_feat)
            a_teacher = self.audio_teacher_head(a_feat)

        kd_v2a, ent_v, kl_v2a, mean_v = self.video_to_audio_distillation(
            a_student, v_teacher, tau_v, cfg.student_temperature
        )
        kd_a2v, ent_a, kl_a2v, mean_a = self.audio_to_video_distillation(
            v_student, a_teacher, tau_a, cfg.student_temperature
        )
        distillation = (kd_v2a + kd_a2v) / 2

        # Collapse monitors, with the centers this loss used (before their update)
        batch_ent_v, spread_v = teacher_collapse_statistics(v_teacher, self.video_teacher_center, tau_v)
        batch_ent_a, spread_a = teacher_collapse_statistics(a_teacher, self.audio_teacher_center, tau_a)

        if objective == "xkd":
            student_alignment = gaussian_mmd(v_student, a_student, cfg.mmd_gammas)
            with torch.no_grad():
                teacher_alignment = gaussian_mmd(v_teacher, a_teacher, cfg.mmd_gammas)
            alignment = (student_alignment + teacher_alignment) / 2
            loss = combine_losses(reconstruction, alignment, distillation, cfg)
        else:  # "mae+kd": the "w/o domain alignment" row, no MMD at all
            student_alignment = teacher_alignment = alignment = None
            w_r, w_d = cfg.reconstruction_loss_weight, cfg.distillation_loss_weight
            loss = w_r * reconstruction + w_d * distillation
            if cfg.normalize_loss_weights:
                loss = loss / (w_r + w_d)

        if self.training:
            self.video_to_audio_distillation.update_center(mean_v)
            self.audio_to_video_distillation.update_center(mean_a)

        return XKDForPretrainingOutput(
            loss=loss,
            reconstruction_loss=reconstruction,
            video_reconstruction_loss=v_rec,
            audio_reconstruction_loss=a_rec,
            distillation_loss=distillation,
            video_to_audio_distillation_loss=kd_v2a,
            audio_to_video_distillation_loss=kd_a2v,
            alignment_loss=alignment,
            student_alignment_loss=student_alignment,
            teacher_alignment_loss=teacher_alignment,
            video_teacher_entropy=ent_v,
            audio_teacher_entropy=ent_a,
            video_teacher_student_kl=kl_v2a,
            audio_teacher_student_kl=kl_a2v,
            video_mask=v_latent.mask,
            audio_mask=a_latent.mask,
            video_reconstruction=v_pred,
            audio_reconstruction=a_pred,
            video_teacher_batch_entropy=batch_ent_v,
            audio_teacher_batch_entropy=batch_ent_a,
            video_teacher_spread=spread_v,
            audio_teacher_spread=spread_a,
        )

    def export_teachers(self, state_dict: dict[str, torch.Tensor] | None = None) -> XKDModel:
        """A standalone `XKDModel` holding copies of the teacher towers (what the paper evaluates, Sec. 4.6).

        The teachers are `video_model` / `audio_model` here, named exactly as in `XKDModel`, so the export keeps
        those two prefixes of the state dict and loads them strictly (a missing or extra key stops with its name).
        `state_dict`: a full state dict of this model to read instead of the live one, e.g. the one
        `accelerator.get_state_dict` gathers from sharded (FSDP / DeepSpeed) parameters; it is not modified.
        The converter (`convert_original`) and the pretraining trainer both export through this method.
        """
        state = self.state_dict() if state_dict is None else state_dict
        # Its own copy of the config: saving the export must not add `AutoModel` to this model's config, and the
        # exported folder must not name `XKDForPretraining` (whose weights it does not hold) for AutoModelForPreTraining.
        config = copy.deepcopy(self.config)
        if isinstance(getattr(config, "auto_map", None), dict):
            config.auto_map = {k: v for k, v in config.auto_map.items() if k != "AutoModelForPreTraining"}
        model = XKDModel(config)
        model.load_state_dict({k: v for k, v in state.items() if k.startswith(("video_model.", "audio_model."))})
        return model
