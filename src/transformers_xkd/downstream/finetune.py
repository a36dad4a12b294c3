"""Full fine-tuning of XKD encoders with the transformers `Trainer` (released `codes/eval`, paper Tables S6/S7).

* :func:`load_classifier`: `XKDForVideoClassification` / `XKDForAudioClassification` from any pretrained folder
  (pretraining, `XKDModel`, tower or classifier), with a fresh head for the new labels.
* :func:`layer_decay_parameter_groups`: BEiT's layer-wise learning-rate decay. Layer ids: embeddings (CLS, position
  embeddings, patch projection) are layer 0, block ``i`` is layer ``i + 1``, everything else (final norm,
  classifier) is the top layer ``L + 1``; a parameter of layer ``l`` gets ``lr * decay ** (L + 1 - l)``. Biases,
  norm weights, CLS and position embeddings get no weight decay.
* :class:`XKDTrainer`: a `Trainer` whose ``create_optimizer`` uses those groups (AdamW) and whose
  ``compute_loss`` applies the batched augmentation (kornia/torch, on the whole batch, not per-frame PIL) and the
  soft-target loss that mixup/cutmix/label smoothing need.
* Batch augmentation: :class:`VideoRandAugment` (RandAugment-like, same op on every frame of a clip, plus random
  erasing), :class:`AudioSpecAugment` (volume jitter, time warp, frequency and time masks), :class:`MixupCutmix`.
* :func:`multi_view_predict`: multi-clip (uniform) x multi-crop (left/centre/right) testing, softmax averaged.
* Metrics are local (:mod:`.metrics`): ``evaluate.load`` needs the network.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..log_mel_xkd import KINETICS_SOUND_STD
from .datasets import media_paths
from .features import ClipProtocol, sample_clips
from .metrics import classification_metrics

__all__ = [
    "FINETUNE_RECIPES",
    "parameter_layer_id",
    "layer_decay_parameter_groups",
    "MixupCutmix",
    "VideoRandAugment",
    "AudioSpecAugment",
    "BatchAugment",
    "XKDTrainer",
    "ClipDataset",
    "load_classifier",
    "make_compute_metrics",
    "multi_view_predict",
    "soft_target_loss",
    "finetune",
]

# Released fine-tuning recipes (`codes/eval` configs). mixup/cutmix are Beta alphas; epochs/warmup in epochs.
FINETUNE_RECIPES: dict[str, dict[str, Any]] = {
    "ucf101": dict(modality="video", lr=5e-4, layer_decay=0.45, weight_decay=0.05, warmup_epochs=5, epochs=100,
                   mixup=0.6, cutmix=0.5, label_smoothing=0.1, rand_augment=(4, 7), random_erasing=0.25,
                   batch_size=24, test_clips=3, test_crops=3),
    "hmdb51": dict(modality="video", lr=1e-4, layer_decay=0.75, weight_decay=0.05, warmup_epochs=20, epochs=100,
                   mixup=1.0, cutmix=1.0, label_smoothing=0.1, rand_augment=(4, 7), random_erasing=0.25,
                   batch_size=24, test_clips=3, test_crops=3),
    "kinetics400": dict(modality="video", lr=5e-4, layer_decay=0.45, weight_decay=0.05, warmup_epochs=5, epochs=100,
                        mixup=0.6, cutmix=0.5, label_smoothing=0.1, rand_augment=(4, 7), random_erasing=0.25,
                        batch_size=24, test_clips=3, test_crops=3),
    # ESC-50's released config lacks mixup/label-smoothing keys that the released engine reads: none are applied.
    "esc50": dict(modality="audio", lr=1e-4, layer_decay=0.65, weight_decay=0.005, warmup_epochs=10, epochs=100,
                  mixup=0.0, cutmix=0.0, label_smoothing=0.0, volume_jitter=0.2, time_warp=20, freq_masks=2,
                  freq_mask_param=10, time_masks=2, time_mask_param=20, batch_size=64, test_clips=3, test_crops=1),
    "fsd50k": dict(modality="audio", lr=1e-4, layer_decay=None, weight_decay=1e-5, warmup_epochs=0, epochs=30,
                   scheduler="constant", classifier_dropout=0.3, multi_label=True, mixup=0.0, cutmix=0.0,
                   label_smoothing=0.0, volume_jitter=0.2, time_warp=20, freq_masks=2, freq_mask_param=10,
                   time_masks=2, time_mask_param=20, batch_size=64, test_clips=8, test_crops=1),
}


# --------------------------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay
# --------------------------------------------------------------------------------------------------------------
_BLOCK = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")
_NO_WEIGHT_DECAY = ("cls_token", "position_embeddings")


def parameter_layer_id(name: str, num_layers: int) -> int:
    """BEiT layer id of a parameter name: embeddings 0, ``encoder.layer.i`` -> i + 1, anything else L + 1."""
    bare = re.sub(r"^(video_model|audio_model)\.", "", name)
    if bare.startswith("embeddings."):
        return 0
    m = _BLOCK.search(bare)
    if m:
        return int(m.group(1)) + 1
    return num_layers + 1


def layer_decay_parameter_groups(
    model: nn.Module, lr: float, weight_decay: float, layer_decay: float | None, num_layers: int | None = None
) -> list[dict]:
    """Optimizer parameter groups with per-layer learning rates.

    Args:
        model: an XKD classifier (or encoder).
        lr: the top layer's learning rate.
        weight_decay: applied to matrices only (not to 1-D tensors: biases, norms; not to CLS / positions).
        layer_decay: the per-layer factor; ``None`` or 1 gives every layer ``lr``.
        num_layers: transformer blocks (defaults to ``model.config.num_hidden_layers``).

    Returns:
        list of ``{"params", "lr", "lr_scale", "weight_decay", "layer_id", "name"}`` dicts (empty groups dropped).
    """
    num_layers = num_layers if num_layers is not None else model.config.num_hidden_layers
    decay = 1.0 if layer_decay is None else float(layer_decay)
    if not 0 < decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = parameter_layer_id(name, num_layers)
        no_wd = p.ndim == 1 or name.endswith(".bias") or any(k in name for k in _NO_WEIGHT_DECAY)
        key = (layer, no_wd)
        if key not in groups:
            scale = decay ** (num_layers + 1 - layer)
            groups[key] = {
                "params": [], "lr": lr * scale, "lr_scale": scale, "weight_decay": 0.0 if no_wd else weight_decay,
                "layer_id": layer, "name": f"layer_{layer}_{'no_decay' if no_wd else 'decay'}",
            }
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


# --------------------------------------------------------------------------------------------------------------
# Batched augmentation
# --------------------------------------------------------------------------------------------------------------
def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """Cross-entropy with soft `(B, C)` targets (mixup/cutmix/label smoothing), or BCE for multi-label."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


