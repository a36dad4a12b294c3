"""Augmentations of XKD pretraining (the released `StrongTransforms2` and `SpecAug`, paper Tables S1/S2).

Video augmentations run batched on the training device: a per-clip random resized crop (the same box on every frame
of a view, boxes drawn inside each clip's real size so the batch padding is never seen), then a kornia
``VideoSequential`` with ``same_on_frame=True`` (horizontal flip, colour jitter always applied in random order,
grayscale, Gaussian blur with the released fixed sigma pair), then ImageNet normalisation.

The audio augmentations are small per-sample operations on 80 x 112 log-mels and run in the DataLoader workers
(:func:`audio_random_resize_crop`, BYOL-A style, and the volume jitter in :mod:`.data`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..video_processing_xkd import IMAGENET_MEAN, IMAGENET_STD  # transformers' ImageNet statistics (released)


def released_blur_kernel_size(image_size: int) -> int:
    """The released kernel size ``size // 20 * 2 + 1`` (9 for 96), at least 3 so that tiny views still blur."""
    return max(3, image_size // 20 * 2 + 1)


def sample_resized_crop_boxes(
    sizes: torch.Tensor,
    scale: Sequence[float],
    ratio: Sequence[float],
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> torch.Tensor:
    """Random resized crop boxes, torchvision's algorithm vectorised over a batch.

    For each clip, up to ``attempts`` candidates (area fraction ~ U(scale), log aspect ~ U(log ratio)); the first
    that fits is used, at a uniform position; when none fits, the central crop clamped to the ratio range.

    Args:
        sizes (`(B, 2)` int): real `(H, W)` of each clip.
        scale, ratio: `(min, max)` area fraction and aspect ratio (w / h).

    Returns:
        `(B, 4)` float: `(top, left, height, width)` in pixels.
    """
    sizes = sizes.to("cpu", torch.float64)
    h_img, w_img = sizes[:, 0:1], sizes[:, 1:2]
    n = sizes.shape[0]
    area = h_img * w_img
    target = area * torch.empty(n, attempts, dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.empty(n, attempts, dtype=torch.float64).uniform_(log_lo, log_hi, generator=generator))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # index of the first fitting attempt
    h_sel, w_sel = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    any_fit = fits.any(dim=1)
    # Fallback: central crop with the aspect ratio clamped into the range.
    in_ratio = (w_img / h_img)[:, 0]
    fb_w = torch.where(in_ratio < ratio[0], w_img[:, 0], torch.where(in_ratio > ratio[1],
                       torch.round(h_img[:, 0] * ratio[1]), w_img[:, 0]))
    fb_h = torch.where(in_ratio < ratio[0], torch.round(w_img[:, 0] / ratio[0]), h_img[:, 0])
    h_sel = torch.where(any_fit, h_sel, fb_h)
    w_sel = torch.where(any_fit, w_sel, fb_w)
    u = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    top = torch.where(any_fit, torch.floor(u[:, 0] * (h_img[:, 0] - h_sel + 1)), torch.floor((h_img[:, 0] - h_sel) / 2))
    left = torch.where(any_fit, torch.floor(u[:, 1] * (w_img[:, 0] - w_sel + 1)),
                       torch.floor((w_img[:, 0] - w_sel) / 2))
    return torch.stack([top, left, h_sel, w_sel], dim=1).float()


def crop_and_resize_clips(video: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop one box per clip (the same on every frame) and resize it to ``size x size`` (bilinear).

    Args:
        video (`(B, T, C, H, W)` float): clips on the training device.
        boxes (`(B, 4)`): `(top, left, height, width)` pixels, from :func:`sample_resized_crop_boxes`.

    Returns:
        `(B, T, C, size, size)`.

    One ``grid_sample`` over all frames: the affine grid maps the output square onto the box's pixel edges
    (align_corners=False, as PIL's crop-then-resize samples pixel centres).
    """
    b, t, c, h, w = video.shape
    boxes = boxes.to(video.device, torch.float32)
    top, left, bh, bw = boxes.unbind(dim=1)
    # normalised [-1, 1] coordinates of the box centre and half-extent
    cx = (left + bw / 2) / w * 2 - 1
    cy = (top + bh / 2) / h * 2 - 1
    theta = torch.zeros(b, 2, 3, device=video.device, dtype=torch.float32)
    theta[:, 0, 0] = bw / w
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = bh / h
    theta[:, 1, 2] = cy
    theta = theta.repeat_interleave(t, dim=0)
    frames = video.reshape(b * t, c, h, w)
    grid = F.affine_grid(theta, [b * t, c, size, size], align_corners=False)
    out = F.grid_sample(frames, grid.to(frames.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(b, t, c, size, size)


def _fixed_blur_class():
    # Defined lazily so that importing this module does not import kornia (an optional `train` extra).
    from kornia.augmentation import IntensityAugmentationBase2D
    from kornia.filters import gaussian_blur2d

    class RandomFixedGaussianBlur(IntensityAugmentationBase2D):
        """Gaussian blur with a FIXED anisotropic sigma, applied with probability ``p``.

        The released code passes ``sigma=(0.1, 2.0)`` to torchvision's functional blur, which reads it as
        (sigma_x, sigma_y) = (0.1, 2.0), not as a range to sample from (the released `StrongTransforms2`); kornia's
        ``RandomGaussianBlur`` would sample an isotropic sigma instead, hence this class.
        """

        def __init__(self, kernel_size: int, sigma_xy: Sequence[float], p: float = 0.5):
            super().__init__(p=p)
            self.kernel_size = (int(kernel_size), int(kernel_size))
            # kornia takes (sigma_y, sigma_x): rows first
            self.sigma_yx = (float(sigma_xy[1]), float(sigma_xy[0]))

        def apply_transform(self, input: torch.Tensor, params: dict[str, Any], flags: dict[str, Any],
                            transform: torch.Tensor | None = None) -> torch.Tensor:
            return gaussian_blur2d(input, self.kernel_size, self.sigma_yx, border_type="reflect")

    return RandomFixedGaussianBlur


class VideoViewAugmentation(nn.Module):
    """One kind of video view (global or local), batched on the device, the same parameters on every frame.

    Args:
        size (`int`): output height = width (112 global, 96 local).
        scale, ratio: random resized crop ranges ((0.2, 1) global, (0.08, 0.4) local; ratio (3/4, 4/3)).
        flip_p (`float`): horizontal flip probability (0.5).
        jitter (`(b, c, s, h)`): colour jitter strengths ((0.4, 0.4, 0.4, 0.2)), applied with ``jitter_p`` (1.0) in
            a random order (one order per batch call: kornia draws the permutation per call).
        grayscale_p (`float`): (0 global, 0.2 local).
        blur_p (`float`), blur_sigma (`(sigma_x, sigma_y)`), blur_kernel (`int`): fixed-sigma blur (local only:
            p 0.5, sigma (0.1, 2.0), kernel 9).
        mean, std: normalisation (ImageNet).

    Forward:
        video (`(B, T, 3, H, W)`, uint8 or float in [0, 1]) and sizes (`(B, 2)` real `(H, W)` of each clip)
        -> `(B, T, 3, size, size)` float32, normalised.
    """

    def __init__(self, size: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip_p: float = 0.5,
                 jitter=(0.4, 0.4, 0.4, 0.2), jitter_p: float = 1.0, grayscale_p: float = 0.0, blur_p: float = 0.0,
                 blur_sigma=(0.1, 2.0), blur_kernel: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        import kornia.augmentation as K

        self.size, self.scale, self.ratio = int(size), tuple(scale), tuple(ratio)
        ops = []
        if flip_p > 0:
            ops.append(K.RandomHorizontalFlip(p=flip_p))
        if jitter_p > 0 and any(j > 0 for j in jitter):
            ops.append(K.ColorJitter(*jitter, p=jitter_p))
        if grayscale_p > 0:
            ops.append(K.RandomGrayscale(p=grayscale_p))
        if blur_p > 0:
            kernel = blur_kernel or released_blur_kernel_size(self.size)
            ops.append(_fixed_blur_class()(kernel, blur_sigma, p=blur_p))
        self.photometric = (
            K.VideoSequential(*ops, data_format="BTCHW", same_on_frame=True) if ops else nn.Identity()
        )
        self.register_buffer("mean", torch.tensor(mean).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 1, 3, 1, 1), persistent=False)

    def forward(self, video: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be (B, T, 3, H, W), got {tuple(video.shape)}")
        if video.dtype == torch.uint8:
            video = video.float().div_(255.0)
        boxes = sample_resized_crop_boxes(sizes, self.scale, self.ratio)
        out = crop_and_resize_clips(video, boxes, self.size)
        out = self.photometric(out)
        # ColorJitter clamps to [0, 1]; the blur and crop do not leave it: no clamp needed before normalising.
        return (out - self.mean.to(out.dtype)) / self.std.to(out.dtype)


def audio_random_resize_crop(
    log_mel: torch.Tensor,
    rng: np.random.Generator,
    virtual_crop_scale: Sequence[float] = (1.0, 1.5),
    crop_scale: Sequence[float] = (0.6, 1.5),
) -> torch.Tensor:
    """BYOL-A random resize crop of one normalised log-mel (the released `SpecAug`), as the released local audio view.

    1. a zero canvas of (mel x virtual_crop_scale[0], time x virtual_crop_scale[1]) (80 x 168 for 80 x 112) with the
       input in its centre;
    2. a crop of height U(crop_scale) * mel and width U(crop_scale) * time, clipped to the canvas, at a uniform
       position;
    3. bicubic resize (align_corners=True) back to the input size.

    Args:
        log_mel (`(time, mel)`): one spectrogram in the model's time-first layout.

    Returns:
        `(time, mel)`.
    """
    spec = log_mel.t()  # (mel, time): the released crop works frequency-first
    f, t = spec.shape
    canvas_f, canvas_t = int(f * virtual_crop_scale[0]), int(t * virtual_crop_scale[1])
    canvas = spec.new_zeros(canvas_f, canvas_t)
    off_f, off_t = (canvas_f - f) // 2, (canvas_t - t) // 2
    canvas[off_f:off_f + f, off_t:off_t + t] = spec
    h = int(np.clip(int(rng.uniform(*crop_scale) * f), 1, canvas_f))
    w = int(np.clip(int(rng.uniform(*crop_scale) * t), 1, canvas_t))
    i = int(rng.integers(0, canvas_f - h + 1)) if canvas_f > h else 0
    j = int(rng.integers(0, canvas_t - w + 1)) if canvas_t > w else 0
    crop = canvas[i:i + h, j:j + w]
    out = F.interpolate(crop[None, None], size=(f, t), mode="bicubic", align_corners=True)[0, 0]
    return out.t().contiguous()


__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "released_blur_kernel_size", "sample_resized_crop_boxes",
    "crop_and_resize_clips", "VideoViewAugmentation", "audio_random_resize_crop",
]
