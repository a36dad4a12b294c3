"""XKD video processor: frames at 8 fps, shorter-side resize, centre crop, ImageNet normalisation (no torchvision).

Released evaluation transform (spec sections 6.1, 6.3 and 7.2): 32 frames at 8 fps (4 s) picked on a 1/8 s grid;
PIL-bilinear resize of the shorter side to 128 (= int(112 / 0.875)); centre crop 112; ``/255``; ImageNet mean/std.
Resizing here uses ``torch.nn.functional.interpolate(mode="bilinear", antialias=True)``, which follows PIL's
bilinear filter, with the result rounded to uint8 as PIL's would be.

The class subclasses :class:`~transformers.video_processing_utils.VideoProcessorMixin` (which, unlike
``BaseVideoProcessor``, needs no torchvision) for ``save_pretrained`` / ``from_pretrained`` /
``register_for_auto_class`` and decodes files itself with PyAV (``decoding_xkd``), so
``pipeline("video-classification")`` works through its video-processor path.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import VideosKwargs
from transformers.utils import logging
from transformers.video_processing_utils import VideoProcessorMixin

from .decoding_xkd import MediaDecodingError, clip_starts, decode_clips, describe_source


logger = logging.get_logger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class XKDVideosKwargs(VideosKwargs, total=False):
    """`VideosKwargs` plus XKD's clip options."""

    num_clips: int
    video_fps: float


def _is_source(x: Any) -> bool:
    """A path, bytes or a binary file object (something :mod:`decoding_xkd` opens)."""
    return isinstance(x, (str, os.PathLike, bytes, bytearray)) or (hasattr(x, "read") and hasattr(x, "seek"))


def _is_pil(x: Any) -> bool:
    return hasattr(x, "convert") and hasattr(x, "size") and hasattr(x, "mode")


def _size_dict(size: Any, name: str) -> dict:
    if isinstance(size, int):
        return {"shortest_edge": size} if name == "size" else {"height": size, "width": size}
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return {"height": int(size[0]), "width": int(size[1])}
    if isinstance(size, dict):
        return {k: int(v) for k, v in dict(size).items() if v is not None}
    raise ValueError(f"{name}: expected an int, (height, width) or a dict, got {size!r}")


