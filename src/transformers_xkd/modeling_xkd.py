"""PyTorch XKD: cross-modal knowledge distillation with domain alignment (Sarkar & Etemad, AAAI 2024).

Everything of the model is in this file, transformers-style: the tubelet/patch embeddings, the pre-norm ViT block,
the two encoders, the classification heads, and the pretraining model with its losses (each a small named
function whose docstring gives the equation number of the paper).

Tensor layouts (as VideoMAE and AST take them):
    pixel_values: (batch, frames, channels, height, width), ImageNet-normalised RGB.
    input_values: (batch, time, mel_bins), normalised log-mel.
"""


import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ImageClassifierOutput, SequenceClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import ModelOutput, can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_xkd import XKDAudioConfig, XKDConfig, XKDVideoConfig

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
    "XKDForPretrainingOutput",
    "random_masking",
    "patchify_video",
    "patchify_audio",
    "masked_reconstruction_loss",
    "cross_modal_attention_weights",
    "refine_features",
    "gaussian_mmd",
    "cross_modal_distillation_loss",
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


def _check_video_input(pixel_values: torch.Tensor, config: XKDVideoConfig, name: str = "pixel_values") -> None:
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(pixel_values).__name__}.")
    if pixel_values.ndim != 5:
        raise ValueError(
            f"`{name}` must have shape (batch, frames, channels, height, width), got {tuple(pixel_values.shape)}."
        )
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
    len_keep = int(round(length * (1 - mask_ratio)))
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
        grid.float(),
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
        grid.float(), scale_factor=(1.0, (t1 + 0.1) / t0), mode="bicubic", align_corners=False
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

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        b, t, c, h, w = pixel_values.shape
        pt, p = self.config.tubelet_size, self.config.patch_size
        grid = (t // pt, h // p, w // p)
        # (B, nt, pt, C, nh, p, nw, p) -> (B, nt, nh, nw, C, pt, p, p): the conv weight's (c, pt, ph, pw) order
        x = pixel_values.reshape(b, grid[0], pt, c, grid[1], p, grid[2], p).permute(0, 1, 4, 6, 3, 2, 5, 7)
        x = x.reshape(b, grid[0] * grid[1] * grid[2], c * pt * p * p)
        weight = self.projection.weight.reshape(self.projection.out_channels, -1)
        return F.linear(x, weight, self.projection.bias), grid

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

    def forward(self, input_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        fp, tp = self.config.frequency_patch_size, self.config.time_patch_size
        grid = (input_values.shape[2] // fp, input_values.shape[1] // tp)
        # patchify_audio's per-patch order (fp, tp) is the Conv2d weight's (1, fp, tp) order
        x = patchify_audio(input_values, fp, tp)
        weight = self.projection.weight.reshape(self.projection.out_channels, -1)
        return F.linear(x, weight, self.projection.bias), grid

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
        tokens, grid = self.patch_embeddings(inputs)
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
        return logits.float().softmax(dim=-1)


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
        elif isinstance(module, XKDForPretraining):
            init.zeros_(module.video_teacher_center)
            init.zeros_(module.audio_teacher_center)


# When a single tower (or its classifier) loads from an XKDModel / XKDForPretraining folder, the other tower, the
# students, heads, decoders and centers are expected leftovers, not a silent partial load of this tower.
_NOT_THE_VIDEO_TOWER = [r"^audio_model\.", r"^audio_student\.", r"^video_student\.", r"_head\.", r"_decoder\.",
                        r"_teacher_center$"]
_NOT_THE_AUDIO_TOWER = [r"^video_model\.", r"^video_student\.", r"^audio_student\.", r"_head\.", r"_decoder\.",
                        r"_teacher_center$"]


class XKDVideoPreTrainedModel(_XKDInitMixin, PreTrainedModel):
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


class XKDAudioPreTrainedModel(_XKDInitMixin, PreTrainedModel):
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


def _encode(model, inputs, mask_ratio, noise, interpolate_pos_encoding, output_cls_attention, kwargs):
    hidden_states, mask, ids_restore = model.embeddings(
        inputs, mask_ratio=mask_ratio, noise=noise, interpolate_pos_encoding=interpolate_pos_encoding
    )
    hidden_states, cls_attention = model.encoder(hidden_states, output_cls_attention=output_cls_attention, **kwargs)
    hidden_states = model.layernorm(hidden_states)
    return XKDModelOutput(
        last_hidden_state=hidden_states,
        pooler_output=hidden_states[:, 1:].mean(dim=1),
        mask=mask,
        ids_restore=ids_restore,
        cls_attention=None if cls_attention is None else cls_attention[..., 1:],
    )


class XKDVideoModel(XKDVideoPreTrainedModel):
    """The XKD video encoder: tubelet embedding, CLS, learned positions, pre-norm blocks, final LayerNorm."""

    def __init__(self, config: XKDVideoConfig):
        super().__init__(config)
        self.embeddings = XKDVideoEmbeddings(config)
        self.encoder = XKDEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.patch_embeddings

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = True,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
        output_cls_attention: bool = False,
        **kwargs,
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
            output_hidden_states, output_attentions: as everywhere in transformers.

        Returns: `XKDModelOutput` with `pooler_output` `(batch, hidden)` = the paper's video feature.
        """
        _check_video_input(pixel_values, self.config)
        return _encode(self, pixel_values, mask_ratio, noise, interpolate_pos_encoding, output_cls_attention, kwargs)


class XKDAudioModel(XKDAudioPreTrainedModel):
    """The XKD audio encoder over log-mel spectrograms (frequency-major patch tokens)."""

    def __init__(self, config: XKDAudioConfig):
        super().__init__(config)
        self.embeddings = XKDAudioEmbeddings(config)
        self.encoder = XKDEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.patch_embeddings

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_values: torch.Tensor,
        interpolate_pos_encoding: bool = True,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
        output_cls_attention: bool = False,
        **kwargs,
    ) -> XKDModelOutput:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch, time, mel_bins)`): normalised log-mel, 448 x 80 for
                4 s. Other lengths (a multiple of the time patch) interpolate the positions along time.
            interpolate_pos_encoding, mask_ratio, noise, output_cls_attention: as in `XKDVideoModel.forward`.

        Returns: `XKDModelOutput` with `pooler_output` `(batch, hidden)` = the paper's audio feature.
        """
        _check_audio_input(input_values, self.config)
        return _encode(self, input_values, mask_ratio, noise, interpolate_pos_encoding, output_cls_attention, kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Classification heads (thin)
# ----------------------------------------------------------------------------------------------------------------


class XKDForVideoClassification(XKDVideoPreTrainedModel):
    """Video encoder + dropout + linear on the pooled feature (the released fine-tuning `Classifier`)."""

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
        interpolate_pos_encoding: bool = True, **kwargs,
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
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class XKDForAudioClassification(XKDAudioPreTrainedModel):
    """Audio encoder + linear on the pooled feature. Multi-label (BCE) with
    `problem_type="multi_label_classification"` (FSD50K)."""

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
        interpolate_pos_encoding: bool = True, **kwargs,
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
            # The released decoder never sees another size (its interpolation formula is wrong, spec §8.9).
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
    """
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((prediction.float() - target.float()) ** 2).mean(dim=-1)
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
    v = video_attention.float()
    a = audio_attention.float()
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

    Args:
        x: `(n, d)`, y: `(m, d)`; gammas: the kernel bandwidths.
    """

    def kernel(a, b):
        a_sq = a.pow(2).sum(dim=-1, keepdim=True)
        b_sq = b.pow(2).sum(dim=-1, keepdim=True)
        distances = torch.addmm(b_sq.transpose(0, 1), a, b.transpose(0, 1), alpha=-2).add_(a_sq).clamp_min_(1e-30)
        return sum(torch.exp(distances * -gamma) for gamma in gammas)

    x, y = x.float(), y.float()
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
    """
    batch = teacher_logits.shape[0]
    if student_logits.shape[0] % batch:
        raise ValueError(
            f"student logits ({student_logits.shape[0]} rows) are not a whole number of views of batch {batch}."
        )
    views = student_logits.shape[0] // batch
    teacher = teacher_logits.detach().float()
    q = F.softmax((teacher - center) / teacher_temperature, dim=-1).repeat(views, 1)
    log_p = F.log_softmax(student_logits.float() / student_temperature, dim=-1)
    loss = -(q * log_p).sum(dim=-1).mean()
    with torch.no_grad():
        log_q = torch.log(q.clamp_min(1e-30))
        entropy = -(q * log_q).sum(dim=-1).mean()
        kl = (q * (log_q - log_p)).sum(dim=-1).mean()
    return loss, entropy, kl, teacher.mean(dim=0, keepdim=True)


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


class XKDPreTrainedModel(_XKDInitMixin, PreTrainedModel):
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


class XKDModel(XKDPreTrainedModel):
    """Both encoders. In a converted release these are the EMA teachers, which the paper evaluates."""

    def __init__(self, config: XKDConfig):
        super().__init__(config)
        self.video_model = XKDVideoModel(config.video_config)
        self.audio_model = XKDAudioModel(config.audio_config)
        self.post_init()

    def get_video_features(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        """`(B, T, 3, H, W)` -> `(B, hidden)`: mean of the normalised patch tokens."""
        return self.video_model(pixel_values, **kwargs).pooler_output

    def get_audio_features(self, input_values: torch.Tensor, **kwargs) -> torch.Tensor:
        """`(B, time, mel)` -> `(B, hidden)`."""
        return self.audio_model(input_values, **kwargs).pooler_output

    def get_audio_visual_features(self, pixel_values: torch.Tensor, input_values: torch.Tensor) -> torch.Tensor:
        """Late fusion (Kinetics-Sound protocol): each feature L2-normalised, then concatenated, `(B, 2 * hidden)`."""
        video = F.normalize(self.get_video_features(pixel_values), dim=-1)
        audio = F.normalize(self.get_audio_features(input_values), dim=-1)
        return torch.cat([video, audio], dim=-1)

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor | None = None, input_values: torch.Tensor | None = None, **kwargs):
        """Runs whichever towers get an input; returns `{"video": XKDModelOutput, "audio": XKDModelOutput}`."""
        if pixel_values is None and input_values is None:
            raise ValueError("XKDModel needs `pixel_values`, `input_values` or both.")
        return XKDTowersOutput(
            video=None if pixel_values is None else self.video_model(pixel_values, **kwargs),
            audio=None if input_values is None else self.audio_model(input_values, **kwargs),
        )


@dataclass
class XKDTowersOutput(ModelOutput):
    """Output of `XKDModel.forward`: one `XKDModelOutput` per tower that received an input."""

    video: XKDModelOutput | None = None
    audio: XKDModelOutput | None = None


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
        self.register_buffer("video_teacher_center", torch.zeros(1, config.projector_output_size))
        self.register_buffer("audio_teacher_center", torch.zeros(1, config.projector_output_size))
        self.post_init()
        self.copy_students_to_teachers()

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
        seen = set()
        for module in (self.video_student, self.video_student_head, self.audio_student, self.audio_student_head):
            for p in module.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def train(self, mode: bool = True):
        super().train(mode)
        # Teachers always run in eval mode (no dropout), as a frozen EMA network should.
        self.video_model.eval()
        self.audio_model.eval()
        return self

    # --- saving: shared blocks ---------------------------------------------------------------------------------

    def state_dict(self, *args, **kwargs):
        # MAS/MATS share one block stack between two towers. Saving writes every tower in full (as the released
        # backbone files do) so that each tower loads on its own; the duplicates are cloned because safetensors
        # refuses aliased tensors. Loading writes the same values into the shared module twice.
        state = super().state_dict(*args, **kwargs)
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

    @torch.no_grad()
    def _update_center(self, center: torch.Tensor, batch_mean: torch.Tensor) -> None:
        """center <- m center + (1 - m) batch mean; the batch mean is averaged over processes when distributed."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            batch_mean = batch_mean.clone()
            torch.distributed.all_reduce(batch_mean)
            batch_mean /= torch.distributed.get_world_size()
        m = self.config.center_momentum
        center.mul_(m).add_(batch_mean.to(center.dtype), alpha=1 - m)

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

        kd_v2a, ent_v, kl_v2a, mean_v = cross_modal_distillation_loss(
            a_student, v_teacher, self.video_teacher_center, tau_v, cfg.student_temperature
        )
        kd_a2v, ent_a, kl_a2v, mean_a = cross_modal_distillation_loss(
            v_student, a_teacher, self.audio_teacher_center, tau_a, cfg.student_temperature
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
            self._update_center(self.video_teacher_center, mean_v)
            self._update_center(self.audio_teacher_center, mean_a)

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

    def export_teachers(self) -> XKDModel:
        """A standalone `XKDModel` holding copies of the teacher towers (what the paper evaluates)."""
        model = XKDModel(self.config)
        model.video_model.load_state_dict(self.video_model.state_dict())
        model.audio_model.load_state_dict(self.audio_model.state_dict())
        return model
