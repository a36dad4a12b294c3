"""Prepare training data once: clips re-encoded small, packed into WebDataset-style tar shards with a manifest.

Raw Kinetics/AudioSet files (340-480p H.264 with a 250-frame GOP) feed one core with about 1 clip/s; prepared
clips decode many times faster. :func:`prepare_shards` turns any source :func:`.data.resolve_source` accepts (a
folder, a list, a ``datasets`` dataset) into:

* ``shard-NNNNNN.tar``: WebDataset layout, two members per clip sharing a key: ``KEY.mkv`` (Matroska; H.264 at a
  chosen shorter side, default 128, a short GOP, at the native or a chosen frame rate; audio 16 kHz mono FLAC,
  lossless at 16 bits) and ``KEY.json`` (the clip's metadata: source, duration, fps, streams);
* ``shard-NNNNNN.json``: the shard's index (per clip: byte offset and size of the ``.mkv`` member inside the tar,
  stream durations) and its failures. It is written last, atomically, after the tar is in place, so it is the
  shard's "done" marker: a rerun never redoes a shard that has it;
* ``manifest.json``: all shard indexes in one column-wise file (written when every shard is done), which training
  loads in seconds instead of scanning and probing every file (see :mod:`.shards`).

The video is decoded with the package's own decoder (:class:`~transformers_xkd.decoding_xkd.MediaReader`, the frame
shown at each output time) and resized with the training resize (:func:`.data.resize_short_side`); the audio is the
decoder's 16 kHz mono waveform, quantised to 16 bits: what training reads from the prepared file is what it would
have read from the original, up to the H.264 re-encoding and the 16-bit rounding (measured in
``benchmarks/data_at_scale.py``).
"""

from __future__ import annotations

import fractions
import io
import json
import logging
import math
import os
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ..decoding_xkd import MediaDecodingError, MediaReader, target_frame_times
from ..utils_io import atomic_path, atomic_write_text
from .shards import MANIFEST_FORMAT, MANIFEST_NAME


logger = logging.getLogger(__name__)

AUDIO_CODECS = ("flac", "pcm_s16le", "pcm_f32le")
_CHUNK_SECONDS = 4.0  # video is decoded, resized and encoded in windows of this length (bounded memory)


@dataclass
class PrepareSettings:
    """How clips are re-encoded (defaults chosen by measuring; see benchmarks/results/data-at-scale-cpu.md).

    Attributes:
        short_side: shorter side of the stored video in pixels (128: a little above the 112 training crop).
        fps: stored frame rate; ``None`` keeps the native rate (the frames training picks are then the same ones).
        gop_seconds: key-frame interval in seconds (short, so a random 4 s window decodes little beyond itself).
        crf: x264 constant rate factor (lower is better quality, bigger files).
        preset: x264 speed preset.
        tune: x264 tune (e.g. ``"fastdecode"``: no CABAC, no deblocking; faster to decode, bigger), or ``None``.
        audio_codec: ``"flac"`` (the waveform rounded to 16 bits, losslessly compressed; default),
            ``"pcm_s16le"`` (the same samples uncompressed) or ``"pcm_f32le"`` (the decoder's float32 waveform
            bit for bit: exact log-mel parity, about 4x the bytes of FLAC).
        sampling_rate: stored audio rate (16 kHz, what training uses).
        max_duration: keep at most this many seconds of each input (``None``: all).
    """

    short_side: int = 128
    fps: float | None = None
    gop_seconds: float = 1.0
    crf: int = 20
    preset: str = "veryfast"
    tune: str | None = None
    audio_codec: str = "flac"
    sampling_rate: int = 16000
    max_duration: float | None = None

    def validate(self) -> None:
        if int(self.short_side) < 16:
            raise ValueError(f"short_side must be at least 16 pixels, got {self.short_side}")
        if self.fps is not None and not float(self.fps) > 0:
            raise ValueError(f"fps must be positive or None (native), got {self.fps}")
        if not float(self.gop_seconds) > 0:
            raise ValueError(f"gop_seconds must be positive, got {self.gop_seconds}")
        if self.audio_codec not in AUDIO_CODECS:
            raise ValueError(f"audio_codec must be one of {AUDIO_CODECS}, got {self.audio_codec!r}")