class XKDVideoProcessor(VideoProcessorMixin):
    r"""
    Turns videos (files, raw frames or PIL images) into XKD ``pixel_values``.

    Args:
        num_frames (`int`, defaults to 32): frames per clip.
        fps (`float`, defaults to 8.0): sampling rate of the clip; a clip spans ``num_frames / fps`` seconds (4 s).
        num_clips (`int`, defaults to 1): clips per video. 1 takes the first 4 s (the released trim); ``n > 1``
            takes ``n`` uniformly spaced clips (the paper evaluates on 3) and adds a clip axis.
        do_resize (`bool`), size (`dict`, defaults to ``{"shortest_edge": 128}``): resize the shorter side
            (bilinear), or to ``{"height", "width"}`` exactly.
        do_center_crop (`bool`), crop_size (`dict`, defaults to ``{"height": 112, "width": 112}``; 224 for
            fine-tuning).
        do_rescale (`bool`), rescale_factor (`float`, defaults to 1/255).
        do_normalize (`bool`), image_mean / image_std (ImageNet).

    Returns (from `__call__`): `BatchFeature` with ``pixel_values`` `(batch, num_frames, 3, H, W)` or
    `(batch, num_clips, num_frames, 3, H, W)`, float32; with ``return_metadata=True`` also ``video_metadata``, one
    dict per video (clip starts, padding, source fps, ...). The metadata list is always available as the
    attribute ``outputs.video_metadata``. Videos shorter than a clip are padded by repeating their last frame, and
    a warning is logged.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = XKDVideosKwargs

    def __init__(
        self,
        num_frames: int = 32,
        fps: float = 8.0,
        num_clips: int = 1,
        do_resize: bool = True,
        size: dict | int | None = None,
        resample: int = 2,  # PIL.Image.BILINEAR; stored for reference, the resize is always bilinear
        do_center_crop: bool = True,
        crop_size: dict | int | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: tuple | list | None = None,
        image_std: tuple | list | None = None,
        **kwargs,
    ):
        if "feature_extractor_type" in kwargs:
            # transformers falls back to preprocessor_config.json when a folder has no video processor config;
            # that file then holds the audio feature extractor's settings, which must not configure the frames.
            raise ValueError(
                "XKDVideoProcessor was given an audio feature extractor's config "
                f"({kwargs['feature_extractor_type']}): this folder has no video_preprocessor_config.json. Save one "
                "with XKDVideoProcessor(...).save_pretrained(folder) or build the processor directly."
            )
        for key in ("video_processor_type", "image_processor_type", "processor_class"):
            kwargs.pop(key, None)
        super().__init__(**kwargs)
        self.num_frames = int(num_frames)
        self.fps = float(fps)
        self.num_clips = int(num_clips)
        self.do_resize = do_resize
        self.size = _size_dict(size if size is not None else {"shortest_edge": 128}, "size")
        self.resample = resample
        self.do_center_crop = do_center_crop
        self.crop_size = _size_dict(crop_size if crop_size is not None else {"height": 112, "width": 112}, "crop_size")
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean if image_mean is not None else IMAGENET_MEAN)
        self.image_std = list(image_std if image_std is not None else IMAGENET_STD)

    @property
    def clip_duration(self) -> float:
        """Seconds per clip (4.0 by default)."""
        return self.num_frames / self.fps

    # -- input handling ------------------------------------------------------------------------------------
    def _frames_array(self, video: Any, name: str) -> np.ndarray:
        """Raw frames (numpy / torch `(T, H, W, C)` or a list of PIL images / `(H, W, C)` arrays) -> uint8-range
        float32 `(T, H, W, 3)`."""
        if isinstance(video, (list, tuple)):
            if len(video) == 0:
                raise ValueError(f"{name}: got an empty list of frames")
            frames = []
            for j, f in enumerate(video):
                if _is_pil(f):
                    frames.append(np.asarray(f.convert("RGB")))
                elif isinstance(f, np.ndarray) or torch.is_tensor(f):
                    frames.append(np.asarray(f.detach().cpu() if torch.is_tensor(f) else f))
                else:
                    raise ValueError(f"{name}: frame {j} is a {type(f).__name__}, expected a PIL image or an array")
            shapes = {fr.shape for fr in frames}
            if len(shapes) > 1:
                raise ValueError(f"{name}: frames have different shapes {sorted(shapes)}")
            arr = np.stack(frames)
            if arr.ndim == 3:  # list of (H, W) grayscale frames
                arr = arr[..., None]
        else:
            arr = video.detach().cpu().numpy() if torch.is_tensor(video) else np.asarray(video)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise ValueError(f"{name}: expected uint8 or float frames, got dtype {arr.dtype}")
        if arr.dtype == np.bool_:
            raise ValueError(f"{name}: expected uint8 or float frames, got dtype bool")
        if arr.ndim == 3:  # (T, H, W) grayscale
            arr = arr[..., None]
        if arr.ndim != 4:
            raise ValueError(f"{name}: expected frames shaped (T, H, W, C), got shape {tuple(arr.shape)}")
        if arr.shape[-1] not in (1, 3, 4) and arr.shape[1] in (1, 3, 4):
            arr = arr.transpose(0, 2, 3, 1)  # (T, C, H, W) -> (T, H, W, C)
        if arr.shape[-1] not in (1, 3, 4):
            raise ValueError(f"{name}: expected 1, 3 or 4 channels in the last axis, got shape {tuple(arr.shape)}")
        if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
            raise ValueError(f"{name}: the video is empty (shape {tuple(arr.shape)})")
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        elif arr.shape[-1] == 4:
            arr = arr[..., :3]
        is_float = np.issubdtype(arr.dtype, np.floating)
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: the frames contain NaN or infinite values")
        if is_float and arr.max() <= 1.0:
            arr = arr * 255.0  # float frames in [0, 1]: bring them to the uint8 range the transforms expect
        return arr

    def _clips_from_frames(
        self, arr: np.ndarray, video_fps: float | None, num_clips: int
    ) -> tuple[np.ndarray, dict]:
        """Sample `(num_clips, num_frames, H, W, 3)` from raw frames `(T, H, W, 3)` at ``video_fps``."""
        src_fps = float(video_fps) if video_fps else self.fps
        total = arr.shape[0] / src_fps
        starts = clip_starts(total, self.clip_duration, num_clips)
        clips, padded = [], []
        for s in starts:
            times = s + np.arange(self.num_frames) / self.fps
            # released rule: native index int(t * fps) of the frame shown at t
            idx = np.floor(times * src_fps + 1e-6).astype(np.int64)
            padded.append(int(np.sum(idx >= arr.shape[0])))
            clips.append(arr[np.clip(idx, 0, arr.shape[0] - 1)])
        meta = {
            "source": "frames",
            "clip_starts": starts,
            "num_padded_frames": padded,
            "padded": any(padded),
            "source_fps": src_fps,
            "duration": total,
        }
        return np.stack(clips), meta

    def _clips_from_source(self, source: Any, num_clips: int) -> tuple[np.ndarray, dict]:
        clips, starts = decode_clips(
            source,
            num_clips=num_clips,
            clip_duration=self.clip_duration,
            fps=self.fps,
            decode_audio=False,
            require_video=True,
        )
        info = clips[0].info
        padded = [c.num_padded_frames for c in clips]
        meta = {
            "source": describe_source(source),
            "clip_starts": starts,
            "num_padded_frames": padded,
            "padded": any(padded),
            "source_fps": info.native_fps,
            "duration": info.video_duration,
            "skipped_packets": clips[0].skipped_packets,
        }
        return np.stack([c.frames for c in clips]).astype(np.float32), meta

    # -- transforms ----------------------------------------------------------------------------------------
    def transform(self, frames: torch.Tensor, **overrides) -> torch.Tensor:
        """Resize, centre-crop, rescale and normalise a batch of frames.

        Args:
            frames (`torch.Tensor` of shape `(N, 3, H, W)`): float in the uint8 range [0, 255].

        Returns:
            `torch.Tensor` of shape `(N, 3, crop_h, crop_w)`, float32.
        """
        do_resize = overrides.get("do_resize", self.do_resize)
        size = _size_dict(overrides.get("size") or self.size, "size")
        do_center_crop = overrides.get("do_center_crop", self.do_center_crop)
        crop_size = _size_dict(overrides.get("crop_size") or self.crop_size, "crop_size")
        x = frames
        if do_resize:
            h, w = x.shape[-2:]
            if "shortest_edge" in size:
                short = size["shortest_edge"]
                # torchvision/PIL convention: the long side is truncated, not rounded
                nh, nw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
            else:
                nh, nw = size["height"], size["width"]
            if (nh, nw) != (h, w):
                x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
                x = x.round_().clamp_(0, 255)  # PIL returns uint8
        if do_center_crop:
            th, tw = crop_size["height"], crop_size["width"]
            h, w = x.shape[-2:]
            if h < th or w < tw:  # pad like torchvision's center_crop when the frame is smaller than the crop
                ph, pw = max(th - h, 0), max(tw - w, 0)
                x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
                h, w = x.shape[-2:]
            top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
            x = x[..., top : top + th, left : left + tw]
        if overrides.get("do_rescale", self.do_rescale):
            x = x * overrides.get("rescale_factor", self.rescale_factor)
        if overrides.get("do_normalize", self.do_normalize):
            mean = torch.tensor(overrides.get("image_mean") or self.image_mean, dtype=x.dtype).view(1, -1, 1, 1)
            std = torch.tensor(overrides.get("image_std") or self.image_std, dtype=x.dtype).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x.contiguous()

    # -- main entry ----------------------------------------------------------------------------------------
    def _split_batch(self, videos: Any) -> tuple[list, bool]:
        if _is_source(videos):
            return [videos], False
        if isinstance(videos, (np.ndarray, torch.Tensor)):
            if videos.ndim == 5:
                return list(videos), True
            return [videos], False
        if isinstance(videos, (list, tuple)):
            if len(videos) == 0:
                raise ValueError("videos: got an empty list")
            first = videos[0]
            if _is_pil(first):
                return [videos], False
            if isinstance(first, (np.ndarray, torch.Tensor)) and first.ndim in (2, 3) and not (
                first.ndim == 3 and len(videos) > 0 and all(getattr(v, "ndim", 0) == 4 for v in videos)
            ):
                return [videos], False  # a list of (H, W, C) frames is one video
            return list(videos), True
        raise ValueError(
            f"videos: expected a path, bytes, a file object, frames (T, H, W, C) or a list of PIL images, "
            f"got {type(videos).__name__}"
        )

    def preprocess(self, videos: Any, **kwargs) -> BatchFeature:
        """Process one video or a batch.

        Args:
            videos: a path / bytes / binary file object (decoded with PyAV), raw frames `(T, H, W, C)` (numpy or
                torch, uint8 or float), a list of PIL images (one video), or a list of any of these (a batch), or a
                `(B, T, H, W, C)` array.
            num_frames (`int`), fps (`float`), num_clips (`int`): override the instance's values.
            video_fps (`float`, *optional*): frame rate of raw-frame inputs; they are resampled to ``fps``. When
                omitted raw frames are assumed to be at ``fps`` already.
            return_metadata (`bool`): also return ``video_metadata`` as a key.
            return_tensors (`str`): ``"pt"`` (default torch tensors) or ``"np"``.
            do_sample_frames, device, ...: accepted for compatibility with transformers' pipelines.

        Returns:
            `BatchFeature` with ``pixel_values`` `(B, T, 3, H, W)` or `(B, num_clips, T, 3, H, W)`.
        """
        return_tensors = kwargs.pop("return_tensors", None)
        return_metadata = bool(kwargs.pop("return_metadata", False))
        num_clips = int(kwargs.pop("num_clips", None) or self.num_clips)
        video_fps = kwargs.pop("video_fps", None)
        num_frames = kwargs.pop("num_frames", None)
        fps = kwargs.pop("fps", None)
        for key in ("do_sample_frames", "device", "video_metadata", "input_data_format", "data_format",
                    "do_convert_rgb", "default_to_square", "resample", "do_pad"):
            kwargs.pop(key, None)
        allowed = {"do_resize", "size", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                   "do_normalize", "image_mean", "image_std"}
        unknown = set(kwargs) - allowed
        if unknown:
            raise TypeError(f"XKDVideoProcessor got unexpected keyword arguments: {sorted(unknown)}")
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")
        saved = (self.num_frames, self.fps)
        try:
            if num_frames is not None:
                self.num_frames = int(num_frames)
            if fps is not None:
                self.fps = float(fps)
            items, batched = self._split_batch(videos)
            all_clips, metadata = [], []
            for i, video in enumerate(items):
                name = f"video {i}" if batched else "video"
                if _is_source(video):
                    clips, meta = self._clips_from_source(video, num_clips)
                else:
                    arr = self._frames_array(video, name)
                    clips, meta = self._clips_from_frames(arr, video_fps, num_clips)
                if meta["padded"]:
                    logger.warning(
                        f"XKDVideoProcessor: {meta['source']} is shorter than a {self.clip_duration:g} s clip; "
                        f"padded {meta['num_padded_frames']} frame(s) per clip by repeating the last frame."
                    )
                n, t, h, w, c = clips.shape
                x = torch.from_numpy(np.ascontiguousarray(clips)).reshape(n * t, h, w, c).permute(0, 3, 1, 2)
                x = self.transform(x.float(), **kwargs)
                all_clips.append(x.reshape(n, t, *x.shape[1:]))
                metadata.append(meta)
            pixel_values = torch.stack(all_clips)  # (B, clips, T, 3, H, W)
            if num_clips == 1:
                pixel_values = pixel_values[:, 0]
        finally:
            self.num_frames, self.fps = saved
        data = {"pixel_values": pixel_values if return_tensors != "np" else pixel_values.numpy()}
        if return_metadata:
            data["video_metadata"] = metadata
        out = BatchFeature(data, skip_tensor_conversion=["video_metadata"])
        object.__setattr__(out, "video_metadata", metadata)
        return out

    def __call__(self, videos: Any = None, **kwargs) -> BatchFeature:
        return self.preprocess(videos, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        for key in ("_valid_kwargs_names", "_valid_processor_keys", "video_metadata"):
            output.pop(key, None)
        return output


__all__ = ["XKDVideoProcessor", "MediaDecodingError"]
