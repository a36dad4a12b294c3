"""Synthesise small media files with PyAV so that the decoding tests run anywhere (no shared media needed).

Every writer returns the path it wrote. Videos show a bright square moving left to right over a dark
background (so frame order and timing can be checked: the square's x position grows with time); audio is a
sine tone (so sampling rate and channel mixing can be checked).
"""

from __future__ import annotations

import fractions
import pathlib

import av
import numpy as np


def moving_square_frame(index: int, num_frames: int, width: int, height: int) -> np.ndarray:
    """`(H, W, 3)` uint8: a 16-px bright square whose left edge moves linearly with `index`."""
    frame = np.full((height, width, 3), 20, np.uint8)
    side = max(4, min(16, height // 3, width // 3))
    x = int(round((width - side) * index / max(num_frames - 1, 1)))
    y = (height - side) // 2
    frame[y : y + side, x : x + side] = (230, 200, 40)
    return frame


def square_x(frame: np.ndarray) -> float:
    """Mean column of the bright square in an `(H, W, 3)` frame (used to check which frame was picked)."""
    mask = frame.astype(np.float32).mean(axis=-1) > 100
    cols = np.nonzero(mask.any(axis=0))[0]
    return float(cols.mean()) if cols.size else float("nan")


def tone(duration: float, sampling_rate: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    """`(channels, S)` float32 sine; channel c has amplitude 0.5 / (c + 1) so the channel mean is known."""
    t = np.arange(int(round(duration * sampling_rate))) / sampling_rate
    base = np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([base * (0.5 / (c + 1)) for c in range(channels)])


_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


def write_media(
    path: pathlib.Path | str,
    duration: float = 2.0,
    fps: int = 25,
    size: tuple[int, int] = (64, 48),
    video: bool = True,
    audio: bool = True,
    sampling_rate: int = 16000,
    channels: int = 1,
    video_codec: str | None = None,
    pix_fmt: str | None = None,
    audio_codec: str | None = None,
    freq: float = 440.0,
) -> pathlib.Path:
    """Write a small file; the container comes from the suffix (.mp4 / .avi / .mkv / .wav).

    mp4 files are written the way PyAV's mp4 muxer does by default: index ("moov") at the end of the file.
    ``size`` is ``(width, height)``; odd sizes need a codec that allows them (ffv1 is chosen automatically).
    """
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    width, height = size
    with av.open(str(path), mode="w") as out:
        vs = as_ = None
        if video:
            odd = width % 2 or height % 2
            codec = video_codec or ("ffv1" if (odd or pix_fmt == "gray") else "mpeg4")
            vs = out.add_stream(codec, rate=fps)
            vs.width, vs.height = width, height
            vs.pix_fmt = pix_fmt or ("yuv420p" if codec == "mpeg4" else "bgr0" if codec == "ffv1" else "yuv420p")
        if audio:
            codec = audio_codec or ("aac" if suffix == ".mp4" else "pcm_s16le")
            as_ = out.add_stream(codec, rate=sampling_rate, layout=_LAYOUTS[channels])
        if vs is not None:
            n = int(round(duration * fps))
            for i in range(n):
                rgb = moving_square_frame(i, n, width, height)
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                if vs.pix_fmt == "gray":
                    frame = frame.reformat(format="gray")
                for packet in vs.encode(frame):
                    out.mux(packet)
            for packet in vs.encode():
                out.mux(packet)
        if as_ is not None:
            samples = tone(duration, sampling_rate, channels, freq)
            fmt = "fltp" if as_.codec_context.name == "aac" else "s16p"
            if fmt == "s16p":
                samples = (samples * 32767).astype(np.int16)
            chunk = 1024
            for start in range(0, samples.shape[1], chunk):
                piece = np.ascontiguousarray(samples[:, start : start + chunk])
                frame = av.AudioFrame.from_ndarray(piece, format=fmt, layout=_LAYOUTS[channels])
                frame.sample_rate = sampling_rate
                frame.pts = start
                frame.time_base = fractions.Fraction(1, sampling_rate)
                for packet in as_.encode(frame):
                    out.mux(packet)
            for packet in as_.encode():
                out.mux(packet)
    return path


def moov_at_end(path: pathlib.Path | str) -> bool:
    """Whether an mp4's "moov" box comes after its "mdat" box."""
    data = pathlib.Path(path).read_bytes()
    return data.find(b"moov") > data.find(b"mdat") >= 0
