"""Global and local views of a batch, made on the training device (the released `GlobalLocalView`, paper Tables S1/S2).

The DataLoader delivers (see :func:`.data.collate_clips`) the decoded clips resized to the training short side,
the start frame of every local video view, and the finished audio views (log-mels are computed in the workers).
:class:`XKDViewMaker` turns that into the four inputs of ``XKDForPretraining.forward``:

* global video (all ``T`` frames; released 32 x 112 x 112): crop scale (0.2, 1), flip, colour jitter;
* local video (``T_local`` consecutive frames from the decoded start; released 8 x 96 x 96): crop scale
  (0.08, 0.4), flip, colour jitter, grayscale 0.2, fixed-sigma blur 0.5; each local view has its own parameters;
* global / local audio: passed through (released 448 x 80 and 112 x 80).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .augment import IMAGENET_MEAN, IMAGENET_STD, VideoViewAugmentation


@dataclass
class VideoViewSettings:
    """Parameters of one kind of video view (released values as defaults: a global view)."""

    size: int = 112
    scale: tuple = (0.2, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple = (0.4, 0.4, 0.4, 0.2)
    jitter_p: float = 1.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple = (0.1, 2.0)
    blur_kernel: int | None = None
    mean: tuple = field(default=IMAGENET_MEAN)
    std: tuple = field(default=IMAGENET_STD)

    def build(self) -> VideoViewAugmentation:
        return VideoViewAugmentation(
            self.size, self.scale, self.ratio, self.flip_p, self.jitter, self.jitter_p, self.grayscale_p,
            self.blur_p, self.blur_sigma, self.blur_kernel, self.mean, self.std,
        )


def released_local_video_settings(size: int = 96) -> VideoViewSettings:
    """The released local view: crop (0.08, 0.4), grayscale 0.2, blur 0.5 with sigma (0.1, 2.0)."""
    return VideoViewSettings(size=size, scale=(0.08, 0.4), grayscale_p=0.2, blur_p=0.5)


class XKDViewMaker(nn.Module):
    """Batch from the DataLoader (on the device) -> keyword arguments of ``XKDForPretraining.forward``.

    Args:
        global_view, local_view (`VideoViewSettings`): the two kinds of video view.
        local_num_frames (`int`): frames per local video view (8).

    Forward:
        batch with ``video`` `(B, T, 3, H, W)` uint8, ``video_sizes`` `(B, 2)`, ``local_video_starts`` `(B, V)`,
        ``input_values`` `(B, 448, 80)`, ``local_input_values`` `(B, V_a, 112, 80)` ->
        ``pixel_values`` `(B, T, 3, 112, 112)`, ``local_pixel_values`` `(B, V, T_local, 3, 96, 96)`,
        ``input_values``, ``local_input_values`` (unchanged).
    """

    def __init__(self, global_view: VideoViewSettings, local_view: VideoViewSettings, local_num_frames: int):
        super().__init__()
        self.global_augment = global_view.build()
        self.local_augment = local_view.build()
        self.local_num_frames = int(local_num_frames)

    @torch.no_grad()
    def forward(self, batch: dict) -> dict:
        video, sizes, starts = batch["video"], batch["video_sizes"], batch["local_video_starts"]
        b, t = video.shape[:2]
        if starts.max().item() + self.local_num_frames > t:
            raise ValueError(
                f"local video views of {self.local_num_frames} frames starting at up to {starts.max().item()} do not "
                f"fit in clips of {t} frames"
            )
        pixel_values = self.global_augment(video, sizes)
        num_views = starts.shape[1]
        # (B, V, T_local) frame indices -> (B * V, T_local, 3, H, W) uint8: one independent crop per local view
        frame_index = starts.to(video.device)[:, :, None] + torch.arange(self.local_num_frames, device=video.device)
        rows = torch.arange(b, device=video.device)[:, None, None]
        local = video[rows, frame_index].flatten(0, 1)
        local = self.local_augment(local, sizes.repeat_interleave(num_views, dim=0))
        local = local.unflatten(0, (b, num_views))
        return {
            "pixel_values": pixel_values,
            "local_pixel_values": local,
            "input_values": batch["input_values"],
            "local_input_values": batch["local_input_values"],
        }


__all__ = ["VideoViewSettings", "released_local_video_settings", "XKDViewMaker"]
