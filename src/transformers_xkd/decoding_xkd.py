"""PyAV decoding for XKD: one open per file, frames at a target fps and 16 kHz mono audio from the same window.

The released XKD code decodes with PyAV at 8 fps (picking, for every time ``t`` on a 1/8 s grid, the native frame
shown at ``t``) and resamples audio to 16 kHz mono with the channels averaged (spec section 6.1). This module
reproduces that with no torchvision, torchaudio, torchcodec or ffmpeg program:

* :class:`MediaReader` opens a path, ``bytes`` or a binary file object once (a context manager that always closes
  the container), reports the streams (:class:`MediaInfo`) and decodes a time window in a single demux pass:
  video frames are chosen by presentation time (so variable frame rates work), audio frames are resampled to
  ``sampling_rate`` and averaged to mono, and single undecodable packets are skipped and counted.
* :func:`decode_media` decodes one window; :func:`decode_clips` plans ``num_clips`` uniformly spaced windows from
  the file's duration and decodes them with the same open container; :func:`load_audio` returns a mono waveform.
* Every failure a user can cause (missing, empty, truncated or non-media file; no video or audio stream where one
  is required) raises :class:`MediaDecodingError`, a ``ValueError`` whose message names the input and the reason.

Only relative imports between package modules are used here, so the file can be copied for ``trust_remote_code``.
"""

from __future__ import annotations

import fractions
import io
import math
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Union

import numpy as np


try:  # PyAV is a hard dependency of the package; guarded so that importing the module never fails outright.
    import av
except ImportError:  # pragma: no cover - exercised only on broken installs
    av = None


MediaSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

DEFAULT_FPS = 8.0
DEFAULT_SAMPLING_RATE = 16000
# Frames whose presentation time is within this much (seconds) after a target time still count as "shown at t":
# container time stamps are rounded (e.g. 0.1249999 for 0.125), and the released integer-index rule int(t * fps)
# would pick that frame.
_TIME_TOLERANCE = 1e-4
# Seek this far before a window start so that the interleaved audio packets also begin before the window.
_SEEK_MARGIN_S = 1.0
# A file where more packets than this fail to decode (and nothing decodes) is reported as broken.
_MAX_CONSECUTIVE_BAD_PACKETS = 200


class MediaDecodingError(ValueError):
    """A media input could not be decoded. ``str(err)`` names the input and the reason.

    Attributes:
        source (`str`): a printable name of the input (the path, or ``"<bytes: N bytes>"``).
        reason (`str`): what went wrong.
    """

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"Cannot decode {source}: {reason}")


class MediaNotFoundError(MediaDecodingError, FileNotFoundError):
    """The path does not exist. Both a ``ValueError`` (like every decoding error) and a ``FileNotFoundError``."""


def describe_source(source: Any) -> str:
    """A short printable name for a media input, used in every error message."""
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<bytes: {len(source)} bytes>"
    name = getattr(source, "name", None)
    if isinstance(name, str):
        return f"<file object {name!r}>"
    return f"<{type(source).__name__} object>"


@dataclass
class MediaInfo:
    """What the container says about its streams (durations in seconds; ``None`` where unknown)."""

    source: str
    container_format: str | None = None
    duration: float | None = None
    has_video: bool = False
    has_audio: bool = False
    video_duration: float | None = None
    video_start: float = 0.0
    native_fps: float | None = None
    width: int | None = None
    height: int | None = None
    video_codec: str | None = None
    num_native_frames: int | None = None
    audio_duration: float | None = None
    audio_start: float = 0.0
    native_sampling_rate: int | None = None
    num_channels: int | None = None
    audio_codec: str | None = None

    @property
    def av_duration(self) -> float | None:
        """Duration covered by every present stream (the shorter one when both exist)."""
        durations = [
            d
            for d, present in ((self.video_duration, self.has_video), (self.audio_duration, self.has_audio))
            if present and d is not None
        ]
        if durations:
            return min(durations)
        return self.duration


