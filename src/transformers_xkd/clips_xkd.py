"""The clip layer: what a clip is, where clips start, which frames and samples they hold, how short inputs are padded.

Every consumer of clips (the processors, :func:`decode_clips`, the pretraining dataset, the frozen-feature
sampling of ``downstream.features``) calls this module for the rules below; each adds only its own augmentation.
The rules are the released code's (``docs/architecture.md``, "clip rules"):

* **ClipSpec**: a clip is ``clip_duration`` seconds [4 s]: ``num_frames = round(clip_duration * fps)`` frames at
  ``fps`` [8 -> 32] and ``num_samples = round(clip_duration * sampling_rate)`` mono samples [16 kHz -> 64,000].
* **Clip starts**: evaluation takes ``n`` uniformly spaced clips (one clip starts at 0: the released trim to 4 s;
  ``n > 1`` run from the start to the last full window); training draws each start from
  ``U(0, duration - clip_duration)`` with the caller's ``numpy`` generator (video and audio share it: the
  released synchronised window). Inputs shorter than a clip start at 0.
* **Frame index**: for every time ``t = start + k / fps`` the clip holds the native frame *shown* at ``t``: the
  last one whose time stamp is at most ``t`` (plus :data:`TIME_TOLERANCE`, 1e-4 s, for rounded container time
  stamps), the released ``int(t * native_fps)`` for a constant frame rate. The decoder (``MediaReader.read``) and
  raw frames (:func:`frame_indices`) use the same rule, so a file and its decoded frames give the same clip.
* **Padding** (reported, never silent): times past the end of the video get its last frame; audio past the end is
  ``padding_value`` (0). Every result counts its padded frames and samples.
* **Shorter-side resize**: the shorter side becomes ``short_side`` and the longer one ``floor(short_side * long /
  short)`` (truncated, as the released ``resize_clip`` and torchvision do), bilinear with PIL's antialiasing.

:func:`read_clips` (a file), :func:`clips_from_frames` (raw frames) and :func:`audio_windows` (a waveform) return a
:class:`Clips`: frames ``(K, T, H, W, 3)`` uint8, waveforms ``(K, S)`` float32, the starts, the padding counts and
a ``transformers.video_utils.VideoMetadata`` describing the source video.

Only relative imports between package modules are used here, so the file can be copied for ``trust_remote_code``.
"""

from __future__ import annotations

import difflib
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .decoding_xkd import (
    _TIME_TOLERANCE,
    DEFAULT_FPS,
    DEFAULT_SAMPLING_RATE,
    DecodedMedia,
    MediaDecodingError,
    MediaReader,
    MediaSource,
    cut_window,  # the one audio window rule; part of this module's API ("padding")
)


try:  # transformers' own metadata record for sampled videos (a Mapping dataclass)
    from transformers.video_utils import VideoMetadata
except Exception:  # pragma: no cover - very old transformers
    VideoMetadata = None


TIME_TOLERANCE = _TIME_TOLERANCE  # seconds; see the module docstring ("Frame index")
# A stream whose decoded content stops more than TRUNCATION_SLACK_S before the duration its header states, with
# more than TRUNCATION_GAP_S of the requested window (inside that duration) left empty, is reported as truncated
# (headers are often off by a frame or an audio packet, and a bad packet may leave a few ms; a cut file is off by
# much more).
TRUNCATION_SLACK_S = 1.0
TRUNCATION_GAP_S = 0.5


def reject_unknown_keywords(owner: str, given, valid, aliases: dict | None = None) -> None:
    """Raise a TypeError naming every keyword of ``given`` not in ``valid``, with the close field where there is one.

    ``aliases`` maps names used elsewhere (a model config's ``num_mel_bins``) to this object's field
    (``feature_size``); otherwise the closest valid name by spelling is suggested (``hop_lenght`` -> ``hop_length``).
    """
    valid = sorted(set(valid))
    unknown = [k for k in given if k not in valid]
    if not unknown:
        return
    notes = []
    for key in unknown:
        hint = (aliases or {}).get(key)
        if hint is None:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = close[0] if close else None
        notes.append(f"{key!r} (did you mean {hint!r}?)" if hint else repr(key))
    raise TypeError(
        f"{owner} got unexpected keyword argument(s) {', '.join(notes)}; valid ones are {', '.join(valid)}"
    )