def transcode_clip(media: Any, settings: PrepareSettings) -> tuple[bytes, dict]:
    """One input (path, bytes or file object) -> (Matroska bytes, metadata dict). Raises ``MediaDecodingError``
    (naming the input) when it has no video or audio stream or cannot be decoded."""
    import av

    from ..clips_xkd import shorter_side_size
    from .data import resize_short_side

    started = time.perf_counter()
    with MediaReader(media) as reader:
        info = reader.info
        if not (info.has_video and info.has_audio):
            raise MediaDecodingError(reader.name, "needs both a video and an audio stream")
        v_dur = info.video_duration or info.duration
        a_dur = info.audio_duration or info.duration
        if not v_dur or not a_dur:
            raise MediaDecodingError(reader.name, "unknown stream duration")
        duration = min(v_dur, a_dur)
        if settings.max_duration is not None:
            duration = min(duration, float(settings.max_duration))
        native = info.native_fps or 25.0
        fps = float(settings.fps) if settings.fps is not None else native
        rate = fractions.Fraction(fps).limit_denominator(1001)
        num_frames = max(1, int(math.floor(duration * fps + 1e-6)))
        num_samples = int(round(duration * settings.sampling_rate))
        # The training resize (the clip layer's shorter-side rule, longer side truncated). H.264 in yuv420p needs
        # even sizes: an odd short side is rounded up before resizing, an odd longer side loses its last pixel
        # column or row (a crop, not a second resampling).
        short_side = int(settings.short_side) + int(settings.short_side) % 2
        resized_h, resized_w = shorter_side_size(info.height, info.width, short_side)
        out_h, out_w = resized_h - resized_h % 2, resized_w - resized_w % 2

        buffer = io.BytesIO()
        out = av.open(buffer, mode="w", format="matroska")
        vstream = out.add_stream("libx264", rate=rate)
        vstream.width, vstream.height, vstream.pix_fmt = out_w, out_h, "yuv420p"
        gop = max(1, int(round(settings.gop_seconds * fps)))
        vstream.codec_context.gop_size = gop
        vstream.codec_context.options = {
            "crf": str(int(settings.crf)), "preset": settings.preset,
            # fixed key-frame interval: no scene-cut key frames, so every window costs about the same to decode
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
        }
        if settings.tune:
            vstream.codec_context.options = dict(vstream.codec_context.options, tune=str(settings.tune))
        vstream.codec_context.thread_count = 1
        astream = out.add_stream(settings.audio_codec, rate=int(settings.sampling_rate))
        astream.layout = "mono"
        sample_format = "flt" if settings.audio_codec == "pcm_f32le" else "s16"
        astream.format = sample_format

        audio = reader.read(audio_window=(0.0, duration), sampling_rate=settings.sampling_rate,
                            require_audio=True).audio
        audio = np.asarray(audio[:num_samples], np.float32)
        if len(audio) < num_samples:
            audio = np.pad(audio, (0, num_samples - len(audio)))
        if sample_format == "flt":
            pcm = audio
        else:
            pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)

        index = 0
        per_chunk = max(1, int(round(_CHUNK_SECONDS * fps)))
        while index < num_frames:
            n = min(per_chunk, num_frames - index)
            times = target_frame_times(index / fps, n / fps, fps)[:n]
            frames = reader.read(frame_times=times, require_video=True).frames
            resized = resize_short_side(frames, short_side)[..., :out_h, :out_w]  # (T, 3, H', W') uint8
            for k, frame in enumerate(resized.permute(0, 2, 3, 1).numpy()):
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                vf.pts = index + k
                vf.time_base = fractions.Fraction(1) / rate
                for packet in vstream.encode(vf):
                    out.mux(packet)
            index += n
        for packet in vstream.encode(None):
            out.mux(packet)
        step = 4096
        for i in range(0, len(pcm), step):
            af = av.AudioFrame.from_ndarray(pcm[None, i:i + step].copy(), format=sample_format, layout="mono")
            af.sample_rate = int(settings.sampling_rate)
            af.pts = i
            af.time_base = fractions.Fraction(1, int(settings.sampling_rate))
            for packet in astream.encode(af):
                out.mux(packet)
        for packet in astream.encode(None):
            out.mux(packet)
        out.close()
    data = buffer.getvalue()
    meta = {
        "duration": num_frames / fps,
        "video_duration": num_frames / fps,
        "audio_duration": num_samples / settings.sampling_rate,
        "fps": fps,
        "streams": {
            "video": {"codec": "h264", "width": out_w, "height": out_h, "fps": fps, "frames": num_frames,
                      "gop": gop, "crf": int(settings.crf)},
            "audio": {"codec": settings.audio_codec, "sampling_rate": int(settings.sampling_rate), "channels": 1,
                      "samples": num_samples},
        },
        "original": {"width": info.width, "height": info.height, "fps": native, "video_codec": info.video_codec,
                     "audio_codec": info.audio_codec, "duration": info.duration},
        "bytes": len(data),
        "prepare_seconds": time.perf_counter() - started,
    }
    return data, meta


