"""XKD video processor: frames at 8 fps, shorter-side resize, centre crop, ImageNet normalisation (no torchvision).

Released evaluation transform (the PyAV loader, `Basic` and the `codes/eval` test transform): 32 frames at 8 fps
(4 s) picked on a 1/8 s grid; PIL-bilinear resize of the shorter side to 128 (= int(112 / 0.875)); centre crop 112;
``/255``; ImageNet mean/std.

A thin processor, as transformers' newer ``video_processing_*.py`` are: the defaults are class attributes, clips
come from the clip layer (``clips_xkd``: start times, frame choice, padding, shorter-side resize) and the one hook,
:meth:`XKDVideoProcessor._preprocess`, turns frames into ``pixel_values``. The class subclasses
:class:`~transformers.video_processing_utils.VideoProcessorMixin` (which, unlike ``BaseVideoProcessor``, needs no
torchvision) for ``save_pretrained`` / ``from_pretrained`` / ``register_for_auto_class`` and decodes files itself
with PyAV, so ``pipeline("video-classification")`` works through its video-processor path.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.processing_utils import VideosKwargs
from transformers.utils import logging
from transformers.video_processing_utils import VideoProcessorMixin

from .clips_xkd import (
    Clips,
    ClipSpec,
    _check_num_clips,
    clips_from_frames,
    read_clips,
    reject_unknown_keywords,
    resize_shorter_side,
)
from .decoding_xkd import MediaDecodingError


logger = logging.get_logger(__name__)

# transformers' ImageNet statistics (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225), the released normalisation
IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)

# The processor's settings (saved to video_preprocessor_config.json); their defaults are the class attributes.
_FIELDS = (
    "num_frames", "fps", "num_clips", "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
    "rescale_factor", "do_normalize", "image_mean", "image_std",
)
# Keys a saved config holds besides the fields (transformers' bookkeeping).
_BOOKKEEPING_KEYS = ("video_processor_type", "image_processor_type", "processor_class", "auto_map")
# Names used elsewhere (XKDVideoConfig, other processors) for this processor's fields.
_KEYWORD_ALIASES = {
    "image_size": "crop_size",
    "frames": "num_frames",
    "clips": "num_clips",
    "shortest_edge": "size",
    "mean": "image_mean",
    "std": "image_std",
    "frame_rate": "fps",
}
# Call-time keywords of transformers' video pipelines and processors that change nothing here.
_IGNORED_CALL_KEYS = ("do_sample_frames", "device", "video_metadata", "input_data_format", "data_format",
                      "do_convert_rgb", "default_to_square", "resample", "do_pad")


class XKDVideosKwargs(VideosKwargs, total=False):
    """`VideosKwargs` plus XKD's clip options."""

    num_clips: int
    video_fps: float


def _is_source(x: Any) -> bool:
    """A path, bytes or a binary file object (something :mod:`decoding_xkd` opens)."""
    return isinstance(x, (str, os.PathLike, bytes, bytearray)) or (hasattr(x, "read") and hasattr(x, "seek"))


