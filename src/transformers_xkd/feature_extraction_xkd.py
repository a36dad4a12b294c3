"""XKD log-mel feature extractor: a thin shell over the clip layer (``clips_xkd``) and the log-mel kernel (``log_mel_xkd``).

Released recipe (`MelSpectrogramLibrosa`; the kernel's docstring gives details and precision): a mono 16 kHz waveform
cut to ``clip_duration`` (4 s = 64,000 samples; the clip layer's start and padding rules), then the STFT (n_fft 1024,
hop 143, periodic Hann, centred reflect padding), power + 2.2e-16, Slaney mel (80 mels, 0-8000 Hz), natural log after
adding float32 eps, and ``(x - (-5.3688107)) / 4.410007``. 4 s gives 1 + 64000 // 143 = 448 frames; the output
layout is time-first, ``(batch[, clips], 448, 80)``.

The audio-classification pipeline is given PyAV decoding for XKD models (:func:`install_pyav_audio_reader`).
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import logging

from .clips_xkd import Clips, ClipSpec, _check_num_clips, audio_windows, read_clips, reject_unknown_keywords
from .decoding_xkd import MediaDecodingError, describe_source, load_audio, resample_audio
from .log_mel_xkd import (  # noqa: F401  (re-exported: the constants' old home)
    COMPUTE_DTYPES,
    FFT_ERROR_ULPS,
    GUARD_TOLERANCE,
    KINETICS_SOUND_MEAN,
    KINETICS_SOUND_STD,
    LOG_EPSILON,
    POWER_EPSILON,
    XKDLogMelSpectrogram,
)


logger = logging.get_logger(__name__)

# A float waveform peaking above this is taken for integer PCM stored as floats (int16 range): refused, not clipped.
MAX_WAVEFORM_PEAK = 4.0
# Names used elsewhere (XKDAudioConfig, librosa, torchaudio) for this extractor's fields.
_KEYWORD_ALIASES = {
    "num_mel_bins": "feature_size",
    "n_mels": "feature_size",
    "max_length": "clip_duration (max_length frames = 1 + clip_duration * sampling_rate // hop_length)",
    "sample_rate": "sampling_rate",
    "sr": "sampling_rate",
    "hop": "hop_length",
    "win_length": "n_fft",
    "fmin": "min_frequency",
    "fmax": "max_frequency",
}
# Keys a saved preprocessor_config.json holds besides the fields (transformers' bookkeeping).
_BOOKKEEPING_KEYS = ("feature_extractor_type", "processor_class", "auto_map", "padding_side")


def _is_path_like(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike, bytes, bytearray)) or (hasattr(x, "read") and hasattr(x, "seek"))


def _looks_channels_last(shape) -> bool:
    """`(samples, channels)`: a few columns (at most 8 channels) and many more rows."""
    return len(shape) == 2 and 1 < shape[1] <= 8 and shape[0] > 8 * shape[1]


def _number(name: str, value: Any, *, positive: bool = True, integer: bool = False, allow_zero: bool = False):
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.generic)):
        raise ValueError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and (value < 0 or (value == 0 and not allow_zero)):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else 'positive'}, got {value!r}")
    if integer:
        if value != int(value):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    return value


class XKDFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns audio (a waveform, a file, clips read by ``clips_xkd``, or a list of these) into XKD's normalised log-mel
    ``input_values``.

    Args:
        feature_size (`int`, defaults to 80): mel bins.
        sampling_rate (`int`, defaults to 16000): rate the features are computed at; other rates are resampled.
        n_fft (`int`, defaults to 1024): FFT size and Hann window length.
        hop_length (`int`, defaults to 143): STFT hop (about 112 frames per second).
        min_frequency / max_frequency (`float`, defaults to 0 / 8000): mel filter range (Hz).
        clip_duration (`float`, defaults to 4.0): seconds per clip; 4 s gives 448 frames.
        num_clips (`int`, defaults to 1): clips per input. 1 keeps the first ``clip_duration`` seconds (the released
            trim); ``n > 1`` takes ``n`` uniformly spaced windows and adds a clip axis to the output.
        mean / std (`float`): normalisation statistics (released Kinetics-Sound values).
        do_normalize (`bool`, defaults to `True`): apply ``(x - mean) / std``.
        padding_value (`float`, defaults to 0.0): waveform padding value for short inputs.
        compute_dtype (`str`, defaults to `"mixed"`): STFT precision (see ``log_mel_xkd``). ``"mixed"``:
            float32 with a per-frame error bound, frames that could miss the 1e-4 parity budget redone in float64;
            ``"float32"``: float32 only (fastest, up to ~1e-3 off on loud tones); ``"float64"``: float64 only.

    Unknown keywords raise a `TypeError` naming the close field (``num_mel_bins`` -> ``feature_size``); use
    :meth:`from_model_config` to match a model. Returns (from `__call__`): `BatchFeature` with ``input_values`` of
    shape `(batch, 448, 80)` (or `(batch, num_clips, 448, 80)` when ``num_clips > 1``), float32.
    """

    model_input_names = ["input_values"]

    def __init__(
        self,
        feature_size: int = 80,
        sampling_rate: int = 16000,
        n_fft: int = 1024,
        hop_length: int = 143,
        min_frequency: float = 0.0,
        max_frequency: float = 8000.0,
        clip_duration: float = 4.0,
        num_clips: int = 1,
        mean: float = KINETICS_SOUND_MEAN,
        std: float = KINETICS_SOUND_STD,
        do_normalize: bool = True,
        padding_value: float = 0.0,
        return_attention_mask: bool = False,
        compute_dtype: str = "mixed",
        **kwargs,
    ):
        reject_unknown_keywords(
            "XKDFeatureExtractor", kwargs, list(_BOOKKEEPING_KEYS) + _FIELDS, _KEYWORD_ALIASES
        )
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
        feature_size = _number("feature_size", feature_size, integer=True)
        sampling_rate = _number("sampling_rate", sampling_rate, integer=True)
        n_fft = _number("n_fft", n_fft, integer=True)
        hop_length = _number("hop_length", hop_length, integer=True)
        min_frequency = _number("min_frequency", min_frequency, allow_zero=True)
        max_frequency = _number("max_frequency", max_frequency)
        if n_fft < 2:
            raise ValueError(f"n_fft must be at least 2, got {n_fft}")
        if not min_frequency < max_frequency <= sampling_rate / 2:
            raise ValueError(
                f"min_frequency / max_frequency must satisfy 0 <= min < max <= sampling_rate / 2 "
                f"({sampling_rate / 2:g} Hz), got {min_frequency:g} / {max_frequency:g}"
            )
        clip_duration = _number("clip_duration", clip_duration)
        num_clips = _check_num_clips(num_clips)
        mean = _number("mean", mean, positive=False)
        std = _number("std", std, positive=False)
        if std == 0:
            raise ValueError("std must be non-zero (the log-mel is divided by it)")
        padding_value = _number("padding_value", padding_value, positive=False)
        super().__init__(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.min_frequency = min_frequency
        self.max_frequency = max_frequency
        self.clip_duration = clip_duration
        self.num_clips = num_clips
        self.mean = mean
        self.std = std
        self.do_normalize = do_normalize
        self.compute_dtype = compute_dtype
        self.clip_spec  # noqa: B018  (validates that a clip holds samples)
        # (n_fft // 2 + 1, feature_size), librosa-compatible; not serialised (to_dict)
        self.mel_filters = self._kernel().mel_filters

    @classmethod
    def from_model_config(cls, config, **kwargs) -> "XKDFeatureExtractor":
        """An extractor whose output fits ``config`` (an ``XKDAudioConfig``, or an ``XKDConfig``'s audio part):
        ``feature_size = num_mel_bins`` and clips of exactly ``max_length`` frames. The clip stays the released 4 s
        when that gives ``max_length`` frames (448 at hop 143); otherwise it is the shortest clip that does,
        ``(max_length - 1) * hop_length / sampling_rate`` seconds.

        ``kwargs`` override the other fields (``hop_length``, ``sampling_rate``, ``num_clips``, ...); a
        ``clip_duration`` or ``feature_size`` that does not fit the model raises, naming both.
        """
        config = getattr(config, "audio_config", None) or config
        for name in ("num_mel_bins", "max_length"):
            if not hasattr(config, name):
                raise ValueError(f"from_model_config needs an XKDAudioConfig or XKDConfig; {type(config).__name__} "
                                 f"has no {name!r}")
        frames = int(config.max_length)
        hop = _number("hop_length", kwargs.get("hop_length", 143), integer=True)
        rate = _number("sampling_rate", kwargs.get("sampling_rate", 16000), integer=True)
        if "clip_duration" not in kwargs:
            released = 4.0
            fits = 1 + int(round(released * rate)) // hop == frames
            kwargs["clip_duration"] = released if fits else (frames - 1) * hop / rate
        kwargs.setdefault("feature_size", int(config.num_mel_bins))
        out = cls(**kwargs)
        if out.num_frames != frames or out.feature_size != int(config.num_mel_bins):
            raise ValueError(
                f"from_model_config: the extractor gives {out.num_frames} frames x {out.feature_size} mels, the model "
                f"takes max_length={config.max_length} x num_mel_bins={config.num_mel_bins}"
            )
        return out

    @property
    def clip_spec(self) -> ClipSpec:
        """The clip (``clip_duration`` at ``sampling_rate``) in the clip layer's terms."""
        return ClipSpec(self.clip_duration, sampling_rate=self.sampling_rate)

    @property
    def num_samples(self) -> int:
        """Samples per clip (64,000 for 4 s at 16 kHz)."""
        return int(round(self.clip_duration * self.sampling_rate))

    @property
    def num_frames(self) -> int:
        """Spectrogram frames per clip (448 for 4 s): 1 + num_samples // hop_length (centred STFT)."""
        return 1 + self.num_samples // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("mel_filters", None)  # derived from the other fields; a 513 x 80 list would bloat the json
        output.pop("_mel_plans", None)  # (folders saved before the kernel moved to log_mel_xkd)
        output.pop("_log_mel_kernel", None)  # the kernel and its cached constants (tensors)
        output.pop("_log_mel_key", None)
        return output

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_log_mel_kernel", None)  # rebuilt on demand (and may hold accelerator tensors)
        state.pop("_log_mel_key", None)
        return state

    # -- the kernel ------------------------------------------------------------------------------------------
    def _kernel(self) -> XKDLogMelSpectrogram:
        """The log-mel kernel for the current settings (rebuilt when a setting changes)."""
        settings = (self.feature_size, self.sampling_rate, self.n_fft, self.hop_length, self.min_frequency,
                    self.max_frequency, self.mean, self.std, self.do_normalize, self.compute_dtype)
        kernel = self.__dict__.get("_log_mel_kernel")
        if kernel is None or self.__dict__.get("_log_mel_key") != settings:
            kernel = XKDLogMelSpectrogram(
                feature_size=self.feature_size, sampling_rate=self.sampling_rate, n_fft=self.n_fft,
                hop_length=self.hop_length, min_frequency=self.min_frequency, max_frequency=self.max_frequency,
                mean=self.mean, std=self.std, do_normalize=self.do_normalize, compute_dtype=self.compute_dtype,
            )
            self.__dict__["_log_mel_kernel"], self.__dict__["_log_mel_key"] = kernel, settings
        return kernel

    def log_mel(self, waveforms: torch.Tensor | np.ndarray, device: str | torch.device | None = None) -> torch.Tensor:
        """Released log-mel of a batch of equal-length mono waveforms (:meth:`XKDLogMelSpectrogram.log_mel`).

        Args:
            waveforms (`torch.Tensor` or `np.ndarray` of shape `(N, S)` or `(S,)`): float waveforms at
                ``sampling_rate``; ``S`` must exceed ``n_fft // 2`` (the reflect padding).
            device (`str` or `torch.device`, *optional*): where to compute, e.g. ``"cuda"``.

        Returns:
            `torch.Tensor` of shape `(N, 1 + S // hop_length, feature_size)`, float32, on ``device``.
        """
        return self._kernel().log_mel(waveforms, device=device)

    def _log_mel_batched(self, x: torch.Tensor, exact: torch.Tensor | None, mode: str) -> torch.Tensor:
        """The kernel's whole-batch (accelerator) path, for cross-checks."""
        return self._kernel()._log_mel_batched(x, exact, mode)

    # -- inputs ----------------------------------------------------------------------------------------------
    def _check_waveform(self, wave: Any, name: str) -> np.ndarray:
        if torch.is_tensor(wave):
            wave = wave.detach().cpu().numpy()
        if not isinstance(wave, np.ndarray):
            try:
                wave = np.asarray(wave)
            except Exception:
                raise ValueError(f"{name}: expected a 1-D float waveform, got {type(wave).__name__}") from None
        if wave.dtype == object or not (np.issubdtype(wave.dtype, np.floating)):
            raise ValueError(
                f"{name}: expected a float waveform in [-1, 1], got dtype {wave.dtype}. Convert integer PCM first, "
                "e.g. `x.astype(np.float32) / 32768` for int16."
            )
        if wave.ndim == 2 and 1 in wave.shape:
            wave = wave.reshape(-1)
        elif wave.ndim == 2 and _looks_channels_last(wave.shape):
            raise ValueError(
                f"{name}: got shape {tuple(wave.shape)}, which looks like channels-last (samples, channels) audio. "
                "Average the channels first (`x.mean(axis=1)`)."
            )
        if wave.ndim != 1:
            raise ValueError(
                f"{name}: expected a 1-D mono waveform, got shape {tuple(wave.shape)}. Average the channels first "
                "(`x.mean(axis=0)`) or pass a list of 1-D waveforms for a batch."
            )
        if wave.size == 0:
            raise ValueError(f"{name}: the waveform is empty (0 samples)")
        if not np.all(np.isfinite(wave)):
            bad = int(np.sum(~np.isfinite(wave)))
            raise ValueError(f"{name}: the waveform contains {bad} NaN or infinite samples")
        peak = float(np.abs(wave).max())
        if peak > MAX_WAVEFORM_PEAK:
            raise ValueError(
                f"{name}: the waveform peaks at {peak:g}, far outside [-1, 1]: it looks like integer PCM stored as "
                "floats (int16 range). Scale it first, e.g. `x / 32768`."
            )
        return wave.astype(np.float32, copy=False)

    def _clips_of(self, item: Any, name: str, sampling_rate: int | None, num_clips: int) -> Clips:
        """One input -> its clips (the clip layer's rules): a file is decoded, a waveform cut, clips passed on."""
        spec = self.clip_spec
        if isinstance(item, Clips):
            if item.waveforms is None:
                raise ValueError(f"{name}: these clips hold no audio (read them with audio=True)")
            return item
        if _is_path_like(item):
            return read_clips(item, spec, num_clips, video=False, require_audio=True, padding_value=self.padding_value)
        wave = self._check_waveform(item, name)
        rate = self.sampling_rate if sampling_rate is None else sampling_rate
        if rate != self.sampling_rate:
            wave = resample_audio(wave, rate, self.sampling_rate)
        return audio_windows(wave, spec, num_clips, padding_value=self.padding_value, source=name)

    def _windows(self, wave: np.ndarray, num_clips: int) -> list[np.ndarray]:
        """Split a waveform `(S,)` at ``sampling_rate`` into ``num_clips`` windows (``clips_xkd.audio_windows``)."""
        return list(audio_windows(wave, self.clip_spec, num_clips, padding_value=self.padding_value).waveforms)

    def _load(self, source: Any, num_clips: int) -> list[np.ndarray]:
        """Decode a file to ``num_clips`` windows, decoding only what they need (``clips_xkd.read_clips``)."""
        clips = read_clips(source, self.clip_spec, num_clips, video=False, require_audio=True,
                           padding_value=self.padding_value)
        return list(clips.waveforms)

    def __call__(
        self,
        raw_audio: Any,
        sampling_rate: int | None = None,
        num_clips: int | None = None,
        return_tensors: str | None = None,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Compute ``input_values`` for one input or a batch.

        Args:
            raw_audio: a 1-D float waveform in [-1, 1] (numpy or torch), a 2-D `(batch, samples)` array, a path /
                bytes / binary file object (decoded with PyAV, channels averaged, resampled), a ``clips_xkd.Clips``
                (already read: its waveforms are used as they are), a ``{"array" | "raw": ..., "sampling_rate": ...}``
                dict, or a list of these. Refused with a message: integer PCM (convert it), channels-last
                `(samples, channels)` arrays, floats in the int16 range, NaN/inf.
            sampling_rate (`int`, *optional*): rate of waveform inputs; resampled (PyAV) when it differs from
                ``self.sampling_rate``. Defaults to ``self.sampling_rate`` (a warning is logged).
            num_clips (`int`, *optional*): overrides ``self.num_clips``.
            return_tensors (`str`, *optional*): ``"pt"`` or ``"np"``; lists of arrays otherwise.
            device (`str` or `torch.device`, *optional*): where to compute the log-mel (e.g. ``"cuda"``).
            padding, truncation, max_length, return_attention_mask: accepted for transformers' pipelines when they
                ask for nothing else (the clip length is ``clip_duration``): ``max_length`` must equal the frames
                per clip if given.

        Returns:
            `BatchFeature` with ``input_values`` `(batch, 448, 80)` or `(batch, num_clips, 448, 80)`.
        """
        max_length = kwargs.pop("max_length", None)
        if max_length is not None and int(max_length) != self.num_frames:
            raise ValueError(
                f"max_length={max_length}: this extractor gives {self.num_frames} frames per clip; change "
                "clip_duration (or build it with XKDFeatureExtractor.from_model_config) instead"
            )
        for key in ("padding", "truncation", "return_attention_mask"):
            kwargs.pop(key, None)  # pipeline compatibility: the clip length is fixed by clip_duration
        reject_unknown_keywords("XKDFeatureExtractor.__call__", kwargs, ["sampling_rate", "num_clips",
                                "return_tensors", "device", "padding", "truncation", "max_length"], _KEYWORD_ALIASES)
        if return_tensors not in (None, "pt", "torch", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        num_clips = self.num_clips if num_clips is None else _check_num_clips(num_clips)
        if sampling_rate is not None:
            sampling_rate = _number("sampling_rate", sampling_rate, integer=True)

        if isinstance(raw_audio, dict):  # pipeline-style {"array"/"raw": ..., "sampling_rate": ...}
            wave = raw_audio.get("array", raw_audio.get("raw"))
            if wave is None:
                raise ValueError("raw_audio: a dict input needs an 'array' or 'raw' key")
            rate = raw_audio.get("sampling_rate", sampling_rate)
            sampling_rate = None if rate is None else _number("sampling_rate", rate, integer=True)
            raw_audio = wave
        if isinstance(raw_audio, (list, tuple)):
            if len(raw_audio) == 0:
                raise ValueError("raw_audio: got an empty list")
            items = list(raw_audio)
            batched = True
            # a list of floats is one waveform, not a batch
            if all(isinstance(v, (int, float, np.floating)) for v in items):
                items, batched = [np.asarray(items, dtype=np.float32)], False
        elif (isinstance(raw_audio, np.ndarray) or torch.is_tensor(raw_audio)) and raw_audio.ndim == 2 and (
            raw_audio.shape[0] > 1 and raw_audio.shape[1] > 1
        ):
            if _looks_channels_last(tuple(raw_audio.shape)):
                raise ValueError(
                    f"raw_audio: got shape {tuple(raw_audio.shape)}, which looks like channels-last (samples, "
                    "channels) audio, not a batch; average the channels first (`x.mean(axis=1)`), or pass a list "
                    "of 1-D waveforms for a batch."
                )
            items, batched = list(raw_audio), True
        else:
            items, batched = [raw_audio], False

        has_waveforms = any(not (_is_path_like(v) or isinstance(v, Clips)) for v in items)
        if has_waveforms and sampling_rate is None:
            logger.warning_once(
                "XKDFeatureExtractor: no `sampling_rate` given with a waveform; assuming "
                f"{self.sampling_rate} Hz. Pass `sampling_rate=` to avoid silent errors."
            )
        clips = [
            self._clips_of(item, f"waveform {i}" if batched else "waveform", sampling_rate, num_clips)
            for i, item in enumerate(items)
        ]
        per_item = {c.num_clips for c in clips}
        if len(per_item) > 1:
            raise ValueError(f"raw_audio: the inputs hold different numbers of clips {sorted(per_item)}")
        k = per_item.pop()
        features = self.log_mel(np.concatenate([c.waveforms for c in clips]), device=device)  # (B * K, T, mels)
        if not bool(torch.isfinite(features).all()):
            raise ValueError("XKDFeatureExtractor: the log-mel holds NaN or infinite values (check mean / std)")
        if k > 1:
            features = features.reshape(len(items), k, *features.shape[1:])
        if return_tensors in ("pt", "torch"):
            return BatchFeature({"input_values": features})
        arr = features.cpu().numpy()
        if return_tensors == "np":
            return BatchFeature({"input_values": arr}, tensor_type="np")
        return BatchFeature({"input_values": list(arr)})


_FIELDS = [
    "feature_size", "sampling_rate", "n_fft", "hop_length", "min_frequency", "max_frequency", "clip_duration",
    "num_clips", "mean", "std", "do_normalize", "padding_value", "return_attention_mask", "compute_dtype",
]


# --------------------------------------------------------------------------------------------------------------
# The audio-classification pipeline, given PyAV decoding for XKD feature extractors
# --------------------------------------------------------------------------------------------------------------
def pyav_ffmpeg_read(bpayload: bytes, sampling_rate: int) -> np.ndarray:
    """PyAV version of ``transformers.pipelines.audio_classification.ffmpeg_read`` (same signature and output:
    `(S,)` float32 mono, channels averaged, at ``sampling_rate``). Not installed anywhere; a helper."""
    return load_audio(bpayload, sampling_rate=sampling_rate)


def _pipeline_audio(inputs: Any, feature_extractor) -> Any:
    """What the pipeline's own ``preprocess`` gets for an XKD extractor: files decoded with PyAV (errors name the
    path), dicts at another rate resampled with PyAV; anything else unchanged."""
    rate = feature_extractor.sampling_rate
    if isinstance(inputs, str) and inputs.startswith(("http://", "https://")):
        return inputs  # the pipeline downloads it, then hands us the bytes
    if isinstance(inputs, (str, os.PathLike, bytes, bytearray)):
        return {"array": load_audio(inputs, sampling_rate=rate), "sampling_rate": rate}
    if isinstance(inputs, dict) and "sampling_rate" in inputs and ("raw" in inputs or "array" in inputs):
        wave = inputs["raw"] if inputs.get("raw") is not None else inputs.get("array")
        in_rate = int(inputs["sampling_rate"])
        if wave is not None and in_rate != rate:
            if torch.is_tensor(wave):
                wave = wave.detach().cpu().numpy()
            wave = np.asarray(wave)
            if wave.ndim != 1 or not np.issubdtype(wave.dtype, np.floating):
                raise ValueError(
                    f"audio dict: expected a 1-D float waveform, got dtype {wave.dtype} and shape {tuple(wave.shape)}"
                )
            return {"array": resample_audio(wave, in_rate, rate), "sampling_rate": rate}
    return inputs


def install_pyav_audio_reader() -> bool:
    """Let ``pipeline("audio-classification")`` decode files and resample dict inputs with PyAV for XKD models.

    transformers' audio-classification pipeline pipes a file's bytes to an ``ffmpeg`` program (which may be
    missing, cannot seek in "moov at end" mp4 files, and reports errors about ``<bytes>``) and resamples
    ``{"raw", "sampling_rate"}`` inputs with torchaudio. There is no hook for either, so this wraps
    ``AudioClassificationPipeline.preprocess`` once: when the pipeline's feature extractor declares
    ``decodes_pipeline_media`` (every XKD feature extractor does), a path or bytes is decoded by PyAV (errors name
    the path) and a dict at another rate is resampled by PyAV; every other pipeline runs transformers' code
    unchanged (``ffmpeg_read`` itself is not replaced). Applied when this module is imported (also when a saved
    folder is loaded with ``trust_remote_code=True``); idempotent; :func:`uninstall_pyav_audio_reader` restores
    the original. Returns whether the wrapper is in place.
    """
    try:
        from transformers.pipelines.audio_classification import AudioClassificationPipeline
    except Exception:  # pragma: no cover - pipelines unavailable: nothing to wrap
        return False
    current = AudioClassificationPipeline.preprocess
    if getattr(current, "_xkd_pyav_wrapper", False):
        return True
    original = current

    def preprocess(self, inputs, *args, **kwargs):
        if getattr(self.feature_extractor, "decodes_pipeline_media", False):
            inputs = _pipeline_audio(inputs, self.feature_extractor)
        return original(self, inputs, *args, **kwargs)

    preprocess._xkd_pyav_wrapper = True
    preprocess._xkd_original = original
    preprocess.__doc__ = original.__doc__
    AudioClassificationPipeline.preprocess = preprocess
    return True


def uninstall_pyav_audio_reader() -> bool:
    """Undo :func:`install_pyav_audio_reader` (restores transformers' ``preprocess``). Returns whether it did."""
    try:
        from transformers.pipelines.audio_classification import AudioClassificationPipeline
    except Exception:  # pragma: no cover
        return False
    current = AudioClassificationPipeline.preprocess
    if not getattr(current, "_xkd_pyav_wrapper", False):
        return False
    AudioClassificationPipeline.preprocess = current._xkd_original
    return True


XKDFeatureExtractor.decodes_pipeline_media = True  # see install_pyav_audio_reader
install_pyav_audio_reader()


__all__ = [
    "XKDFeatureExtractor",
    "XKDLogMelSpectrogram",
    "install_pyav_audio_reader",
    "uninstall_pyav_audio_reader",
    "pyav_ffmpeg_read",
]
