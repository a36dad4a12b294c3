"""XKDProcessor: one call on a video file with sound gives ``pixel_values`` and ``input_values`` of the same window.

The file is read once by the clip layer (``clips_xkd.read_clips``); clip ``k``'s 32 frames (8 fps) and 64,000 audio
samples (16 kHz mono) both cover ``[s_k, s_k + 4 s)``. The clips then go through the sub-processors' public entry
points: ``video_processor(clips)`` and ``feature_extractor(clips)``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .clips_xkd import ClipSpec, read_clips, reject_unknown_keywords
from .decoding_xkd import MediaDecodingError
from .feature_extraction_xkd import XKDFeatureExtractor
from .video_processing_xkd import XKDVideoProcessor


def _is_media_source(x: Any) -> bool:
    """A path, bytes or a binary file object (what the clip layer opens)."""
    return isinstance(x, (str, os.PathLike, bytes, bytearray)) or (hasattr(x, "read") and hasattr(x, "seek"))


class XKDProcessor(ProcessorMixin):
    r"""
    Pairs an :class:`XKDVideoProcessor` and an :class:`XKDFeatureExtractor`.

    Args:
        video_processor (`XKDVideoProcessor`): frame sampling and normalisation.
        feature_extractor (`XKDFeatureExtractor`): log-mel features.

    Call with ``videos=`` (paths / bytes / file objects: audio is taken from the same files and windows) and/or
    ``audio=`` (waveforms or files, processed on their own). Returns a `BatchFeature` with ``pixel_values``
    `(B[, clips], 32, 3, 112, 112)` and ``input_values`` `(B[, clips], 448, 80)`.
    """

    def __init__(self, video_processor: XKDVideoProcessor | None = None, feature_extractor: XKDFeatureExtractor | None = None):
        # Defaults let `XKDProcessor()` work out of the box; ProcessorMixin checks the classes.
        video_processor = video_processor if video_processor is not None else XKDVideoProcessor()
        feature_extractor = feature_extractor if feature_extractor is not None else XKDFeatureExtractor()
        super().__init__(video_processor, feature_extractor)

    def check_argument_for_proper_class(self, argument_name, argument):
        # transformers resolves the expected base class through top-level names and the Auto mappings, which
        # without torchvision are dummies (VideoProcessorMixin is not exported); check our own classes instead.
        expected = {"video_processor": XKDVideoProcessor, "feature_extractor": XKDFeatureExtractor}[argument_name]
        if not isinstance(argument, expected):
            raise TypeError(
                f"XKDProcessor: {argument_name} must be an {expected.__name__}, got {type(argument).__name__}"
            )
        return expected

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # Load our own classes directly instead of through AutoVideoProcessor / AutoFeatureExtractor, so loading
        # needs no Auto registration (and no torchvision, which AutoVideoProcessor defaults to).
        kwargs.pop("subfolder", None)
        for key in ("trust_remote_code", "_from_auto", "code_revision"):
            kwargs.pop(key, None)
        return [
            XKDVideoProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs),
            XKDFeatureExtractor.from_pretrained(pretrained_model_name_or_path, **kwargs),
        ]

    def __call__(
        self,
        videos: Any = None,
        audio: Any = None,
        sampling_rate: int | None = None,
        num_clips: int | None = None,
        return_tensors: str | None = "pt",
        return_metadata: bool = False,
        **kwargs,
    ) -> BatchFeature:
        """Process videos and/or audio.

        Args:
            videos: a media file (path, bytes, file object), a list of them, or raw frames (see
                :meth:`XKDVideoProcessor.preprocess`). For files without ``audio=``, the audio of the same window is
                decoded too; a file with no audio stream raises :class:`MediaDecodingError`.
            audio: waveform(s) (with ``sampling_rate``) or audio file(s), used as given.
            num_clips (`int`, *optional*): clips per input (defaults to the sub-processors' values).
            return_tensors (`str`): ``"pt"`` (default) or ``"np"``.
            return_metadata (`bool`): also return ``video_metadata``.

        Returns:
            `BatchFeature` with ``pixel_values`` and/or ``input_values``.
        """
        if videos is None and audio is None:
            raise ValueError("XKDProcessor needs `videos=` and/or `audio=`")
        if return_tensors not in (None, "pt", "torch", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        data: dict[str, Any] = {}
        metadata = None
        if videos is not None:
            if _is_media_source(videos):
                items = [videos]
            elif isinstance(videos, (list, tuple)) and videos and all(_is_media_source(v) for v in videos):
                items = list(videos)
            else:
                items = None
            if items is not None:
                pixel_values, input_values, metadata = self._paired(items, audio is None, num_clips, kwargs)
                data["pixel_values"] = pixel_values
                if input_values is not None:
                    data["input_values"] = input_values
            else:
                out = self.video_processor(videos, num_clips=num_clips, return_tensors="pt", **kwargs)
                data["pixel_values"] = out["pixel_values"]
                metadata = out.video_metadata
        if audio is not None:
            out = self.feature_extractor(audio, sampling_rate=sampling_rate, num_clips=num_clips, return_tensors="pt")
            data["input_values"] = out["input_values"]
        if return_tensors == "np":
            data = {k: v.numpy() for k, v in data.items()}
        if return_metadata and metadata is not None:
            data["video_metadata"] = metadata
        result = BatchFeature(data, skip_tensor_conversion=["video_metadata"])
        if metadata is not None:
            object.__setattr__(result, "video_metadata", metadata)
        return result

    def _paired(self, items: list, with_audio: bool, num_clips: int | None, overrides: dict):
        vp, fe = self.video_processor, self.feature_extractor
        num_clips = vp.num_clips if num_clips is None else num_clips
        clip_duration = vp.clip_duration
        if with_audio and abs(clip_duration - fe.clip_duration) > 1e-9:
            raise ValueError(
                f"XKDProcessor: the video clip ({clip_duration:g} s = {vp.num_frames} frames at {vp.fps:g} fps) and "
                f"the audio clip ({fe.clip_duration:g} s) must have the same length"
            )
        spec = ClipSpec(clip_duration, vp.fps, fe.sampling_rate)
        clips = [
            read_clips(source, spec, num_clips, audio=with_audio, require_video=True, require_audio=with_audio,
                       padding_value=fe.padding_value)
            for source in items
        ]
        video = vp(clips, return_tensors="pt", **overrides)
        input_values = fe(clips, return_tensors="pt")["input_values"] if with_audio else None
        return video["pixel_values"], input_values, video.video_metadata

    @classmethod
    def from_model_config(cls, config, **kwargs) -> "XKDProcessor":
        """Sub-processors whose outputs fit an ``XKDConfig`` and whose clips pair up (one window for both streams).

        ``XKDVideoProcessor.from_model_config`` gives the frames; the audio clip then has the video clip's length
        when a hop gives the model's ``max_length`` frames over it: the released 143 when it does (4 s -> 448), else
        ``num_samples // (max_length - 1)`` (1 s, 64 frames -> 253). ``video_kwargs`` / ``audio_kwargs`` dicts
        override any field (``XKDFeatureExtractor.from_model_config`` checks that the audio still fits the model).
        """
        reject_unknown_keywords("XKDProcessor.from_model_config", kwargs, ["video_kwargs", "audio_kwargs"])
        video = XKDVideoProcessor.from_model_config(config, **dict(kwargs.get("video_kwargs") or {}))
        audio_kwargs = dict(kwargs.get("audio_kwargs") or {})
        audio_config = getattr(config, "audio_config", None) or config
        frames = getattr(audio_config, "max_length", None)
        if "clip_duration" not in audio_kwargs and isinstance(frames, int) and frames > 1:
            samples = int(round(video.clip_duration * int(audio_kwargs.get("sampling_rate", 16000))))
            hop = audio_kwargs.get("hop_length")
            if hop is None:
                hop = 143 if 1 + samples // 143 == frames else max(1, samples // (frames - 1))
                if 1 + samples // hop == frames:
                    audio_kwargs["hop_length"] = hop
            if 1 + samples // int(hop) == frames:
                audio_kwargs["clip_duration"] = video.clip_duration
        audio = XKDFeatureExtractor.from_model_config(config, **audio_kwargs)
        return cls(video, audio)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_values"]


__all__ = ["XKDProcessor", "MediaDecodingError"]