@dataclass
class DecodedMedia:
    """One decoded window.

    Attributes:
        frames (`np.ndarray` of shape `(T, H, W, 3)`, uint8 RGB, or `None`): one frame per requested time; rotation
            metadata already applied. ``None`` when video was not requested or the file has no video stream.
        frame_times (`np.ndarray` of shape `(T,)`): the requested times (seconds, file time line).
        source_frame_times (`np.ndarray` of shape `(T,)`): presentation time of the native frame used for each.
        num_padded_frames (`int`): how many requested times lie past the end of the video (filled with its last
            frame).
        audio (`np.ndarray` of shape `(S,)`, float32, or `None`): mono audio at ``sampling_rate`` covering
            ``[audio_start, audio_start + S / sampling_rate)``; zero-padded where the stream has no samples.
        num_padded_samples (`int`): how many of the ``S`` samples are padding.
        skipped_packets (`int`): packets that failed to decode and were skipped.
        info (`MediaInfo`): stream description.
    """

    frames: np.ndarray | None
    frame_times: np.ndarray
    source_frame_times: np.ndarray
    num_padded_frames: int
    audio: np.ndarray | None
    sampling_rate: int
    audio_start: float
    num_padded_samples: int
    skipped_packets: int
    info: MediaInfo
    extra: dict = field(default_factory=dict)


