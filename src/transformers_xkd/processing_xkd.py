"""XKDProcessor: one call on a video file with sound gives ``pixel_values`` and ``input_values`` of the same window.

The file is opened once (``decoding_xkd.decode_clips``); clip ``k``'s 32 frames (8 fps) and 64,000 audio samples
(16 kHz mono) both cover ``[s_k, s_k + 4 s)``. Frames go through :class:`XKDVideoProcessor`'s transforms and the
waveform through :class:`XKDFeatureExtractor`'s log-mel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .decoding_xkd import MediaDecodingError, decode_clips, describe_source
from .feature_extraction_xkd import XKDFeatureExtractor
from .video_processing_xkd import XKDVideoProcessor, _is_source


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
        data: dict[str, Any] = {}
        metadata = None
        if videos is not None:
            if _is_source(videos):
                items = [videos]
            elif isinstance(videos, (list, tuple)) and videos and all(_is_source(v) for v in videos):
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
        num_clips = int(num_clips or vp.num_clips)
        clip_duration = vp.clip_duration
        if with_audio and abs(clip_duration - fe.clip_duration) > 1e-9:
            raise ValueError(
                f"XKDProcessor: the video clip ({clip_duration:g} s = {vp.num_frames} frames at {vp.fps:g} fps) and "
                f"the audio clip ({fe.clip_duration:g} s) must have the same length"
            )
        videos, audios, metadata = [], [], []
        for source in items:
            clips, starts = decode_clips(
                source,
                num_clips=num_clips,
                clip_duration=clip_duration,
                fps=vp.fps,
                sampling_rate=fe.sampling_rate,
                decode_audio=with_audio,
                require_video=True,
                require_audio=with_audio,
            )
            frames = np.stack([c.frames for c in clips]).astype(np.float32)  # (clips, T, H, W, 3)
            n, t, h, w, ch = frames.shape
            x = torch.from_numpy(frames).reshape(n * t, h, w, ch).permute(0, 3, 1, 2)
            x = vp.transform(x, **overrides)
            videos.append(x.reshape(n, t, *x.shape[1:]))
            if with_audio:
                audios.append(fe.log_mel(np.stack([c.audio for c in clips])))  # (clips, 448, 80)
            padded = [c.num_padded_frames for c in clips]
            metadata.append(
                {
                    "source": describe_source(source),
                    "clip_starts": starts,
                    "num_padded_frames": padded,
                    "num_padded_samples": [c.num_padded_samples for c in clips],
                    "padded": any(padded) or any(c.num_padded_samples for c in clips),
                    "source_fps": clips[0].info.native_fps,
                    "duration": clips[0].info.av_duration,
                    "skipped_packets": clips[0].skipped_packets,
                }
            )
        pixel_values = torch.stack(videos)
        input_values = torch.stack(audios) if with_audio else None
        if num_clips == 1:
            pixel_values = pixel_values[:, 0]
            input_values = input_values[:, 0] if input_values is not None else None
        return pixel_values, input_values, metadata

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_values"]


__all__ = ["XKDProcessor", "MediaDecodingError"]