def shard_path(output_dir: str, shard: int) -> str:
    return os.path.join(output_dir, f"shard-{shard:06d}.tar")


def shard_index_path(output_dir: str, shard: int) -> str:
    return os.path.join(output_dir, f"shard-{shard:06d}.json")


def _atomic_json(path: str, value: Any) -> None:
    atomic_write_text(path, json.dumps(value), fsync=True)


def _write_shard_tar(path: str, shard: int, entries: Sequence[tuple[str, Any]], settings: PrepareSettings):
    """Transcode ``entries`` into the tar at ``path``; returns (clip metadata, failures, {key: (offset, size)})."""
    clips, failures = [], []
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for position, (name, media) in enumerate(entries):
            try:
                data, meta = transcode_clip(media, settings)
            except (ValueError, OSError, EOFError) as err:  # bad input (MediaDecodingError, PyAV's errors): reported
                # by name and the shard goes on; a bug (NameError, TypeError...) still stops the run
                failures.append({"source": name, "error": str(err) or type(err).__name__})
                continue
            key = f"{shard:06d}_{position:06d}"
            meta["source"] = name
            meta["key"] = key
            for suffix, payload in ((".json", json.dumps(meta).encode()), (".mkv", data)):
                member = tarfile.TarInfo(key + suffix)
                member.size, member.mtime, member.mode = len(payload), 0, 0o644
                tar.addfile(member, io.BytesIO(payload))
            clips.append(meta)
    # where each .mkv member's bytes start: read back from the headers (what a reader seeks to)
    offsets = {}
    with tarfile.open(path, "r") as tar:
        for member in tar.getmembers():
            if member.name.endswith(".mkv"):
                offsets[member.name[:-4]] = (member.offset_data, member.size)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    return clips, failures, offsets


def build_shard(output_dir: str, shard: int, entries: Sequence[tuple[str, Any]], settings: PrepareSettings) -> dict:
    """Transcode ``entries`` (name, media) into shard ``shard``; returns (and writes) its index.

    The tar is written under a temporary name and moved into place, then the index: an interrupted shard leaves
    no index and is rebuilt from scratch by the next run.
    """
    import torch

    torch.set_num_threads(1)  # one process per core
    final = shard_path(output_dir, shard)
    with atomic_path(final) as tmp:
        clips, failures, offsets = _write_shard_tar(tmp, shard, entries, settings)
    index = {
        "format": MANIFEST_FORMAT, "shard": shard, "tar": os.path.basename(final),
        "tar_bytes": os.path.getsize(final), "settings": asdict(settings),
        "clips": [
            {"key": c["key"], "source": c["source"], "offset": offsets[c["key"]][0], "size": offsets[c["key"]][1],
             "video_duration": c["video_duration"], "audio_duration": c["audio_duration"], "fps": c["fps"],
             "prepare_seconds": c["prepare_seconds"]}
            for c in clips
        ],
        "failures": failures,
    }
    _atomic_json(shard_index_path(output_dir, shard), index)
    return index