def _stream_seconds(value, time_base) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _rotate(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Apply display-matrix rotation (degrees, counter-clockwise as FFmpeg reports it) to an (H, W, 3) frame."""
    rotation = int(round(rotation)) % 360
    if rotation == 0:
        return frame
    # FFmpeg's `rotation` is the angle the frame must be rotated counter-clockwise to be displayed upright.
    k = {90: 1, 180: 2, 270: 3}.get(rotation)
    if k is None:  # an odd angle: leave the frame alone rather than guess
        return frame
    return np.ascontiguousarray(np.rot90(frame, k=k))


def target_frame_times(start: float, duration: float, fps: float = DEFAULT_FPS) -> np.ndarray:
    """Times ``start + k / fps`` for ``k = 0 .. round(duration * fps) - 1`` (the released 8 fps grid)."""
    num = int(round(duration * fps))
    return start + np.arange(num, dtype=np.float64) / fps


def clip_starts(total_duration: float | None, clip_duration: float, num_clips: int) -> list[float]:
    """Start times of ``num_clips`` uniformly spaced windows of ``clip_duration`` seconds.

    One clip starts at 0 (longer inputs are clipped, as the released pipeline trims to 4 s); ``n > 1`` clips are
    spread evenly from the start to the last full window (the first starts at 0, the last ends at the end). Inputs
    shorter than a clip give every clip start 0 (the caller pads).
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if num_clips == 1 or total_duration is None or total_duration <= clip_duration:
        return [0.0] * num_clips
    span = total_duration - clip_duration
    return [float(span * i / (num_clips - 1)) for i in range(num_clips)]


class MediaReader:
    """Open a media input once with PyAV; use as a context manager so the file is always closed.

    Args:
        source: a path (``str``/``os.PathLike``), ``bytes`` or a readable binary file object (seekable is best:
            files whose index sits at the end, "moov at end" mp4, need seeking).

    Raises:
        MediaNotFoundError: the path does not exist.
        MediaDecodingError: empty file, not a media file, truncated container or PyAV missing.
    """

    def __init__(self, source: MediaSource):
        self.name = describe_source(source)
        if av is None:  # pragma: no cover
            raise MediaDecodingError(self.name, "PyAV (`pip install av`) is required to decode media files")
        self._own_file = None
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            if not os.path.exists(path):
                raise MediaNotFoundError(self.name, "no such file")
            if os.path.isdir(path):
                raise MediaDecodingError(self.name, "is a directory, not a media file")
            if os.path.getsize(path) == 0:
                raise MediaDecodingError(self.name, "the file is empty (0 bytes)")
            target = path
        elif isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise MediaDecodingError(self.name, "the byte string is empty")
            self._own_file = io.BytesIO(bytes(source))
            target = self._own_file
        elif hasattr(source, "read"):
            target = source
        else:
            raise MediaDecodingError(
                self.name, "expected a path, bytes or a binary file object, got " + type(source).__name__
            )
        try:
            self.container = av.open(target, mode="r", metadata_errors="ignore")
        except Exception as err:  # PyAV raises many FFmpegError subclasses (and OSError); name the input instead
            if self._own_file is not None:
                self._own_file.close()
            raise MediaDecodingError(self.name, f"not a readable media file or truncated ({_short(err)})") from None
        self.video_stream = self.container.streams.video[0] if self.container.streams.video else None
        self.audio_stream = self.container.streams.audio[0] if self.container.streams.audio else None
        if self.video_stream is None and self.audio_stream is None:
            self.close()
            raise MediaDecodingError(self.name, "the file has no video or audio stream")
        # Multi-threaded decoding of a 30 s h264 clip is ~2x faster on 2 cores; frames keep their order.
        if self.video_stream is not None:
            self.video_stream.thread_type = "AUTO"
        self.info = self._probe()

    # -- lifecycle -------------------------------------------------------------------------------------------
    def close(self) -> None:
        container = getattr(self, "container", None)
        if container is not None:
            container.close()
            self.container = None
        if self._own_file is not None:
            self._own_file.close()
            self._own_file = None

    def __enter__(self) -> "MediaReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- probing ---------------------------------------------------------------------------------------------
    def _probe(self) -> MediaInfo:
        c = self.container
        info = MediaInfo(source=self.name, container_format=getattr(c.format, "name", None))
        if c.duration is not None:
            info.duration = c.duration / 1_000_000
        v = self.video_stream
        if v is not None:
            info.has_video = True
            info.video_codec = v.codec_context.name
            info.width, info.height = v.codec_context.width, v.codec_context.height
            rate = v.average_rate or v.guessed_rate or v.base_rate
            info.native_fps = float(rate) if rate else None
            info.num_native_frames = int(v.frames) if v.frames else None
            info.video_start = _stream_seconds(v.start_time, v.time_base) or 0.0
            info.video_duration = _stream_seconds(v.duration, v.time_base)
            if info.video_duration is None and info.num_native_frames and info.native_fps:
                info.video_duration = info.num_native_frames / info.native_fps
            if info.video_duration is None:
                info.video_duration = info.duration
        a = self.audio_stream
        if a is not None:
            info.has_audio = True
            info.audio_codec = a.codec_context.name
            info.native_sampling_rate = a.codec_context.sample_rate or a.rate
            info.num_channels = a.codec_context.channels
            info.audio_start = _stream_seconds(a.start_time, a.time_base) or 0.0
            info.audio_duration = _stream_seconds(a.duration, a.time_base)
            if info.audio_duration is None:
                info.audio_duration = info.duration
        return info

    # -- decoding --------------------------------------------------------------------------------------------
    def read(
        self,
        frame_times: np.ndarray | None = None,
        audio_window: tuple[float, float | None] | None = None,
        sampling_rate: int = DEFAULT_SAMPLING_RATE,
        require_video: bool = False,
        require_audio: bool = False,
    ) -> DecodedMedia:
        """Decode the frames shown at ``frame_times`` and the audio in ``audio_window`` in one demux pass.

        Args:
            frame_times (`np.ndarray` of shape `(T,)`, *optional*): times in seconds, measured from the start of the
                file's time line (the first frame is at ~0). ``None`` skips video.
            audio_window (`(start, end)`, *optional*): seconds; ``end=None`` reads to the end. ``None`` skips audio.
            sampling_rate (`int`): output audio rate.
            require_video / require_audio (`bool`): raise :class:`MediaDecodingError` when the stream is absent.

        Returns:
            `DecodedMedia`: frames `(T, H, W, 3)` uint8 and audio `(S,)` float32 (see its docstring).
        """
        info = self.info
        if require_video and self.video_stream is None:
            raise MediaDecodingError(self.name, "the file has no video stream (it looks audio-only)")
        if require_audio and self.audio_stream is None:
            raise MediaDecodingError(self.name, "the file has no audio stream, but audio is required")
        want_video = frame_times is not None and self.video_stream is not None
        want_audio = audio_window is not None and self.audio_stream is not None
        if frame_times is not None:
            frame_times = np.asarray(frame_times, dtype=np.float64).reshape(-1)
            if frame_times.size and np.any(np.diff(frame_times) < 0):
                raise ValueError("frame_times must be sorted in increasing order")

        # Times below are on the file's time line with the first stream starting at ~0.
        origin = min(
            [s for s, p in ((info.video_start, info.has_video), (info.audio_start, info.has_audio)) if p] or [0.0]
        )
        window_start = math.inf
        if want_audio:
            window_start = min(window_start, audio_window[0])
        if want_video and frame_times.size:
            window_start = min(window_start, float(frame_times[0]))
        if not math.isfinite(window_start):
            window_start = 0.0
        video_end = float(frame_times[-1]) if want_video and frame_times.size else -math.inf
        audio_end = (
            (math.inf if audio_window[1] is None else float(audio_window[1])) if want_audio else -math.inf
        )

        streams = [s for s, w in ((self.video_stream, want_video), (self.audio_stream, want_audio)) if w]
        if window_start > _SEEK_MARGIN_S:
            self._seek(origin + window_start - _SEEK_MARGIN_S)

        # video state
        chosen: list[np.ndarray | None] = [None] * (len(frame_times) if want_video else 0)
        chosen_times = np.full(len(chosen), np.nan)
        next_target = 0
        prev_frame = None  # (time, av.VideoFrame)
        prev_array = None
        last_frame_time = None
        frame_step = 1.0 / info.native_fps if info.native_fps else 0.0
        native_index = 0
        video_done = not want_video or len(chosen) == 0

        # audio state
        resampler = None
        audio_chunks: list[np.ndarray] = []
        audio_first_time = None
        audio_samples = 0
        audio_done = not want_audio

        skipped = 0
        consecutive_bad = 0
        decoded_any = False

        def to_array(frame) -> np.ndarray:
            arr = frame.to_ndarray(format="rgb24")
            rotation = getattr(frame, "rotation", 0) or 0
            return _rotate(arr, rotation)

        def assign_until(limit_time: float | None):
            """Give the previous frame to every pending target strictly before ``limit_time`` (None = all)."""
            nonlocal next_target, prev_array
            while next_target < len(chosen) and (
                limit_time is None or frame_times[next_target] + _TIME_TOLERANCE < limit_time
            ):
                if prev_frame is None:
                    return
                if prev_array is None:
                    prev_array = to_array(prev_frame[1])
                chosen[next_target] = prev_array
                chosen_times[next_target] = prev_frame[0]
                next_target += 1

        try:
            for packet in self.container.demux(*streams):
                if video_done and audio_done:
                    break
                stream = packet.stream
                is_video = stream.type == "video"
                if (is_video and video_done) or (not is_video and audio_done):
                    continue
                try:
                    frames = packet.decode()
                    consecutive_bad = 0
                except Exception:  # one undecodable packet (e.g. Megamind.avi's first AC3 frame): skip, go on
                    skipped += 1
                    consecutive_bad += 1
                    if consecutive_bad > _MAX_CONSECUTIVE_BAD_PACKETS and not decoded_any:
                        raise MediaDecodingError(self.name, f"{consecutive_bad} packets in a row failed to decode")
                    continue
                for frame in frames:
                    decoded_any = True
                    if is_video:
                        t = frame.time
                        t = (native_index * frame_step if t is None else float(t) - origin)
                        native_index += 1
                        if last_frame_time is not None and t <= last_frame_time:
                            # Non-increasing time stamps (broken VFR muxing): keep frames in decode order.
                            t = last_frame_time + 1e-6
                        last_frame_time = t
                        # The new frame replaces `prev` for every target at or after its time.
                        assign_until(t)
                        # Before the first frame: targets earlier than it get it (handled below when prev is None).
                        if prev_frame is None:
                            while next_target < len(chosen) and frame_times[next_target] + _TIME_TOLERANCE < t:
                                arr = to_array(frame)
                                chosen[next_target] = arr
                                chosen_times[next_target] = t
                                next_target += 1
                        prev_frame, prev_array = (t, frame), None
                        if next_target >= len(chosen) or t > video_end + 1.0:
                            video_done = next_target >= len(chosen)
                    else:
                        if resampler is None:
                            # Keep the source layout and average the channels ourselves (the released code does a
                            # plain mean; FFmpeg's own down-mix weights channels differently, e.g. for 5.1).
                            resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=sampling_rate)
                        if audio_first_time is None:
                            ft = frame.time
                            audio_first_time = (float(ft) - origin) if ft is not None else 0.0
                        for out in resampler.resample(frame):
                            chunk = out.to_ndarray()
                            audio_chunks.append(chunk.mean(axis=0, dtype=np.float64).astype(np.float32))
                            audio_samples += chunk.shape[1]
                        if audio_first_time + audio_samples / sampling_rate >= audio_end + 0.1:
                            audio_done = True
            if want_audio and resampler is not None:
                for out in resampler.resample(None):  # flush the resampler's delay line
                    chunk = out.to_ndarray()
                    audio_chunks.append(chunk.mean(axis=0, dtype=np.float64).astype(np.float32))
        except MediaDecodingError:
            raise
        except Exception as err:  # a demuxer error mid-file: keep what was decoded if anything was
            if not decoded_any:
                raise MediaDecodingError(self.name, f"decoding failed ({_short(err)})") from None

        frames_out = None
        num_padded = 0
        if want_video:
            if prev_frame is None and len(chosen):
                raise MediaDecodingError(self.name, "no video frame could be decoded (truncated or corrupt file)")
            end_of_video = (last_frame_time or 0.0) + (frame_step or 0.0)
            for i in range(next_target, len(chosen)):
                if prev_array is None:
                    prev_array = to_array(prev_frame[1])
                chosen[i] = prev_array
                chosen_times[i] = prev_frame[0]
            num_padded = int(np.sum(frame_times >= end_of_video - _TIME_TOLERANCE)) if len(chosen) else 0
            frames_out = np.stack(chosen) if len(chosen) else np.zeros((0, 0, 0, 3), np.uint8)

        audio_out = None
        padded_samples = 0
        a_start = 0.0
        if want_audio:
            a_start = float(audio_window[0])
            full = np.concatenate(audio_chunks) if audio_chunks else np.zeros(0, np.float32)
            if audio_first_time is None and not decoded_any:
                raise MediaDecodingError(self.name, "no audio could be decoded (truncated or corrupt file)")
            first = audio_first_time or 0.0
            offset = int(round((a_start - first) * sampling_rate))
            if audio_window[1] is None:
                length = max(0, len(full) - max(offset, 0))
            else:
                length = int(round((float(audio_window[1]) - a_start) * sampling_rate))
            audio_out = np.zeros(length, np.float32)
            src_lo, src_hi = max(offset, 0), min(offset + length, len(full))
            if src_hi > src_lo:
                dst_lo = src_lo - offset
                audio_out[dst_lo : dst_lo + src_hi - src_lo] = full[src_lo:src_hi]
            padded_samples = length - max(0, src_hi - src_lo)

        return DecodedMedia(
            frames=frames_out,
            frame_times=frame_times if frame_times is not None else np.zeros(0),
            source_frame_times=chosen_times,
            num_padded_frames=num_padded,
            audio=audio_out,
            sampling_rate=sampling_rate,
            audio_start=a_start,
            num_padded_samples=padded_samples,
            skipped_packets=skipped,
            info=info,
        )

    def _seek(self, seconds: float) -> None:
        """Seek (backwards, to a key frame) to ``seconds``; on failure decode from the start instead."""
        try:
            self.container.seek(int(max(seconds, 0.0) * 1_000_000), backward=True, any_frame=False)
        except Exception:
            try:
                self.container.seek(0)
            except Exception:  # not seekable (a pipe): the demux just continues from where it is
                pass


