"""Section 4, the data path: decode + sample + resize + audio views (+ kornia views) clips/s on ONE CPU core, real
files and synthetic 480p h264 clips. Result key: ``data_path``.
"""

from __future__ import annotations

import glob
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .harness import one_core, time_interleaved


def synthesize_clip(path: Path, width: int, height: int, seconds: float, fps: int = 30, seed: int = 0) -> None:
    """Write an h264 + AAC test clip with moving content (static frames would compress to nothing and decode
    unrealistically fast). The video bitrate is capped at 1.5 Mbit/s, about what YouTube serves at 480p (the
    uncapped noise texture came out at ~14 Mbit/s, ten times a real clip); x264's default GOP (up to 250 frames)
    is kept, so a random 4 s window usually needs several seconds of decoding from the previous key frame."""
    import av

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "veryfast", "crf": "23", "maxrate": "1500k", "bufsize": "3000k"}
        audio = container.add_stream("aac", rate=44100)
        audio.layout = "stereo"
        n_frames = int(seconds * fps)
        noise = rng.integers(0, 40, size=(height, width, 3), dtype=np.uint8)
        for i in range(n_frames):
            phase = i / fps
            r = (127 + 127 * np.sin(xx / 37.0 + 3 * phase)).astype(np.uint8)
            g = (127 + 127 * np.sin(yy / 23.0 - 2 * phase)).astype(np.uint8)
            b = (127 + 127 * np.sin((xx + yy) / 51.0 + phase)).astype(np.uint8)
            img = np.stack([r, g, b], axis=-1)
            img = np.roll(img + noise, shift=(i * 3, i * 5), axis=(0, 1))
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        samples_per_frame = 1024
        total = int(seconds * 44100)
        t0 = 0
        while t0 < total:
            t = (np.arange(samples_per_frame) + t0) / 44100
            tone = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(samples_per_frame)
            data = np.stack([tone, tone]).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(data, format="fltp", layout="stereo")
            frame.sample_rate = 44100
            frame.pts = t0
            for packet in audio.encode(frame):
                container.mux(packet)
            t0 += samples_per_frame
        for packet in audio.encode():
            container.mux(packet)


def _has_audio_and_video(path: str) -> bool:
    from transformers_xkd.decoding_xkd import MediaReader

    try:
        with MediaReader(path) as reader:
            return reader.info.has_video and reader.info.has_audio
    except Exception:
        return False


def bench_data_path(settings: dict, device: torch.device, log, media_root: Path | None = None,
                    smoke: bool = False) -> dict:
    """Clips/s of the data path on ONE CPU core: decode (PyAV, the package's reader) -> sample + resize to the
    112 short side + audio views (log-mel, jitter, local crop: the DataLoader worker's job) -> kornia video views
    (global 32x112x112 + local 8x96x96, the device's job; measured on the CPU core here, and on the GPU in the gpu
    suite). Real files (the ``video/`` folder of `media_root`; none when it is None) and synthetic 480p h264 clips;
    a smoke run measures one real file."""
    from transformers_xkd import pretraining as pre
    media_root = Path(media_root) if media_root is not None else None
    real, skipped = [], {}
    if media_root is not None:
        found = sorted(glob.glob(str(media_root / "video" / "*.mp4")) + glob.glob(str(media_root / "video" / "*.avi")))
        for path in found:
            if _has_audio_and_video(path):
                real.append(path)
            else:
                skipped[os.path.basename(path)] = "no audio stream (pretraining needs both)"
        if smoke:
            real = real[:1]
    clip_seconds = settings["data_seconds"] or 4.0
    tmp = tempfile.TemporaryDirectory(prefix="xkd_bench_")
    synth = []
    w, h = settings["synth_size"]
    for i in range(settings["synth_clips"]):
        path = Path(tmp.name) / f"synthetic_{h}p_{i}.mp4"
        synthesize_clip(path, w, h, settings["synth_seconds"], seed=i)
        synth.append(str(path))
    groups = {"real": real, f"synthetic_{h}p": synth}
    aug_batch = settings.get("augment_batch", 8)
    out = dict(pipeline=("transformers_xkd.pretraining: XKDPretrainingDataset (decode, sample, resize, audio views) "
                         "+ XKDViewMaker (kornia views)"),
               augmentation_status="measured",
               clip_seconds=clip_seconds, augment_batch=aug_batch, augment_device=device.type,
               measured_on="one CPU core (affinity mask of 1 CPU, 1 torch thread)",
               media_root=str(media_root) if media_root else None, skipped_files=skipped, groups={})
    settings_clip = pre.ClipSettings(clip_duration=clip_seconds)
    view_maker = pre.XKDViewMaker(pre.VideoViewSettings(), pre.released_local_video_settings(),
                                  settings_clip.local_num_frames).to(device)
    with one_core():
        for group, files in groups.items():
            if not files:
                out["groups"][group] = dict(files={}, skipped="no files (no media folder: --media, XKD_REAL_MEDIA "
                                                              "or ../shared/media)")
                continue
            per_file = {}
            for path in files:
                rows = []
                ds = pre.XKDPretrainingDataset(pre.ClipSource(path, [path]), [path], settings_clip, seed=0)
                samples = []
                for k in range(settings["data_clips"] + 1):  # the first clip is the warm-up
                    rng = np.random.default_rng((0, k))
                    t0 = time.perf_counter()
                    frames, audio = ds.decode(0, rng)
                    t1 = time.perf_counter()
                    sample = ds.build(frames, audio, 0, rng)
                    sample["failed"] = []
                    t2 = time.perf_counter()
                    samples.append(sample)
                    if k:
                        rows.append(dict(decode=t1 - t0, sample_and_audio=t2 - t1))
                # augmentation: batched as in training (one batch of `aug_batch` clips), per-clip cost
                batch = pre.collate_clips([samples[i % len(samples)] for i in range(aug_batch)])
                batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
                aug = time_interleaved({"augment": lambda: view_maker(batch)}, 1,
                                       max(1, settings["data_clips"]), device)["augment"]
                augment_per_clip = aug["median_s"] / aug_batch
                frame_size = list(samples[0]["video"].shape[-2:])
                decoded_size = list(frames.shape[1:3])
                med = {key: statistics.median(r[key] for r in rows) for key in ("decode", "sample_and_audio")}
                worker = med["decode"] + med["sample_and_audio"]
                total = worker + (augment_per_clip or 0.0)
                per_file[os.path.basename(path)] = dict(
                    median_s=dict(med, augment_per_clip=augment_per_clip, total=total),
                    clips_per_s=1.0 / total, worker_clips_per_s=1.0 / worker,
                    decoded_size=decoded_size, resized_size=frame_size, n=len(rows))
            totals = [v["clips_per_s"] for v in per_file.values()]
            out["groups"][group] = dict(files=per_file, median_clips_per_s=statistics.median(totals),
                                        min_clips_per_s=min(totals))
            log(f"  data path {group}: median {statistics.median(totals):.2f} clips/s/core "
                f"(min {min(totals):.2f}) over {len(files)} files; augmentation {out['augmentation_status']}")
    tmp.cleanup()
    return out