# Why not kornia's (0.9.0, checked by reading its source and running it): the released recipe is timm's `Mixup`
# (mixup/cutmix alphas, label smoothing 0.1, switch prob 0.5, one lambda per batch, cutmix box clipped at the
# edges with the lambda corrected to the pasted area) and `rand-m7-n4-mstd0.5-inc1` on every frame of a clip.
# * `RandomMixUpV2` draws lambda from Uniform(lambda_val), not Beta(alpha, alpha) (UCF101/K400 use alpha 0.6), one
#   lambda per sample, pairs with a random permutation, returns (label, partner, lambda) without label smoothing,
#   and refuses (B, C, T, H, W) input.
# * `RandomCutMixV2` keeps every box inside the image (never clipped), draws lambda and the on/off gate per sample,
#   and has no mixup/cutmix switch or smoothing.
# * `kornia.augmentation.auto.RandAugment` picks its n ops once per call for the whole batch (not per clip), uses a
#   fixed magnitude (no mstd), maps colour/contrast/brightness/sharpness to one side of 1 (factor 1.36 at its
#   m = 21, timm's m = 7, where timm's increasing ops give 1 +/- 0.63), and `VideoSequential(same_on_frame=True)`
#   refuses it, so the same op on every frame of a clip cannot be had. So these two classes stay; `VideoRandAugment` is RandAugment-like
#   (per-clip op choice, frame-consistent), not a bit-exact copy of timm's.
class MixupCutmix:
    """Batched mixup / cutmix with label smoothing (timm's scheme: partner = the batch reversed).

    Args:
        num_classes: width of the soft targets.
        mixup_alpha / cutmix_alpha: Beta parameters; 0 disables that one.
        prob: chance a batch is mixed at all; switch_prob: chance of cutmix when both are on.
        label_smoothing: ``eps``: targets ``(1 - eps) * onehot + eps / C``.
        multi_label: labels are `(B, C)` multi-hot already (no smoothing of the positives' mass).

    ``__call__(x, labels)``: ``x`` `(B, T, C, H, W)` video (the box spans H, W on every frame) or `(B, time, mel)`
    audio (the box spans time x mel); returns ``(x_mixed, targets (B, num_classes))``.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.0, multi_label: bool = False):
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = prob, switch_prob
        self.label_smoothing = float(label_smoothing)
        self.multi_label = multi_label

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return labels.float()
        onehot = F.one_hot(labels.long(), self.num_classes).float()
        return onehot * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.targets(labels).to(x.device)
        use_mix, use_cut = self.mixup_alpha > 0, self.cutmix_alpha > 0
        if not (use_mix or use_cut) or float(torch.rand(())) >= self.prob or x.shape[0] < 2:
            return x, y
        cut = use_cut and (not use_mix or float(torch.rand(())) < self.switch_prob)
        alpha = self.cutmix_alpha if cut else self.mixup_alpha
        lam = float(np.random.beta(alpha, alpha))
        partner = x.flip(0)
        if cut:
            h, w = x.shape[-2], x.shape[-1]
            ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
            cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            x = x.clone()
            x[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted (the box is clipped at edges)
        else:
            x = lam * x + (1 - lam) * partner
        return x, lam * y + (1 - lam) * y.flip(0)


class VideoRandAugment(nn.Module):
    """RandAugment-like batched video augmentation with kornia: each clip draws its own ops, every frame alike.

    Input/output `(B, T, 3, H, W)` ImageNet-normalised. Steps: de-normalise; random resized crop (``crop_scale``) +
    flip; each of the photometric/geometric ops with probability ``num_ops / len(ops)`` (about ``num_ops`` per
    clip, like RandAugment's n) at strength ``magnitude / 10``; random erasing with ``random_erasing``;
    re-normalise.
    """

    def __init__(self, num_ops: int = 4, magnitude: int = 7, random_erasing: float = 0.25,
                 crop_scale: tuple[float, float] = (0.25, 1.0), mean=tuple(IMAGENET_DEFAULT_MEAN),
                 std=tuple(IMAGENET_DEFAULT_STD)):
        super().__init__()
        import kornia.augmentation as K

        self.num_ops, self.magnitude, self.crop_scale = num_ops, magnitude, crop_scale
        self.random_erasing = random_erasing
        self.register_buffer("mean", torch.tensor(mean).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 1, 3, 1, 1), persistent=False)
        m = magnitude / 10.0
        ops = [
            K.RandomAffine(degrees=30 * m, p=1.0),  # rotate
            K.RandomAffine(degrees=0.0, shear=17 * m, p=1.0),  # shear (degrees; 0.3 rad at m = 10)
            K.RandomAffine(degrees=0.0, translate=(0.45 * m, 0.45 * m), p=1.0),
            K.ColorJiggle(brightness=0.9 * m, p=1.0),
            K.ColorJiggle(contrast=0.9 * m, p=1.0),
            K.ColorJiggle(saturation=0.9 * m, p=1.0),
            K.RandomSharpness(sharpness=0.9 * m, p=1.0),
            K.RandomPosterize(bits=(max(1, 8 - int(round(4 * m))), 8), p=1.0),
            K.RandomSolarize(thresholds=0.5 * m, additions=0.0, p=1.0),
            K.RandomEqualize(p=1.0),
            K.RandomAutoContrast(p=1.0),
        ]
        p = min(1.0, num_ops / len(ops))
        for op in ops:
            op.p = p
        self._ops = ops
        self._K = K
        self._pipelines: dict[tuple[int, int], Any] = {}

    def _pipeline(self, h: int, w: int):
        # built once per frame size: constructing the kornia containers costs more than running them on a batch
        if (h, w) not in self._pipelines:
            K = self._K
            self._pipelines[(h, w)] = K.VideoSequential(
                K.RandomResizedCrop((h, w), scale=self.crop_scale), K.RandomHorizontalFlip(), *self._ops,
                K.RandomErasing(p=self.random_erasing), data_format="BTCHW", same_on_frame=True,
            )
        return self._pipelines[(h, w)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pipeline = self._pipeline(x.shape[-2], x.shape[-1])
        img = (x * self.std + self.mean).clamp(0, 1)
        img = pipeline(img).clamp(0, 1)
        return (img - self.mean) / self.std


class AudioSpecAugment(nn.Module):
    """Batched SpecAugment on normalised log-mel `(B, time, mel)`: volume jitter, time warp, freq/time masks.

    Volume jitter on a normalised log-mel: a waveform gain ``g`` multiplies the power by ``g^2``, which adds
    ``2 log g`` to the log-mel (the +1e-7 floor aside), i.e. ``2 log g / std`` after normalisation; so it is done
    here on the batch without going back to the waveform. Each sample draws its own parameters.
    """

    def __init__(self, volume_jitter: float = 0.2, time_warp: int = 20, freq_masks: int = 2,
                 freq_mask_param: int = 10, time_masks: int = 2, time_mask_param: int = 20, std: float = KINETICS_SOUND_STD):
        super().__init__()
        self.volume_jitter, self.time_warp = volume_jitter, time_warp
        self.freq_masks, self.freq_mask_param = freq_masks, freq_mask_param
        self.time_masks, self.time_mask_param = time_masks, time_mask_param
        self.std = std

    def _warp(self, x: torch.Tensor) -> torch.Tensor:
        b, t, f = x.shape
        w = self.time_warp
        if w <= 0 or t <= 2 * w + 1:
            return x
        centre = torch.randint(w, t - w, (b,), device=x.device).float()
        shift = torch.randint(-w, w + 1, (b,), device=x.device).float()
        dest = (centre + shift).clamp(1, t - 2)
        # output time o maps to source time s: [0, dest) stretches onto [0, centre), [dest, t) onto [centre, t)
        o = torch.arange(t, device=x.device).float()[None]
        left = o * centre[:, None] / dest[:, None]
        right = centre[:, None] + (o - dest[:, None]) * (t - 1 - centre[:, None]) / (t - 1 - dest[:, None])
        src = torch.where(o < dest[:, None], left, right)  # (B, T)
        gy = (src / (t - 1)) * 2 - 1
        gx = torch.linspace(-1, 1, f, device=x.device)
        grid = torch.stack([gx[None, None].expand(b, t, f), gy[:, :, None].expand(b, t, f)], dim=-1)
        return F.grid_sample(x[:, None], grid, mode="bilinear", align_corners=True)[:, 0]

    def _mask(self, x: torch.Tensor, dim: int, count: int, param: int) -> torch.Tensor:
        b, size = x.shape[0], x.shape[dim]
        pos = torch.arange(size, device=x.device)[None]
        for _ in range(count):
            width = torch.randint(0, param + 1, (b, 1), device=x.device)
            start = (torch.rand(b, 1, device=x.device) * (size - width).clamp(min=1)).long()
            m = (pos >= start) & (pos < start + width)  # (B, size)
            m = m[:, :, None] if dim == 1 else m[:, None, :]
            x = x.masked_fill(m, 0.0)  # 0 = the dataset mean after normalisation
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.volume_jitter > 0:
            g = torch.empty(x.shape[0], 1, 1, device=x.device).uniform_(1 - self.volume_jitter, 1 + self.volume_jitter)
            x = x + 2 * torch.log(g) / self.std
        x = self._warp(x)
        x = self._mask(x, 2, self.freq_masks, self.freq_mask_param)
        return self._mask(x, 1, self.time_masks, self.time_mask_param)


class BatchAugment:
    """Modality augmentation then mixup/cutmix: ``(x, labels) -> (x, soft targets (B, C))``."""

    def __init__(self, augment: nn.Module | None, mix: MixupCutmix):
        self.augment, self.mix = augment, mix

    def __call__(self, x: torch.Tensor, labels: torch.Tensor):
        if self.augment is not None:
            self.augment.to(x.device)
            x = self.augment(x)
        return self.mix(x, labels)


# --------------------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------------------
class XKDTrainer(Trainer):
    """`Trainer` with layer-wise LR decay (``layer_decay``) and batched augmentation (``batch_augment``).

    Args (beyond `Trainer`'s):
        layer_decay (`float`, *optional*): BEiT decay factor; ``None`` keeps one learning rate.
        batch_augment (:class:`BatchAugment`, *optional*): applied to training batches inside ``compute_loss``.
        multi_label (`bool`): BCE on (mixed) multi-hot targets.
    """

    def __init__(self, *args, layer_decay: float | None = None, batch_augment: BatchAugment | None = None,
                 multi_label: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.layer_decay = layer_decay
        self.batch_augment = batch_augment
        self.multi_label = multi_label
        if batch_augment is not None:
            # our loss is a batch mean; without this the Trainer would skip its gradient-accumulation scaling
            self.model_accepts_loss_kwargs = False

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is None and self.layer_decay is not None:
            groups = layer_decay_parameter_groups(opt_model, self.args.learning_rate, self.args.weight_decay,
                                                  self.layer_decay)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            optimizer_kwargs = {k: v for k, v in optimizer_kwargs.items() if k not in ("params", "model")}
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)  # per-group "lr" overrides the default
            return self.optimizer
        return super().create_optimizer(model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.batch_augment is None or not model.training or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        key = "pixel_values" if "pixel_values" in inputs else "input_values"
        inputs[key], targets = self.batch_augment(inputs[key], labels)
        outputs = model(**inputs)
        loss = soft_target_loss(outputs.logits, targets, self.multi_label)
        return (loss, outputs) if return_outputs else loss


class ClipDataset(torch.utils.data.Dataset):
    """One clip per video per access, for the Trainer.

    Training access draws a random clip start (augmentation happens later, on the batch); evaluation takes the
    first clip (the processors' single-clip rule). Items: ``{"pixel_values": (T, 3, H, W)}`` or
    ``{"input_values": (time, mel)}`` plus ``"labels"`` (int, or a float multi-hot vector).
    """

    def __init__(self, dataset, modality: str, video_processor=None, feature_extractor=None, train: bool = True,
                 seed: int = 0):
        if modality not in ("video", "audio"):
            raise ValueError(f"ClipDataset modality must be 'video' or 'audio', got {modality!r}")
        self.paths = media_paths(dataset)
        self.labels = list(dataset["label"])
        self.modality, self.train, self.seed = modality, train, seed
        self.vp, self.fe = video_processor, feature_extractor
        self.protocol = ClipProtocol(name="finetune", modality=modality, train_clips=1, test_clips=1,
                                     train_augment=False)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        # drawn from torch's generator: the Trainer seeds it, and dataloader workers get distinct streams
        rng = np.random.default_rng(int(torch.randint(2**31 - 1, ()))) if self.train else None
        pv, iv = sample_clips(self.paths[i], self.protocol, self.train, self.vp, self.fe, rng)
        label = self.labels[i]
        label = torch.tensor(label, dtype=torch.float32) if isinstance(label, (list, tuple, np.ndarray)) else int(label)
        if self.modality == "video":
            return {"pixel_values": pv[0], "labels": label}
        return {"input_values": iv[0], "labels": label}


def load_classifier(pretrained, modality: str, class_names: list[str], multi_label: bool = False,
                    **config_overrides):
    """`XKDFor{Video,Audio}Classification` with the encoder of ``pretrained`` and a new head for ``class_names``.

    ``pretrained`` may be any XKD folder (pretraining folders give their teachers) or a Hub id.
    """
    from ..modeling_xkd import XKDForAudioClassification, XKDForVideoClassification

    cls = {"video": XKDForVideoClassification, "audio": XKDForAudioClassification}.get(modality)
    if cls is None:
        raise ValueError(f"modality must be 'video' or 'audio', got {modality!r}")
    kwargs = dict(
        num_labels=len(class_names),
        id2label={i: n for i, n in enumerate(class_names)},
        label2id={n: i for i, n in enumerate(class_names)},
        **config_overrides,
    )
    if multi_label:
        kwargs["problem_type"] = "multi_label_classification"
    # a classifier folder with another label set: keep its encoder, re-initialise the head
    return cls.from_pretrained(pretrained, ignore_mismatched_sizes=True, **kwargs)


def make_compute_metrics(multi_label: bool = False):
    """`compute_metrics` for the Trainer: top-1/top-5 (single-label) or mAP, in percent, computed locally."""

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        return classification_metrics(logits, labels, multi_label)

    return compute_metrics


@torch.inference_mode()
def multi_view_predict(model, dataset, video_processor=None, feature_extractor=None, num_clips: int = 3,
                       num_crops: int = 3, batch_size: int = 8, device: str | torch.device = "cpu",
                       progress: bool = False):
    """Multi-clip, multi-crop testing: average the softmax (sigmoid for multi-label) of every view per video.

    Video: ``num_clips`` uniformly spaced clips; each frame's shorter side is resized to the crop size and
    ``num_crops`` crops are taken along the longer side (1: centre; 3: left/top, centre, right/bottom).
    Audio: ``num_clips`` uniformly spaced windows (``num_crops`` is ignored).

    Returns:
        `(scores (V, C), labels (V,) or (V, C))` as numpy arrays.
    """
    from tqdm.auto import tqdm

    model.eval().to(device)
    multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"
    is_video = model.main_input_name == "pixel_values"
    paths = media_paths(dataset)
    all_scores = []
    for path in tqdm(paths, desc="multi-view test", unit="video", disable=not progress):
        if is_video:
            vp = video_processor
            crop_h, crop_w = vp.crop_size["height"], vp.crop_size["width"]
            raw = vp(path, num_clips=num_clips, size={"shortest_edge": min(crop_h, crop_w)}, do_center_crop=False,
                     do_rescale=False, do_normalize=False)["pixel_values"]
            raw = raw.reshape(-1, *raw.shape[-4:])  # (clips, T, 3, H, W), 0-255
            views = [c for clip in raw for c in _spatial_crops(clip, crop_h, crop_w, num_crops)]
            x = torch.stack(views)
            mean = torch.tensor(vp.image_mean).view(1, 1, 3, 1, 1)
            std = torch.tensor(vp.image_std).view(1, 1, 3, 1, 1)
            x = (x * vp.rescale_factor - mean) / std
        else:
            x = feature_extractor(path, num_clips=num_clips, return_tensors="pt")["input_values"]
            x = x.reshape(-1, *x.shape[-2:])
        probs = []
        for i in range(0, x.shape[0], batch_size):
            logits = model(x[i: i + batch_size].to(device)).logits.float()
            probs.append((torch.sigmoid(logits) if multi_label else logits.softmax(-1)).cpu())
        all_scores.append(torch.cat(probs).mean(0).numpy())
    return np.stack(all_scores), np.asarray(dataset["label"])


def _spatial_crops(clip: torch.Tensor, crop_h: int, crop_w: int, num_crops: int) -> list[torch.Tensor]:
    """`(T, 3, H, W)` -> ``num_crops`` crops `(T, 3, crop_h, crop_w)` spread evenly along the longer side."""
    _, _, h, w = clip.shape
    if h < crop_h or w < crop_w:
        clip = F.pad(clip, (0, max(crop_w - w, 0), 0, max(crop_h - h, 0)))
        h, w = clip.shape[-2:]
    top_c, left_c = (h - crop_h) // 2, (w - crop_w) // 2
    if num_crops == 1:
        return [clip[..., top_c: top_c + crop_h, left_c: left_c + crop_w]]
    out = []
    for k in range(num_crops):
        frac = k / (num_crops - 1)
        if w - crop_w >= h - crop_h:  # landscape: slide horizontally
            top, left = top_c, int(round(frac * (w - crop_w)))
        else:
            top, left = int(round(frac * (h - crop_h))), left_c
        out.append(clip[..., top: top + crop_h, left: left + crop_w])
    return out


@dataclass
class FinetuneOutput:
    trainer: XKDTrainer
    train_loss: list[float]
    initial_eval_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    test_metrics: dict[str, float]
    output_dir: str


def finetune(
    pretrained,
    train_dataset,
    eval_dataset,
    output_dir,
    recipe: str | dict = "ucf101",
    video_processor=None,
    feature_extractor=None,
    training_overrides: dict | None = None,
    test_views: bool = True,
    seed: int = 0,
    evaluate_before: bool = False,
    lora=None,
) -> FinetuneOutput:
    """Fine-tune ``pretrained`` on a labelled dataset with a released recipe, save a pipeline-ready folder.

    Args:
        pretrained: an XKD folder or Hub id.
        train_dataset / eval_dataset: `datasets.Dataset` from :mod:`.datasets`.
        output_dir: where checkpoints and the final model + processor go.
        recipe: a :data:`FINETUNE_RECIPES` name or a dict of the same keys (missing keys from "ucf101"/"esc50").
        video_processor / feature_extractor: processors matching the model's input size.
        training_overrides: `TrainingArguments` fields to override (e.g. ``max_steps`` for a smoke run).
        test_views: run :func:`multi_view_predict` on ``eval_dataset`` after training.
        evaluate_before: also evaluate before training (``initial_eval_metrics``), e.g. to show the loss drops.
        lora: a :class:`.lora.LoraSettings` to train LoRA adapters (and the head) instead of every weight. The
            recipe's layer decay is then not applied (one learning rate, as usual for LoRA); the adapter is saved
            in ``output_dir/adapter`` and the merged plain classifier in ``output_dir``.

    Returns:
        :class:`FinetuneOutput` (Trainer, per-step training losses, Trainer eval metrics, multi-view metrics).
    """
    if isinstance(recipe, str):
        if recipe not in FINETUNE_RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; known: {sorted(FINETUNE_RECIPES)}")
        recipe = dict(FINETUNE_RECIPES[recipe])
    base = FINETUNE_RECIPES["esc50" if recipe.get("modality") == "audio" else "ucf101"]
    recipe = {**base, **recipe}
    modality = recipe["modality"]
    multi_label = bool(recipe.get("multi_label", False))
    class_names = train_dataset.features["label"].names if hasattr(train_dataset.features["label"], "names") else [
        str(i) for i in range(recipe["num_labels"])]
    overrides = {}
    if recipe.get("classifier_dropout") is not None:
        overrides["classifier_dropout"] = recipe["classifier_dropout"]
    model = load_classifier(pretrained, modality, class_names, multi_label, **overrides)
    if lora is not None:
        from .lora import apply_lora

        model = apply_lora(model, lora)
    if modality == "video":
        from ..video_processing_xkd import XKDVideoProcessor

        video_processor = video_processor or XKDVideoProcessor()
        augment = VideoRandAugment(*recipe["rand_augment"], random_erasing=recipe["random_erasing"],
                                   mean=video_processor.image_mean, std=video_processor.image_std)
        processor = video_processor
    else:
        from ..feature_extraction_xkd import XKDFeatureExtractor

        feature_extractor = feature_extractor or XKDFeatureExtractor()
        augment = AudioSpecAugment(recipe["volume_jitter"], recipe["time_warp"], recipe["freq_masks"],
                                   recipe["freq_mask_param"], recipe["time_masks"], recipe["time_mask_param"],
                                   std=feature_extractor.std)
        processor = feature_extractor
    mix = MixupCutmix(len(class_names), recipe["mixup"], recipe["cutmix"], label_smoothing=recipe["label_smoothing"],
                      multi_label=multi_label)
    train_ds = ClipDataset(train_dataset, modality, video_processor, feature_extractor, train=True, seed=seed)
    eval_ds = ClipDataset(eval_dataset, modality, video_processor, feature_extractor, train=False)
    steps_per_epoch = max(1, math.ceil(len(train_ds) / recipe["batch_size"]))
    args = dict(
        output_dir=str(output_dir),
        learning_rate=recipe["lr"],
        weight_decay=recipe["weight_decay"],
        adam_beta1=0.9,
        adam_beta2=0.999,
        num_train_epochs=recipe["epochs"],
        warmup_steps=recipe["warmup_epochs"] * steps_per_epoch,
        lr_scheduler_type=recipe.get("scheduler", "cosine"),
        per_device_train_batch_size=recipe["batch_size"],
        per_device_eval_batch_size=recipe["batch_size"],
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        logging_steps=1,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=seed,
    )
    args.update(training_overrides or {})
    trainer = XKDTrainer(
        model=model,
        args=TrainingArguments(**args),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=processor,
        compute_metrics=make_compute_metrics(multi_label),
        layer_decay=None if lora is not None else recipe.get("layer_decay"),
        batch_augment=BatchAugment(augment, mix),
        multi_label=multi_label,
    )
    initial = trainer.evaluate() if evaluate_before else {}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    eval_metrics = trainer.evaluate()
    final_model = trainer.model
    if lora is not None:
        from pathlib import Path

        from .lora import merge_adapter, save_adapter

        save_adapter(trainer.model, Path(output_dir) / "adapter")
        final_model = merge_adapter(trainer.model, output_dir, processor)  # plain, pipeline-ready folder
    else:
        trainer.save_model(str(output_dir))  # model + processing_class (the processor) -> pipeline-ready folder
    processor.save_pretrained(str(output_dir))
    test_metrics = {}
    if test_views:
        scores, labels = multi_view_predict(final_model, eval_dataset, video_processor, feature_extractor,
                                            recipe["test_clips"], recipe["test_crops"], device=trainer.args.device)
        test_metrics = classification_metrics(scores, labels, multi_label)
    return FinetuneOutput(trainer, losses, initial, eval_metrics, test_metrics, str(output_dir))