def shard_done(output_dir: str, shard: int) -> bool:
    """A shard is done when its index exists and its tar has the size the index recorded."""
    index_path = shard_index_path(output_dir, shard)
    if not os.path.exists(index_path):
        return False
    try:
        with open(index_path) as f:
            index = json.load(f)
        return os.path.getsize(shard_path(output_dir, shard)) == index["tar_bytes"]
    except (OSError, ValueError, KeyError):
        return False


def write_manifest(output_dir: str, num_shards_total: int) -> str:
    """Merge every shard index into ``manifest.json`` (column-wise: one list per field, fast to load)."""
    columns = {k: [] for k in ("shard", "key", "source", "offset", "size", "video_duration", "audio_duration")}
    tars, failures, settings = [], [], None
    for shard in range(num_shards_total):
        with open(shard_index_path(output_dir, shard)) as f:
            index = json.load(f)
        settings = settings or index["settings"]
        position = len(tars)
        tars.append(index["tar"])
        for clip in index["clips"]:
            columns["shard"].append(position)
            for k in ("key", "source", "offset", "size", "video_duration", "audio_duration"):
                columns[k].append(clip[k])
        failures.extend(index["failures"])
    path = os.path.join(output_dir, MANIFEST_NAME)
    _atomic_json(path, {"format": MANIFEST_FORMAT, "tars": tars, "settings": settings, "clips": columns,
                        "failures": failures})
    return path


def prepare_shards(
    entries: Sequence[tuple[str, Any]],
    output_dir: str,
    settings: PrepareSettings | None = None,
    clips_per_shard: int = 256,
    num_workers: int = 1,
    shard_index: int = 0,
    num_shards: int = 1,
    progress: bool = True,
) -> dict:
    """Prepare ``entries`` (``(name, media)`` pairs, media a path or bytes) into shards under ``output_dir``.

    The entries are cut into consecutive groups of ``clips_per_shard``; this call builds the groups ``g`` with
    ``g % num_shards == shard_index`` (so ``num_shards`` machines, each with its own ``shard_index``, share the
    work), ``num_workers`` processes at a time, skipping groups already done. When every group is done the
    manifest is written. Returns a summary: shards built/skipped, clips, failures (names and errors).
    """
    from tqdm.auto import tqdm

    settings = settings or PrepareSettings()
    settings.validate()
    if clips_per_shard < 1:
        raise ValueError(f"clips_per_shard must be at least 1, got {clips_per_shard}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard-index must be in [0, --num-shards={num_shards}), got {shard_index}")
    os.makedirs(output_dir, exist_ok=True)
    entries = list(entries)
    groups = [entries[i:i + clips_per_shard] for i in range(0, len(entries), clips_per_shard)]
    mine = [g for g in range(len(groups)) if g % num_shards == shard_index]
    todo = [g for g in mine if not shard_done(output_dir, g)]
    summary = {"shards_total": len(groups), "shards_mine": len(mine), "shards_skipped": len(mine) - len(todo),
               "shards_built": 0, "clips": 0, "failures": [], "manifest": None}
    bar = tqdm(total=sum(len(groups[g]) for g in todo), unit="clip", desc="preparing shards", disable=not progress)

    def finished(index):
        summary["shards_built"] += 1
        summary["clips"] += len(index["clips"])
        summary["failures"].extend(index["failures"])
        bar.update(len(index["clips"]) + len(index["failures"]))

    if num_workers <= 1:
        for g in todo:
            finished(build_shard(output_dir, g, groups[g], settings))
    else:
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            futures = [pool.submit(build_shard, output_dir, g, groups[g], settings) for g in todo]
            for future in as_completed(futures):
                finished(future.result())
    bar.close()
    if all(shard_done(output_dir, g) for g in range(len(groups))):
        summary["manifest"] = write_manifest(output_dir, len(groups))
    for failure in summary["failures"]:
        logger.warning("could not prepare %s: %s", failure["source"], failure["error"])
    return summary


__all__ = ["PrepareSettings", "transcode_clip", "build_shard", "prepare_shards", "write_manifest", "shard_done",
           "MANIFEST_NAME"]