def _short(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text if len(text) < 200 else text[:197] + "..."


def decode_media(
    source: MediaSource,
    start: float = 0.0,
    duration: float | None = None,
    fps: float = DEFAULT_FPS,
    sampling_rate: int = DEFAULT_SAMPLING_RATE,
    decode_video: bool = True,
    decode_audio: bool = True,
    require_video: bool = False,
    require_audio: bool = False,
) -> DecodedMedia:
    """Decode ``[start, start + duration)`` of a media input: frames at ``fps`` and mono audio at ``sampling_rate``.

    Args:
        source: path, bytes or binary file object.
        start (`float`): window start in seconds.
        duration (`float`, *optional*): window length; ``None`` means to the end of the longest stream.
        fps (`float`): output frame rate (8 as released).
        sampling_rate (`int`): output audio rate (16000 as released).
        decode_video / decode_audio (`bool`): which streams to decode.
        require_video / require_audio (`bool`): raise when that stream is missing; otherwise it comes back `None`.

    Returns:
        `DecodedMedia` with `frames` `(round(duration * fps), H, W, 3)` uint8 and `audio`
        `(round(duration * sampling_rate),)` float32, both for the same window.
    """
    with MediaReader(source) as reader:
        info = reader.info
        if duration is None:
            ends = [d for d in (info.video_duration, info.audio_duration, info.duration) if d is not None]
            duration = max(0.0, (max(ends) if ends else 0.0) - start)
        times = target_frame_times(start, duration, fps) if decode_video else None
        window = (start, start + duration) if decode_audio else None
        return reader.read(
            frame_times=times,
            audio_window=window,
            sampling_rate=sampling_rate,
            require_video=require_video,
            require_audio=require_audio,
        )


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
    """Decode ``num_clips`` uniformly spaced windows (see :func:`clip_starts`) with one open of the input.

    Video and audio of clip ``k`` cover the same window ``[s_k, s_k + clip_duration)``. The spacing uses the
    duration both requested streams cover.

    Returns:
        (clips, starts): a list of `DecodedMedia` (one per clip, frames `(clip_duration * fps, H, W, 3)`, audio
        `(clip_duration * sampling_rate,)`) and the start times in seconds.
    """
    with MediaReader(source) as reader:
        info = reader.info
        durations = []
        if decode_video and info.has_video and info.video_duration is not None:
            durations.append(info.video_duration)
        if decode_audio and info.has_audio and info.audio_duration is not None:
            durations.append(info.audio_duration)
        total = min(durations) if durations else info.duration
        starts = clip_starts(total, clip_duration, num_clips)
        unique = sorted(set(starts))
        per_clip_frames = int(round(clip_duration * fps))
        if decode_video:
            grids = [target_frame_times(s, clip_duration, fps) for s in unique]
            times = np.unique(np.concatenate(grids)) if grids else None
        else:
            times = None
        window = (unique[0], unique[-1] + clip_duration) if decode_audio else None
        whole = reader.read(
            frame_times=times,
            audio_window=window,
            sampling_rate=sampling_rate,
            require_video=require_video,
            require_audio=require_audio,
        )
    clips = []
    end_of_video = None
    if whole.frames is not None and len(whole.frame_times):
        n_valid = len(whole.frame_times) - whole.num_padded_frames
        end_of_video = whole.frame_times[n_valid - 1] if n_valid > 0 else -math.inf
    num_samples = int(round(clip_duration * sampling_rate))
    for s in starts:
        frames = None
        src_times = np.zeros(0)
        padded = 0
        clip_times = target_frame_times(s, clip_duration, fps)
        if whole.frames is not None:
            idx = np.searchsorted(whole.frame_times, clip_times - 1e-9)
            idx = np.clip(idx, 0, len(whole.frame_times) - 1)
            frames = whole.frames[idx]
            src_times = whole.source_frame_times[idx]
            padded = int(np.sum(clip_times > end_of_video + 1e-9)) if end_of_video is not None else 0
            assert frames.shape[0] == per_clip_frames
        audio = None
        padded_samples = 0
        if whole.audio is not None:
            lo = int(round((s - whole.audio_start) * sampling_rate))
            audio = whole.audio[lo : lo + num_samples]
            if len(audio) < num_samples:
                audio = np.pad(audio, (0, num_samples - len(audio)))
            # padding inside the decoded span (beyond the stream's samples) sits at the end of `whole.audio`
            valid_total = len(whole.audio) - whole.num_padded_samples
            padded_samples = int(max(0, lo + num_samples - max(valid_total, lo)))
            padded_samples = min(padded_samples, num_samples)
        clips.append(
            DecodedMedia(
                frames=frames,
                frame_times=clip_times,
                source_frame_times=src_times,
                num_padded_frames=padded,
                audio=audio,
                sampling_rate=sampling_rate,
                audio_start=s,
                num_padded_samples=padded_samples,
                skipped_packets=whole.skipped_packets,
                info=whole.info,
            )
        )
    return clips, starts


def load_audio(
    source: MediaSource,
    sampling_rate: int = DEFAULT_SAMPLING_RATE,
    start: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Mono float32 waveform `(S,)` at ``sampling_rate`` (channels averaged); raises if there is no audio stream."""
    with MediaReader(source) as reader:
        end = None if duration is None else start + duration
        out = reader.read(audio_window=(start, end), sampling_rate=sampling_rate, require_audio=True)
    return out.audio


def resample_audio(waveform: np.ndarray, orig_sampling_rate: int, target_sampling_rate: int) -> np.ndarray:
    """Resample a mono float waveform `(S,)` with FFmpeg's resampler (through PyAV), the one file decoding uses.

    Returns:
        `np.ndarray` of shape `(round(S * target / orig),)`, float32.
    """
    waveform = np.asarray(waveform, dtype=np.float32).reshape(-1)
    if orig_sampling_rate == target_sampling_rate:
        return waveform
    if av is None:  # pragma: no cover
        raise ImportError("PyAV (`pip install av`) is required to resample audio")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=int(target_sampling_rate))
    out = []
    # Feed in chunks: FFmpeg frames hold at most INT_MAX bytes, and small frames keep memory flat.
    chunk = 1 << 16
    for i in range(0, len(waveform), chunk):
        frame = av.AudioFrame.from_ndarray(waveform[None, i : i + chunk].copy(), format="flt", layout="mono")
        frame.sample_rate = int(orig_sampling_rate)
        frame.pts = i
        frame.time_base = fractions.Fraction(1, int(orig_sampling_rate))
        out.extend(o.to_ndarray().reshape(-1) for o in resampler.resample(frame))
    out.extend(o.to_ndarray().reshape(-1) for o in resampler.resample(None))
    result = np.concatenate(out) if out else np.zeros(0, np.float32)
    expected = int(round(len(waveform) * target_sampling_rate / orig_sampling_rate))
    if len(result) < expected:
        result = np.pad(result, (0, expected - len(result)))
    return result[:expected].astype(np.float32, copy=False)