def _is_pil(x: Any) -> bool:
    return hasattr(x, "convert") and hasattr(x, "size") and hasattr(x, "mode")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.generic)) or value != int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _size_dict(size: Any, name: str) -> dict:
    """``size`` as ``{"shortest_edge": n}`` (``size`` only) or ``{"height": h, "width": w}``, validated."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        out = {"shortest_edge": int(size)} if name == "size" else {"height": int(size), "width": int(size)}
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        out = {"height": size[0], "width": size[1]}
    elif isinstance(size, dict):
        out = {k: v for k, v in dict(size).items() if v is not None}
    else:
        raise ValueError(f"{name}: expected an int, (height, width) or a dict, got {size!r}")
    allowed = ({"shortest_edge"}, {"height", "width"}) if name == "size" else ({"height", "width"},)
    if set(out) not in allowed:
        forms = " or ".join(str(sorted(a)) for a in allowed)
        raise ValueError(f"{name}: expected the keys {forms}, got {size!r}")
    return {k: _positive_int(f"{name}[{k!r}]", v) for k, v in out.items()}


def _channel_stats(value: Any, name: str, positive: bool) -> list:
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * 3
    if len(values) != 3:
        raise ValueError(f"{name}: expected 3 values (R, G, B), got {value!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.generic)) or not math.isfinite(float(v)):
            raise ValueError(f"{name}: expected finite numbers, got {value!r}")
        if positive and float(v) <= 0:
            raise ValueError(f"{name}: every value must be positive (frames are divided by it), got {value!r}")
    return [float(v) for v in values]


class XKDVideoProcessor(VideoProcessorMixin):
    r"""
    Turns videos (files, raw frames, PIL images or clips read by ``clips_xkd``) into XKD ``pixel_values``.

    Args (defaults are the class attributes):
        num_frames (`int`, defaults to 32): frames per clip.
        fps (`float`, defaults to 8.0): sampling rate of the clip; a clip spans ``num_frames / fps`` seconds (4 s).
        num_clips (`int`, defaults to 1): clips per video. 1 takes the first 4 s (the released trim); ``n > 1``
            takes ``n`` uniformly spaced clips (the paper evaluates on 3) and adds a clip axis.
        do_resize (`bool`), size (`dict`, defaults to ``{"shortest_edge": 128}``): resize the shorter side
            (bilinear, the longer side truncated as released), or to ``{"height", "width"}`` exactly.
        do_center_crop (`bool`), crop_size (`dict`, defaults to ``{"height": 112, "width": 112}``; 224 for
            fine-tuning).
        do_rescale (`bool`), rescale_factor (`float`, defaults to 1/255).
        do_normalize (`bool`), image_mean / image_std (ImageNet, ``transformers.image_utils``).

    Unknown keywords raise a `TypeError` naming the close field; :meth:`from_model_config` matches a model.

    Returns (from `__call__`): `BatchFeature` with ``pixel_values`` `(batch, num_frames, 3, H, W)` or
    `(batch, num_clips, num_frames, 3, H, W)`, float32 (``return_tensors="np"``: numpy); with
    ``return_metadata=True`` also ``video_metadata``, one dict per video (clip starts, padding, source fps, ...).
    The metadata list is always available as the attribute ``outputs.video_metadata``. Videos shorter than a clip
    are padded by repeating their last frame, and a warning is logged.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = XKDVideosKwargs
    # defaults: the released evaluation transform
    num_frames = 32
    fps = 8.0
    num_clips = 1
    do_resize = True
    size = {"shortest_edge": 128}
    resample = 2  # PIL.Image.BILINEAR; stored for reference, the resize is always bilinear
    do_center_crop = True
    crop_size = {"height": 112, "width": 112}
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = list(IMAGENET_MEAN)
    image_std = list(IMAGENET_STD)

    def __init__(self, **kwargs):
        if "feature_extractor_type" in kwargs:
            # transformers falls back to preprocessor_config.json when a folder has no video processor config;
            # that file then holds the audio feature extractor's settings, which must not configure the frames.
            raise ValueError(
                "XKDVideoProcessor was given an audio feature extractor's config "
                f"({kwargs['feature_extractor_type']}): this folder has no video_preprocessor_config.json. Save one "
                "with XKDVideoProcessor(...).save_pretrained(folder) or build the processor directly."
            )
        reject_unknown_keywords("XKDVideoProcessor", kwargs, _FIELDS + _BOOKKEEPING_KEYS, _KEYWORD_ALIASES)
        # transformers keeps auto_map (which class to load) as an attribute; the type names it writes itself
        super().__init__(**{k: kwargs[k] for k in ("auto_map",) if k in kwargs})
        settings = {k: kwargs.get(k) if kwargs.get(k) is not None else getattr(type(self), k) for k in _FIELDS}
        self.num_frames = _positive_int("num_frames", settings["num_frames"])
        self.fps = ClipSpec.from_frames(self.num_frames, settings["fps"]).fps  # validated
        self.num_clips = _check_num_clips(settings["num_clips"])
        self.do_resize = bool(settings["do_resize"])
        self.size = _size_dict(settings["size"], "size")
        self.resample = settings["resample"]
        self.do_center_crop = bool(settings["do_center_crop"])
        self.crop_size = _size_dict(settings["crop_size"], "crop_size")
        self.do_rescale = bool(settings["do_rescale"])
        rescale = settings["rescale_factor"]
        if isinstance(rescale, bool) or not isinstance(rescale, numbers.Real) or not 0 < float(rescale) < math.inf:
            raise ValueError(f"rescale_factor must be a positive number, got {rescale!r}")
        self.rescale_factor = float(rescale)
        self.do_normalize = bool(settings["do_normalize"])
        self.image_mean = _channel_stats(settings["image_mean"], "image_mean", positive=False)
        self.image_std = _channel_stats(settings["image_std"], "image_std", positive=True)

    @classmethod
    def from_model_config(cls, config, **kwargs) -> "XKDVideoProcessor":
        """A processor whose ``pixel_values`` fit ``config`` (an ``XKDVideoConfig``, or an ``XKDConfig``'s video
        part): ``num_frames`` frames, centre-cropped to ``image_size``, the shorter side resized to
        ``int(image_size / 0.875)`` (the released 112 -> 128 ratio). ``kwargs`` override any field."""
        config = getattr(config, "video_config", None) or config
        for name in ("num_frames", "image_size"):
            if not hasattr(config, name):
                raise ValueError(f"from_model_config needs an XKDVideoConfig or XKDConfig; {type(config).__name__} "
                                 f"has no {name!r}")
        size = int(config.image_size)
        kwargs.setdefault("num_frames", int(config.num_frames))
        kwargs.setdefault("crop_size", {"height": size, "width": size})
        kwargs.setdefault("size", {"shortest_edge": int(size / 0.875)})
        return cls(**kwargs)

    @property
    def clip_duration(self) -> float:
        """Seconds per clip (4.0 by default)."""
        return self.num_frames / self.fps

    @property
    def clip_spec(self) -> ClipSpec:
        """The clip (``num_frames`` at ``fps``) in the clip layer's terms."""
        return ClipSpec.from_frames(self.num_frames, self.fps)

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
        if np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.uint8:
            raise ValueError(
                f"{name}: integer frames must be uint8 (0-255), got dtype {arr.dtype}; convert them explicitly "
                "(e.g. `frames.astype(np.uint8)` after checking the range, or floats in [0, 1])"
            )
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
        if is_float and (arr.min() < 0.0 or arr.max() > 255.0):
            raise ValueError(
                f"{name}: float frames must be in [0, 1] or [0, 255], got values in [{arr.min():g}, {arr.max():g}] "
                "(already normalised frames cannot be processed again)"
            )
        if is_float and arr.max() <= 1.0:
            arr = arr * 255.0  # float frames in [0, 1]: bring them to the uint8 range the transforms expect
        return arr

    def _clips_from_frames(self, arr: np.ndarray, video_fps: float | None, num_clips: int) -> tuple[np.ndarray, dict]:
        """Sample `(num_clips, num_frames, H, W, 3)` from raw frames `(T, H, W, 3)` (``clips_xkd.clips_from_frames``)."""
        clips = clips_from_frames(arr, self.clip_spec, num_clips, video_fps=video_fps)
        return clips.frames, clips.metadata()

    def _clips_from_source(self, source: Any, num_clips: int) -> tuple[np.ndarray, dict]:
        """Decode `(num_clips, num_frames, H, W, 3)` from a file (``clips_xkd.read_clips``)."""
        clips = read_clips(source, self.clip_spec, num_clips, audio=False, require_video=True)
        return clips.frames, clips.metadata()

    # -- the hook ------------------------------------------------------------------------------------------
    def _preprocess(
        self,
        frames: torch.Tensor,
        do_resize: bool,
        size: dict,
        do_center_crop: bool,
        crop_size: dict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: list,
        image_std: list,
    ) -> torch.Tensor:
        """Resize (the clip layer's shorter-side rule), centre-crop, rescale and normalise `(N, 3, H, W)` frames
        (float, uint8 range) -> `(N, 3, crop_h, crop_w)` float32."""
        x = frames
        if do_resize:
            if "shortest_edge" in size:
                x = resize_shorter_side(x, size["shortest_edge"])
            elif (size["height"], size["width"]) != tuple(x.shape[-2:]):
                x = torch.nn.functional.interpolate(
                    x, size=(size["height"], size["width"]), mode="bilinear", antialias=True, align_corners=False
                ).round_().clamp_(0, 255)  # PIL returns uint8
        if do_center_crop:
            th, tw = crop_size["height"], crop_size["width"]
            h, w = x.shape[-2:]
            if h < th or w < tw:  # pad like torchvision's center_crop when the frame is smaller than the crop
                ph, pw = max(th - h, 0), max(tw - w, 0)
                x = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
                h, w = x.shape[-2:]
            top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
            x = x[..., top : top + th, left : left + tw]
        if do_rescale:
            x = x * rescale_factor
        if do_normalize:
            mean = torch.tensor(image_mean, dtype=x.dtype).view(1, -1, 1, 1)
            std = torch.tensor(image_std, dtype=x.dtype).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x.contiguous()

    def _settings(self, overrides: dict) -> dict:
        """The hook's arguments: the instance's values, overridden (and validated) by call-time keywords."""
        out = {}
        for key in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
            out[key] = bool(overrides[key]) if overrides.get(key) is not None else getattr(self, key)
        out["size"] = _size_dict(overrides["size"], "size") if overrides.get("size") else self.size
        out["crop_size"] = (
            _size_dict(overrides["crop_size"], "crop_size") if overrides.get("crop_size") else self.crop_size
        )
        rescale = overrides.get("rescale_factor")
        out["rescale_factor"] = self.rescale_factor if rescale is None else float(rescale)
        out["image_mean"] = (_channel_stats(overrides["image_mean"], "image_mean", False)
                             if overrides.get("image_mean") is not None else self.image_mean)
        out["image_std"] = (_channel_stats(overrides["image_std"], "image_std", True)
                            if overrides.get("image_std") is not None else self.image_std)
        return out

    def transform(self, frames: torch.Tensor, **overrides) -> torch.Tensor:
        """Resize, centre-crop, rescale and normalise a batch of frames (the hook with the instance's settings).

        Args:
            frames (`torch.Tensor` of shape `(N, 3, H, W)`): float in the uint8 range [0, 255].

        Returns:
            `torch.Tensor` of shape `(N, 3, crop_h, crop_w)`, float32.
        """
        return self._preprocess(frames, **self._settings(overrides))

    # -- main entry ----------------------------------------------------------------------------------------
    def _split_batch(self, videos: Any) -> tuple[list, bool]:
        if _is_source(videos) or isinstance(videos, Clips):
            return [videos], False
        if isinstance(videos, (np.ndarray, torch.Tensor)):
            if videos.ndim == 5:
                return list(videos), True
            return [videos], False
        if isinstance(videos, (list, tuple)):
            if len(videos) == 0:
                raise ValueError("videos: got an empty list")
            first = videos[0]
            if isinstance(first, Clips):
                return list(videos), True
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
                torch, uint8, or float in [0, 1] / [0, 255]), a list of PIL images (one video), a
                ``clips_xkd.Clips`` (already read: its frames are used as they are), a list of any of these (a
                batch), or a `(B, T, H, W, C)` array.
            num_frames (`int`), fps (`float`), num_clips (`int`): override the instance's values.
            video_fps (`float`, *optional*): frame rate of raw-frame inputs; they are resampled to ``fps``. When
                omitted raw frames are assumed to be at ``fps`` already.
            do_resize, size, do_center_crop, crop_size, do_rescale, rescale_factor, do_normalize, image_mean,
                image_std: override the instance's values for this call.
            return_metadata (`bool`): also return ``video_metadata`` as a key.
            return_tensors (`str`): ``"pt"`` (default torch tensors) or ``"np"``.
            do_sample_frames, device, ...: accepted for compatibility with transformers' pipelines.

        Returns:
            `BatchFeature` with ``pixel_values`` `(B, T, 3, H, W)` or `(B, num_clips, T, 3, H, W)`.
        """
        return_tensors = kwargs.pop("return_tensors", None)
        if return_tensors not in (None, "pt", "torch", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        return_metadata = bool(kwargs.pop("return_metadata", False))
        num_clips = kwargs.pop("num_clips", None)
        num_clips = self.num_clips if num_clips is None else _check_num_clips(num_clips)
        video_fps = kwargs.pop("video_fps", None)
        num_frames = kwargs.pop("num_frames", None)
        fps = kwargs.pop("fps", None)
        for key in _IGNORED_CALL_KEYS:
            kwargs.pop(key, None)
        allowed = ("do_resize", "size", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                   "do_normalize", "image_mean", "image_std")
        reject_unknown_keywords(
            "XKDVideoProcessor.preprocess", kwargs,
            allowed + ("num_frames", "fps", "num_clips", "video_fps", "return_tensors", "return_metadata"),
            _KEYWORD_ALIASES,
        )
        settings = self._settings(kwargs)
        saved = (self.num_frames, self.fps)
        try:
            if num_frames is not None:
                self.num_frames = _positive_int("num_frames", num_frames)
            if fps is not None:
                self.fps = ClipSpec.from_frames(self.num_frames, fps).fps
            items, batched = self._split_batch(videos)
            all_clips, metadata = [], []
            for i, video in enumerate(items):
                name = f"video {i}" if batched else "video"
                if isinstance(video, Clips):
                    if video.frames is None:
                        raise ValueError(f"{name}: these clips hold no frames (read them with video=True)")
                    clips, meta = video.frames, video.metadata()
                elif _is_source(video):
                    clips, meta = self._clips_from_source(video, num_clips)
                else:
                    arr = self._frames_array(video, name)
                    clips, meta = self._clips_from_frames(arr, video_fps, num_clips)
                if meta["padded"] and any(meta["num_padded_frames"]):
                    logger.warning(
                        f"XKDVideoProcessor: {meta['source']} is shorter than a {self.clip_duration:g} s clip; "
                        f"padded {meta['num_padded_frames']} frame(s) per clip by repeating the last frame."
                    )
                n, t, h, w, c = clips.shape
                x = torch.from_numpy(np.ascontiguousarray(clips)).reshape(n * t, h, w, c).permute(0, 3, 1, 2)
                x = self._preprocess(x.float(), **settings)
                if not bool(torch.isfinite(x).all()):
                    raise ValueError(f"{name}: the processed frames hold NaN or infinite values")
                all_clips.append(x.reshape(n, t, *x.shape[1:]))
                metadata.append(meta)
            counts = {v.shape[0] for v in all_clips}
            if len(counts) > 1:
                raise ValueError(f"videos: the inputs hold different numbers of clips {sorted(counts)}")
            pixel_values = torch.stack(all_clips)  # (B, clips, T, 3, H, W)
            if pixel_values.shape[1] == 1:
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
        for key in _FIELDS:  # class-attribute defaults are settings too
            output.setdefault(key, getattr(self, key))
        return output


__all__ = ["XKDVideoProcessor", "MediaDecodingError"]
