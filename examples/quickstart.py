"""Helpers of scripts/quickstart.sh.

    python examples/quickstart.py make-data DIR       # a small AV-digits set (labelled train/test mp4 clips)
    python examples/quickstart.py evaluate RUN DATA   # linear probes (pretrained vs random init) + pictures
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


def make_data(out_dir: str) -> None:
    from transformers_xkd.pretraining.avdigits import make_avdigits
    from transformers_xkd.benchmarking.learning import SCALES

    spec = SCALES["quickstart"].data
    manifest = make_avdigits(out_dir, spec, workers=2)
    print(f"AV-digits: {spec.num_train} train / {spec.num_test} test clips in {out_dir} "
          f"(sound: {'espeak-ng speech' if manifest['sound'] == 'espeak' else 'synthetic tone pairs'})")


def evaluate(run_dir: str, data_dir: str) -> None:
    """FC probes (z-scored frozen features, fixed recipe) of the exported teachers next to the same network at
    its random initialisation, then the reconstruction picture and the training-log picture."""
    import json

    from transformers import AutoModel

    import transformers_xkd  # noqa: F401  (registers the Auto classes)
    from transformers_xkd.pretraining.config import build_model_config
    from transformers_xkd.benchmarking.learning import (
        decode_labelled_split, encode_features, initial_or_checkpoint_model, probe_features,
    )
    from transformers_xkd.pretraining.visualize import plot_training_log, reconstruction_figure

    with open(os.path.join(run_dir, "pretraining_config.json")) as f:
        config = json.load(f)
    seed = int(config["seed"])
    teachers_dir = os.path.join(run_dir, "teachers")
    train = decode_labelled_split(data_dir, "train", teachers_dir, 1, seed)
    test = decode_labelled_split(data_dir, "test", teachers_dir, 1, seed)
    rows = {
        "random init": initial_or_checkpoint_model(build_model_config(config), None, seed),
        "XKD pretrained": AutoModel.from_pretrained(teachers_dir).eval(),
    }
    print(f"linear probe (FC on frozen features), test top-1 % over {len(test[2])} clips of unseen digit images "
          f"and voices; chance 10")
    print(f"  {'':16s} {'video':>7s} {'audio':>7s} {'video+audio':>12s}")
    for name, model in rows.items():
        tr, te = encode_features(model, train[0], train[1]), encode_features(model, test[0], test[1])
        probes = probe_features(tr, te, train[2], test[2], train[3], test[3], seed)
        print(f"  {name:16s} {probes['video']['fc_top1']:7.1f} {probes['audio']['fc_top1']:7.1f} "
              f"{probes['fusion']['fc_top1']:12.1f}")
    clip = sorted(pathlib.Path(data_dir, "test").rglob("*.mp4"))[0]
    out = pathlib.Path(run_dir).parent
    picture = reconstruction_figure(os.path.join(run_dir, "pretraining"), str(clip), str(out / "reconstruction.png"))
    curves = plot_training_log(run_dir, str(out / "training_log.png"))
    print(f"reconstruction picture: {picture['path']}")
    print(f"loss curves and collapse monitors: {curves['path']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("make-clips").add_argument("out_dir")
    f = sub.add_parser("features")
    f.add_argument("model_dir")
    f.add_argument("clip")
    sub.add_parser("make-data").add_argument("out_dir")
    e = sub.add_parser("evaluate")
    e.add_argument("run_dir")
    e.add_argument("data_dir")
    args = parser.parse_args(argv)
    if args.command == "make-clips":
        make_clips(args.out_dir)
    elif args.command == "make-data":
        make_data(args.out_dir)
    elif args.command == "evaluate":
        evaluate(args.run_dir, args.data_dir)
    else:
        features(args.model_dir, args.clip)
    return 0


if __name__ == "__main__":
    sys.exit(main())
