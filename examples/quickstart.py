"""Helpers of scripts/quickstart.sh.

    python examples/quickstart.py make-clips DIR      # demo clips: the shared media when present, else synthetic
    python examples/quickstart.py features MODEL CLIP # load an exported XKDModel and print the features of a clip
"""

import argparse
import os
import pathlib
import shutil
import sys

import numpy as np


def _shared_media() -> pathlib.Path | None:
    candidates = [os.environ.get("XKD_REAL_MEDIA"), pathlib.Path(__file__).resolve().parents[2] / "shared" / "media"]
    for candidate in candidates:
        if candidate and (pathlib.Path(candidate) / "video").is_dir():
            return pathlib.Path(candidate)
    return None


def _synthetic_clip(path: pathlib.Path, seconds: float, seed: int) -> None:
    """A moving square over a coloured background with a tone: enough for a smoke run of the pipeline."""
    import av

    rng = np.random.default_rng(seed)
    fps, rate, size = 24, 16000, 64
    color = rng.integers(0, 255, 3, dtype=np.uint8)
    freq = float(rng.uniform(200, 2000))
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=rate, layout="mono")
        for i in range(int(seconds * fps)):
            frame = np.empty((size, size, 3), dtype=np.uint8)
            frame[:] = color
            x = (i * 3) % (size - 16)
            frame[20:36, x:x + 16] = 255 - color
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        t = np.arange(int(seconds * rate)) / rate
        samples = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = samples[start:start + 1024][None]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = rate
            for packet in audio.encode(frame):
                container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                container.mux(packet)


def make_clips(out_dir: str) -> None:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    media = _shared_media()
    if media is not None:
        for name in ("b.mp4", "b.avi", "world.mp4", "Megamind.avi", "muted_b.mp4"):
            source = media / "video" / name
            if source.exists():
                shutil.copy(source, out / name)
        print(f"demo clips: copied the shared real media from {media} (muted_b.mp4 has no sound and is filtered out)")
    else:
        for seed in range(6):
            _synthetic_clip(out / f"synthetic_{seed}.mp4", seconds=2.0, seed=seed)
        print("demo clips: synthesised 6 two-second clips (no shared media found)")


def features(model_dir: str, clip: str) -> None:
    import torch

    import transformers_xkd  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModel

    from transformers_xkd import XKDModel, XKDProcessor

    model = AutoModel.from_pretrained(model_dir).eval()
    assert isinstance(model, XKDModel)
    processor = XKDProcessor.from_pretrained(model_dir)
    inputs = processor(clip, return_tensors="pt")
    with torch.no_grad():
        video = model.get_video_features(inputs["pixel_values"]).pooler_output
        audio = model.get_audio_features(inputs["input_values"]).pooler_output
        fused = model.get_audio_visual_features(inputs["pixel_values"], inputs["input_values"])
    print(f"clip: {clip}")
    print(f"  pixel_values {tuple(inputs['pixel_values'].shape)} -> video feature {tuple(video.shape)}: "
          f"{np.array2string(video[0, :6].numpy(), precision=3)} ...")
    print(f"  input_values {tuple(inputs['input_values'].shape)} -> audio feature {tuple(audio.shape)}: "
          f"{np.array2string(audio[0, :6].numpy(), precision=3)} ...")
    print(f"  audio-visual (L2-normalised late fusion) {tuple(fused.shape)}, norm {fused.norm().item():.4f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("make-clips").add_argument("out_dir")
    f = sub.add_parser("features")
    f.add_argument("model_dir")
    f.add_argument("clip")
    args = parser.parse_args(argv)
    if args.command == "make-clips":
        make_clips(args.out_dir)
    else:
        features(args.model_dir, args.clip)
    return 0


if __name__ == "__main__":
    sys.exit(main())
