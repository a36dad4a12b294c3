"""XKD log-mel feature extractor: the released ``MelSpectrogramLibrosa`` recipe, batched with ``torch.stft``.

Released recipe (spec section 6.4), reproduced to <= 1e-4 after normalisation (tested against librosa):

1. mono 16 kHz waveform, trimmed or zero-padded to ``clip_duration`` (4 s = 64,000 samples);
2. STFT: n_fft 1024, hop 143, periodic Hann window of 1024, centred frames with reflect padding;
3. power ``|X|^2 + 2.2e-16``;
4. Slaney-scale, Slaney-normalised mel filters (80 mels, 0-8000 Hz) applied to the power spectrum;
5. natural log after adding float32 eps (1.1920929e-07) (not dB);
6. normalisation ``(x - (-5.3688107)) / 4.410007`` (Kinetics-Sound statistics).

4 s gives 1 + 64000 // 143 = 448 frames; the output layout is time-first, ``(batch[, clips], 448, 80)``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import logging

from .decoding_xkd import MediaReader, clip_starts, load_audio, resample_audio


logger = logging.get_logger(__name__)

# Released constants (spec section 6.4).
POWER_EPSILON = 2.2e-16
LOG_EPSILON = float(np.finfo(np.float32).eps)  # 1.1920929e-07
KINETICS_SOUND_MEAN = -5.3688107
KINETICS_SOUND_STD = 4.410007


def _is_path_like(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike, bytes, bytearray)) or (hasattr(x, "read") and hasattr(x, "seek"))


class XKDFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns audio (a waveform, a file, or a list of either) into XKD's normalised log-mel ``input_values``.

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

    Returns (from `__call__`): `BatchFeature` with ``input_values`` of shape `(batch, 448, 80)` (or
    `(batch, num_clips, 448, 80)` when ``num_clips > 1``), float32.
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
        **kwargs,
    ):
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
        # (n_fft // 2 + 1, feature_size), librosa-compatible (htk=False, norm="slaney"); not serialised (to_dict).
        self.mel_filters = mel_filter_bank(
            num_frequency_bins=n_fft // 2 + 1,
            num_mel_filters=feature_size,
            min_frequency=min_frequency,
            max_frequency=max_frequency,
            sampling_rate=sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        )

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
        return output

    # ---------------------------------------------------------------------------------------------------------
    def log_mel(self, waveforms: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Released log-mel of a batch of equal-length mono waveforms.

        Args:
            waveforms (`torch.Tensor` or `np.ndarray` of shape `(N, S)`): float waveforms at ``sampling_rate``.

        Returns:
            `torch.Tensor` of shape `(N, 1 + S // hop_length, feature_size)`, float32, normalised when
            ``do_normalize``.
        """
        x = torch.as_tensor(np.asarray(waveforms) if not torch.is_tensor(waveforms) else waveforms)
        # float64 throughout: the log amplifies float32 STFT round-off in quiet bins beyond the 1e-4 parity budget.
        x = x.to(torch.float64)
        if x.ndim == 1:
            x = x[None]
        window = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64)  # librosa's get_window("hann")
        spec = torch.stft(
            x,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.n_fft,
            window=window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )  # (N, n_fft // 2 + 1, frames)
        power = spec.real.square() + spec.imag.square() + POWER_EPSILON
        mel = torch.as_tensor(self.mel_filters, dtype=torch.float64).T @ power  # (N, mels, frames)
        log_mel = torch.log(mel + LOG_EPSILON)
        if self.do_normalize:
            log_mel = (log_mel - self.mean) / self.std
        return log_mel.transpose(1, 2).to(torch.float32).contiguous()

    # ---------------------------------------------------------------------------------------------------------
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
        return wave.astype(np.float32, copy=False)

    def _windows(self, wave: np.ndarray, num_clips: int) -> list[np.ndarray]:
        """Split a 16 kHz waveform `(S,)` into ``num_clips`` windows of ``num_samples`` (zero-padded at the end)."""
        n = self.num_samples
        starts = clip_starts(len(wave) / self.sampling_rate, self.clip_duration, num_clips)
        out = []
        for s in starts:
            lo = int(round(s * self.sampling_rate))
            w = wave[lo : lo + n]
            if len(w) < n:
                w = np.pad(w, (0, n - len(w)), constant_values=self.padding_value)
            out.append(w)
        return out

    def _load(self, source: Any, num_clips: int) -> list[np.ndarray]:
        """Decode a file to ``num_clips`` 16 kHz windows, decoding only what the windows need."""
        with MediaReader(source) as reader:
            total = reader.info.audio_duration
            starts = clip_starts(total, self.clip_duration, num_clips)
            end = max(starts) + self.clip_duration
            decoded = reader.read(
                audio_window=(0.0 if num_clips == 1 else min(starts), end),
                sampling_rate=self.sampling_rate,
                require_audio=True,
            )
        wave = decoded.audio
        out = []
        for s in starts:
            lo = int(round((s - decoded.audio_start) * self.sampling_rate))
            w = wave[lo : lo + self.num_samples]
            if len(w) < self.num_samples:
                w = np.pad(w, (0, self.num_samples - len(w)), constant_values=self.padding_value)
            out.append(w)
        return out

    def __call__(
        self,
        raw_audio: Any,
        sampling_rate: int | None = None,
        num_clips: int | None = None,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Compute ``input_values`` for one input or a batch.

        Args:
            raw_audio: a 1-D float waveform (numpy or torch), a 2-D `(batch, samples)` array, a path / bytes /
                binary file object (decoded with PyAV, channels averaged, resampled to 16 kHz), or a list of these.
            sampling_rate (`int`, *optional*): rate of waveform inputs; resampled when it differs from
                ``self.sampling_rate``. Defaults to ``self.sampling_rate`` (a warning is logged).
            num_clips (`int`, *optional*): overrides ``self.num_clips``.
            return_tensors (`str`, *optional*): ``"pt"`` or ``"np"``; lists of arrays otherwise.

        Returns:
            `BatchFeature` with ``input_values`` `(batch, 448, 80)` or `(batch, num_clips, 448, 80)`.
        """
        for key in ("padding", "truncation", "max_length", "return_attention_mask"):
            kwargs.pop(key, None)  # accepted for pipeline compatibility; clip length is fixed by clip_duration
        if kwargs:
            raise TypeError(f"XKDFeatureExtractor got unexpected keyword arguments: {sorted(kwargs)}")
        num_clips = self.num_clips if num_clips is None else int(num_clips)
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")

        if isinstance(raw_audio, dict):  # pipeline-style {"array"/"raw": ..., "sampling_rate": ...}
            wave = raw_audio.get("array", raw_audio.get("raw"))
            sampling_rate = raw_audio.get("sampling_rate", sampling_rate)
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
            items, batched = list(raw_audio), True
        else:
            items, batched = [raw_audio], False

        has_waveforms = any(not _is_path_like(v) for v in items)
        if has_waveforms and sampling_rate is None:
            logger.warning_once(
                "XKDFeatureExtractor: no `sampling_rate` given with a waveform; assuming "
                f"{self.sampling_rate} Hz. Pass `sampling_rate=` to avoid silent errors."
            )
        windows: list[np.ndarray] = []
        for i, item in enumerate(items):
            if _is_path_like(item):
                windows.extend(self._load(item, num_clips))
                continue
            name = f"waveform {i}" if batched else "waveform"
            wave = self._check_waveform(item, name)
            rate = self.sampling_rate if sampling_rate is None else int(sampling_rate)
            if rate != self.sampling_rate:
                wave = resample_audio(wave, rate, self.sampling_rate)
            windows.extend(self._windows(wave, num_clips))

        features = self.log_mel(np.stack(windows))  # (B * clips, frames, mels)
        if num_clips > 1:
            features = features.reshape(len(items), num_clips, *features.shape[1:])
        if return_tensors in ("pt", "torch"):
            data = {"input_values": features}
            return BatchFeature(data)
        arr = features.numpy()
        if return_tensors == "np":
            return BatchFeature({"input_values": arr}, tensor_type="np")
        return BatchFeature({"input_values": list(arr)})



def pyav_ffmpeg_read(bpayload: bytes, sampling_rate: int) -> np.ndarray:
    """Drop-in for ``transformers.pipelines.audio_classification.ffmpeg_read`` that decodes with PyAV.

    Args:
        bpayload (`bytes`): the whole file.
        sampling_rate (`int`): output rate.

    Returns:
        `np.ndarray` of shape `(S,)`, float32 mono (channels averaged), like the original.
    """
    return load_audio(bpayload, sampling_rate=sampling_rate)


def install_pyav_audio_reader() -> bool:
    """Make ``pipeline("audio-classification")`` decode file paths and bytes with PyAV instead of the ``ffmpeg``
    program.

    transformers' audio-classification pipeline reads a path into bytes and pipes them to an ``ffmpeg``
    subprocess (`ffmpeg_read`): it fails where no ffmpeg program is installed, and on mp4 files whose index sits
    at the end (a pipe cannot seek). There is no hook to hand the path to the feature extractor, so this swaps
    that module-level function for :func:`pyav_ffmpeg_read` (same signature and output: mono float32 at the
    requested rate). Called when this module is imported (which also happens when a saved folder is loaded with
    ``trust_remote_code=True``); idempotent. Returns whether the reader is now PyAV's.
    """
    try:
        from transformers.pipelines import audio_classification
    except Exception:  # pragma: no cover - pipelines unavailable: nothing to patch
        return False
    if getattr(audio_classification, "ffmpeg_read", None) is not pyav_ffmpeg_read:
        audio_classification._original_ffmpeg_read = getattr(audio_classification, "ffmpeg_read", None)
        audio_classification.ffmpeg_read = pyav_ffmpeg_read
    return True


install_pyav_audio_reader()


__all__ = ["XKDFeatureExtractor", "install_pyav_audio_reader", "pyav_ffmpeg_read"]