def _positive_number(name: str, value: Any, integer: bool = False) -> float:
    """``value`` as a finite positive number, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.generic)):
        raise ValueError(f"{name} must be a positive number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive, finite number, got {value!r}")
    if integer and value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return value


@dataclass(frozen=True)
class ClipSpec:
    """What one clip is (released values in brackets).

    Attributes:
        clip_duration (`float`): seconds [4.0].
        fps (`float`): output frame rate [8.0].
        sampling_rate (`int`): output audio rate [16000].

    Derived: :attr:`num_frames` ``round(clip_duration * fps)`` [32], :attr:`num_samples`
    ``round(clip_duration * sampling_rate)`` [64,000].
    """

    clip_duration: float = 4.0
    fps: float = DEFAULT_FPS
    sampling_rate: int = DEFAULT_SAMPLING_RATE

    def __post_init__(self):
        object.__setattr__(self, "clip_duration", _positive_number("clip_duration", self.clip_duration))
        object.__setattr__(self, "fps", _positive_number("fps", self.fps))
        object.__setattr__(
            self, "sampling_rate", int(_positive_number("sampling_rate", self.sampling_rate, integer=True))
        )
        if self.num_frames < 1:
            raise ValueError(
                f"clip_duration {self.clip_duration:g} s at fps {self.fps:g} holds no frame; make the clip longer"
            )

    @classmethod
    def from_frames(cls, num_frames: int, fps: float = DEFAULT_FPS, sampling_rate: int = DEFAULT_SAMPLING_RATE):
        """The spec of ``num_frames`` frames at ``fps`` (a video processor's description of a clip)."""
        num_frames = _positive_number("num_frames", num_frames, integer=True)
        fps = _positive_number("fps", fps)
        return cls(num_frames / fps, fps, sampling_rate)

    @property
    def num_frames(self) -> int:
        return int(round(self.clip_duration * self.fps))

    @property
    def num_samples(self) -> int:
        return int(round(self.clip_duration * self.sampling_rate))

    def frame_times(self, start: float) -> np.ndarray:
        """Times ``start + k / fps``, ``k = 0 .. num_frames - 1`` (seconds, the released 1/8 s grid)."""
        return start + np.arange(self.num_frames, dtype=np.float64) / self.fps

    def clip_starts(self, total_duration: float | None, num_clips: int, rng: np.random.Generator | None = None):
        """Start times: uniform (``rng=None``, evaluation) or random (training); see :func:`clip_starts`."""
        return clip_starts(total_duration, self.clip_duration, num_clips, rng)


# --------------------------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------------------------
def _check_num_clips(num_clips: Any) -> int:
    if isinstance(num_clips, bool) or not isinstance(num_clips, (numbers.Integral, np.integer)) or num_clips < 1:
        raise ValueError(f"num_clips must be an integer >= 1, got {num_clips!r}")
    return int(num_clips)


def uniform_clip_starts(total_duration: float | None, clip_duration: float, num_clips: int) -> list[float]:
    """Evaluation starts: ``num_clips`` uniformly spaced windows of ``clip_duration`` seconds.

    One clip starts at 0 (longer inputs are clipped, as the released pipeline trims to 4 s); ``n > 1`` clips are
    spread evenly from the start to the last full window (the first starts at 0, the last ends at the end). Inputs
    shorter than a clip give every clip start 0 (the caller pads).
    """
    num_clips = _check_num_clips(num_clips)
    if num_clips == 1 or total_duration is None or total_duration <= clip_duration:
        return [0.0] * num_clips
    span = total_duration - clip_duration
    return [float(span * i / (num_clips - 1)) for i in range(num_clips)]


def random_clip_starts(
    total_duration: float | None, clip_duration: float, num_clips: int, rng: np.random.Generator
) -> list[float]:
    """Training starts: each drawn from ``U(0, total_duration - clip_duration)`` with ``rng`` (0 for short inputs).

    ``num_clips`` draws come from one ``rng.uniform(..., size=num_clips)`` call (for one clip the same value as a
    scalar draw), so a seeded generator gives the same starts wherever it is used.
    """
    num_clips = _check_num_clips(num_clips)
    if total_duration is None or total_duration <= clip_duration:
        return [0.0] * num_clips
    return [float(s) for s in rng.uniform(0.0, total_duration - clip_duration, size=num_clips)]


def clip_starts(
    total_duration: float | None, clip_duration: float, num_clips: int, rng: np.random.Generator | None = None
) -> list[float]:
    """The one clip-start rule: uniform without ``rng`` (evaluation), random with one (training)."""
    if rng is None:
        return uniform_clip_starts(total_duration, clip_duration, num_clips)
    return random_clip_starts(total_duration, clip_duration, num_clips, rng)


def frame_indices(times: np.ndarray, source_fps: float, num_source_frames: int) -> tuple[np.ndarray, int]:
    """Native frame shown at each time, for frames at a constant ``source_fps`` (frame ``i`` at ``i / fps``).

    Returns:
        (indices `(len(times),)` int64, num_padded): the last frame whose time is at most ``t + TIME_TOLERANCE``
        (the released ``int(t * fps)``), clipped to the frames that exist; ``num_padded`` counts the times past
        the end (they get the last frame), as the decoder counts them.
    """
    source_fps = _positive_number("video_fps", source_fps)
    if num_source_frames < 1:
        raise ValueError("the video has no frames")
    times = np.asarray(times, dtype=np.float64)
    native = np.arange(num_source_frames, dtype=np.float64) / source_fps
    idx = np.searchsorted(native, times + TIME_TOLERANCE, side="right") - 1
    end_of_video = num_source_frames / source_fps
    num_padded = int(np.sum(times >= end_of_video - TIME_TOLERANCE))
    return np.clip(idx, 0, num_source_frames - 1).astype(np.int64), num_padded


def shorter_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(H', W')`` with the shorter side ``short_side`` and the longer ``floor(short_side * long / short)``.

    The released ``resize_clip`` (and torchvision's ``resize``) truncates the longer side: 320x240 -> 149x112.
    """
    short_side = int(_positive_number("short_side", short_side, integer=True))
    if height <= width:
        return short_side, (short_side * width) // height
    return (short_side * height) // width, short_side


def resize_shorter_side(video: torch.Tensor, short_side: int) -> torch.Tensor:
    """Resize frames `(N, C, H, W)` so that the shorter side is ``short_side`` (bilinear, antialiased as PIL).

    uint8 input uses torch's uint8 antialiased-bilinear kernel (PIL's fixed-point filter; no float copy) and
    returns uint8; float input (uint8-range values) is resampled in float and rounded to whole grey levels, as PIL
    returns uint8 (the two differ by at most one grey level). Frames already at the size come back unchanged.
    """
    h, w = video.shape[-2:]
    size = shorter_side_size(h, w, short_side)
    if (h, w) == size:
        return video
    out = F.interpolate(video, size=size, mode="bilinear", align_corners=False, antialias=True)
    if video.dtype == torch.uint8:
        return out
    return out.round_().clamp_(0, 255)


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Clips:
    """``K`` clips of one input, cut by the rules of this module.

    Attributes:
        spec (`ClipSpec`): what each clip is.
        starts (`list[float]`): clip start times (seconds on the input's time line).
        frames (`np.ndarray` `(K, T, H, W, 3)` uint8 (or float32 in [0, 255] for float raw frames), or `None`).
        waveforms (`np.ndarray` `(K, S)` float32, or `None`).
        num_padded_frames / num_padded_samples (`list[int]`): padding per clip (see the module docstring).
        source (`str`): a printable name of the input.
        video_metadata (`VideoMetadata`, or `None`): the source video (native frame count, fps, size, duration,
            ``video_backend`` ``"pyav"`` or ``"frames"``; ``frames_indices`` for raw frames, clip after clip).
        skipped_packets (`int`): undecodable packets the decoder skipped.
        decoded (`list[DecodedMedia]`): per clip, for files (:func:`decode_clips` returns these).
        info: the decoder's `MediaInfo` for files, else `None`.
    """

    spec: ClipSpec
    starts: list
    frames: np.ndarray | None = None
    waveforms: np.ndarray | None = None
    num_padded_frames: list = field(default_factory=list)
    num_padded_samples: list = field(default_factory=list)
    source: str = ""
    video_metadata: Any = None
    skipped_packets: int = 0
    decoded: list = field(default_factory=list)
    info: Any = None

    @property
    def num_clips(self) -> int:
        return len(self.starts)

    @property
    def padded(self) -> bool:
        return bool(any(self.num_padded_frames) or any(self.num_padded_samples))

    def metadata(self) -> dict:
        """A plain dict (what the processors return as ``video_metadata``)."""
        meta = {
            "source": self.source,
            "clip_starts": list(self.starts),
            "num_padded_frames": list(self.num_padded_frames),
            "padded": self.padded,
        }
        if self.num_padded_samples:
            meta["num_padded_samples"] = list(self.num_padded_samples)
        if self.video_metadata is not None:
            meta["source_fps"] = self.video_metadata.fps
            meta["duration"] = self.video_metadata.duration
        elif self.info is not None:
            meta["source_fps"] = self.info.native_fps
            meta["duration"] = self.info.av_duration
        if self.info is not None:
            meta["skipped_packets"] = self.skipped_packets
        return meta


def _video_metadata(**kwargs):
    if VideoMetadata is None:  # pragma: no cover
        return None
    return VideoMetadata(**kwargs)


def _cut_decoded(whole: DecodedMedia, spec: ClipSpec, starts: Sequence[float], padding_value: float):
    """Per-clip `DecodedMedia` from one decode of the union of the clips' times and audio windows."""
    clips = []
    end_of_video = None
    if whole.frames is not None and len(whole.frame_times):
        n_valid = len(whole.frame_times) - whole.num_padded_frames
        end_of_video = whole.frame_times[n_valid - 1] if n_valid > 0 else -math.inf
    for s in starts:
        frames = None
        src_times = np.zeros(0)
        padded = 0
        clip_times = spec.frame_times(s)
        if whole.frames is not None:
            # the decode holds exactly these times (the same floats): look each one up
            idx = np.searchsorted(whole.frame_times, clip_times - 1e-9)
            idx = np.clip(idx, 0, len(whole.frame_times) - 1)
            if len(idx) == len(whole.frame_times) and np.array_equal(idx, np.arange(len(idx))):
                frames, src_times = whole.frames, whole.source_frame_times  # one clip: no copy
            else:
                frames, src_times = whole.frames[idx], whole.source_frame_times[idx]
            padded = int(np.sum(clip_times > end_of_video + 1e-9)) if end_of_video is not None else 0
        audio = None
        padded_samples = 0
        if whole.audio is not None:
            # padding inside the decoded span (beyond the stream's samples) sits at the end of `whole.audio`
            audio, padded_samples = cut_window(
                whole.audio, s, whole.audio_start, spec.num_samples, spec.sampling_rate, padding_value,
                valid_samples=len(whole.audio) - whole.num_padded_samples,
            )
        clips.append(
            DecodedMedia(
                frames=frames,
                frame_times=clip_times,
                source_frame_times=src_times,
                num_padded_frames=padded,
                audio=audio,
                sampling_rate=spec.sampling_rate,
                audio_start=s,
                num_padded_samples=padded_samples,
                skipped_packets=whole.skipped_packets,
                info=whole.info,
            )
        )
    return clips


def read_clips(
    source: MediaSource | MediaReader,
    spec: ClipSpec | None = None,
    num_clips: int = 1,
    *,
    starts: Sequence[float] | None = None,
    rng: np.random.Generator | None = None,
    video: bool = True,
    audio: bool = True,
    require_video: bool = False,
    require_audio: bool = False,
    padding_value: float = 0.0,
    threads: int | None = None,
) -> Clips:
    """Decode ``num_clips`` clips of a media input with one open and one demux pass.

    Args:
        source: a path, bytes, binary file object, or an open :class:`~decoding_xkd.MediaReader` (left open).
        spec (`ClipSpec`, *optional*): the clip (released 4 s, 8 fps, 16 kHz by default).
        num_clips (`int`): how many clips.
        starts (`list[float]`, *optional*): explicit start times (then ``num_clips`` and ``rng`` are ignored).
        rng (`np.random.Generator`, *optional*): random starts (training); uniform starts without it.
        video / audio (`bool`): which streams to decode; require_video / require_audio: raise when absent.
        padding_value (`float`): audio padding past the end of the stream.
        threads (`int`, *optional*): video decoder threads (1 in a DataLoader worker).

    The starts use the duration every requested, present stream covers (the container's header). Video and audio
    of clip ``k`` cover the same window ``[s_k, s_k + clip_duration)``.
    """
    spec = spec if spec is not None else ClipSpec()
    if isinstance(source, MediaReader):
        return _read_with(source, spec, num_clips, starts, rng, video, audio, require_video, require_audio,
                          padding_value)
    with MediaReader(source, threads=threads) as reader:
        return _read_with(reader, spec, num_clips, starts, rng, video, audio, require_video, require_audio,
                          padding_value)


def _read_with(reader, spec, num_clips, starts, rng, video, audio, require_video, require_audio, padding_value):
    info = reader.info
    if require_video and not info.has_video:
        raise MediaDecodingError(reader.name, "the file has no video stream (it looks audio-only)")
    if require_audio and not info.has_audio:
        raise MediaDecodingError(reader.name, "the file has no audio stream, but audio is required")
    if starts is None:
        durations = []
        if video and info.has_video and info.video_duration is not None:
            durations.append(info.video_duration)
        if audio and info.has_audio and info.audio_duration is not None:
            durations.append(info.audio_duration)
        total = min(durations) if durations else info.duration
        starts = clip_starts(total, spec.clip_duration, num_clips, rng)
    starts = [float(s) for s in starts]
    if not starts:
        raise ValueError("starts: need at least one clip start")
    unique = sorted(set(starts))
    times = np.unique(np.concatenate([spec.frame_times(s) for s in unique])) if video else None
    window = (unique[0], unique[-1] + spec.clip_duration) if audio else None
    whole = reader.read(
        frame_times=times,
        audio_window=window,
        sampling_rate=spec.sampling_rate,
        require_video=require_video,
        require_audio=require_audio,
    )
    _check_not_truncated(reader.name, info, whole, spec)
    decoded = _cut_decoded(whole, spec, starts, padding_value)
    frames = None
    if whole.frames is not None:
        # one clip: a view (no copy of the decoded frames)
        frames = decoded[0].frames[None] if len(decoded) == 1 else np.stack([c.frames for c in decoded])
        if frames.shape[1] != spec.num_frames:
            raise MediaDecodingError(reader.name, "the decoded window is incomplete")
    waveforms = np.stack([c.audio for c in decoded]) if whole.audio is not None else None
    metadata = None
    if info.has_video:
        metadata = _video_metadata(
            total_num_frames=info.num_native_frames, fps=info.native_fps, width=info.width, height=info.height,
            duration=info.video_duration, video_backend="pyav",
        )
    return Clips(
        spec=spec, starts=starts, frames=frames, waveforms=waveforms,
        num_padded_frames=[c.num_padded_frames for c in decoded] if frames is not None else [],
        num_padded_samples=[c.num_padded_samples for c in decoded] if waveforms is not None else [],
        source=reader.name, video_metadata=metadata, skipped_packets=whole.skipped_packets, decoded=decoded,
        info=info,
    )


def _check_not_truncated(name: str, info, whole: DecodedMedia, spec: ClipSpec) -> None:
    """Raise when a requested window runs into the end of a stream long before the header says the stream ends."""
    if whole.frames is not None and whole.num_padded_frames and info.video_duration:
        n_valid = len(whole.frame_times) - whole.num_padded_frames
        stop = float(whole.frame_times[n_valid]) if n_valid < len(whole.frame_times) else None
        window_end = float(whole.frame_times[-1]) + 1.0 / spec.fps
        if (stop is not None and info.video_duration - stop > TRUNCATION_SLACK_S
                and min(info.video_duration, window_end) - stop > TRUNCATION_GAP_S):
            raise MediaDecodingError(
                name, f"the file is truncated: its header says the video lasts {info.video_duration:.2f} s, but the "
                f"frames stop before {stop:.2f} s"
            )
    if whole.audio is not None and whole.num_padded_samples and info.audio_duration:
        stop = whole.audio_start + (len(whole.audio) - whole.num_padded_samples) / spec.sampling_rate
        window_end = whole.audio_start + len(whole.audio) / spec.sampling_rate
        if (info.audio_duration - stop > TRUNCATION_SLACK_S
                and min(info.audio_duration, window_end) - stop > TRUNCATION_GAP_S):
            raise MediaDecodingError(
                name, f"the file is truncated: its header says the audio lasts {info.audio_duration:.2f} s, but the "
                f"samples stop at {stop:.2f} s"
            )


def clips_from_frames(
    frames: np.ndarray,
    spec: ClipSpec | None = None,
    num_clips: int = 1,
    *,
    video_fps: float | None = None,
    starts: Sequence[float] | None = None,
    rng: np.random.Generator | None = None,
    source: str = "frames",
) -> Clips:
    """Cut clips from raw frames `(N, H, W, C)` at ``video_fps`` (default: ``spec.fps``, frames taken as they are).

    The same rules as :func:`read_clips`: the frame shown at each time (frame ``i`` at ``i / video_fps``), the
    last frame repeated past the end (counted), uniform or random starts.
    """
    spec = spec if spec is not None else ClipSpec()
    src_fps = spec.fps if video_fps is None else _positive_number("video_fps", video_fps)
    total = frames.shape[0] / src_fps
    if starts is None:
        starts = clip_starts(total, spec.clip_duration, num_clips, rng)
    starts = [float(s) for s in starts]
    picked, padded, indices = [], [], []
    for s in starts:
        idx, n_pad = frame_indices(spec.frame_times(s), src_fps, frames.shape[0])
        picked.append(frames[idx])
        padded.append(n_pad)
        indices.extend(int(i) for i in idx)
    metadata = _video_metadata(
        total_num_frames=int(frames.shape[0]), fps=src_fps, width=int(frames.shape[2]), height=int(frames.shape[1]),
        duration=total, video_backend="frames", frames_indices=indices,
    )
    return Clips(spec=spec, starts=starts, frames=np.stack(picked), num_padded_frames=padded, source=source,
                 video_metadata=metadata)


def audio_windows(
    wave: np.ndarray,
    spec: ClipSpec | None = None,
    num_clips: int = 1,
    *,
    starts: Sequence[float] | None = None,
    rng: np.random.Generator | None = None,
    padding_value: float = 0.0,
    source: str = "waveform",
) -> Clips:
    """Cut clips from a mono waveform `(S,)` at ``spec.sampling_rate`` (sample 0 at time 0), padded with
    ``padding_value`` past its end (counted)."""
    spec = spec if spec is not None else ClipSpec()
    wave = np.asarray(wave)
    if starts is None:
        starts = clip_starts(len(wave) / spec.sampling_rate, spec.clip_duration, num_clips, rng)
    starts = [float(s) for s in starts]
    windows, padded = [], []
    for s in starts:
        w, n_pad = cut_window(wave, s, 0.0, spec.num_samples, spec.sampling_rate, padding_value)
        windows.append(w)
        padded.append(n_pad)
    return Clips(spec=spec, starts=starts, waveforms=np.stack(windows), num_padded_samples=padded, source=source)


def decode_clips(
    source: MediaSource,
    num_clips: int = 1,
    clip_duration: float = 4.0,
    fps: float = DEFAULT_FPS,
    sampling_rate: int = DEFAULT_SAMPLING_RATE,
    decode_video: bool = True,
    decode_audio: bool = True,
    require_video: bool = False,
    require_audio: bool = False,
) -> tuple[list[DecodedMedia], list[float]]:
    """Decode ``num_clips`` uniformly spaced windows (:func:`uniform_clip_starts`) with one open of the input.

    A convenience over :func:`read_clips` (which owns the rules). Video and audio of clip ``k``
    cover the same window ``[s_k, s_k + clip_duration)``; the spacing uses the duration both requested streams
    cover.

    Returns:
        (clips, starts): a list of `DecodedMedia` (one per clip, frames `(clip_duration * fps, H, W, 3)`, audio
        `(clip_duration * sampling_rate,)`) and the start times in seconds.
    """
    clips = read_clips(
        source,
        ClipSpec(clip_duration, fps, sampling_rate),
        num_clips,
        video=decode_video,
        audio=decode_audio,
        require_video=require_video,
        require_audio=require_audio,
    )
    return clips.decoded, clips.starts


__all__ = [
    "reject_unknown_keywords",
    "ClipSpec",
    "Clips",
    "TIME_TOLERANCE",
    "clip_starts",
    "decode_clips",
    "uniform_clip_starts",
    "random_clip_starts",
    "frame_indices",
    "cut_window",
    "shorter_side_size",
    "resize_shorter_side",
    "read_clips",
    "clips_from_frames",
    "audio_windows",
]
