#!/usr/bin/env python
"""Pre-extract frozen teacher features for training/distill.py: one <out>/<class>/<video>.npy per video (the layout
of CCL's released audiocnn14embed512 features). Cached and resumable: existing files are kept unless --overwrite;
files are written atomically; a progress bar shows the videos.

    python training/extract_teacher_features.py --kind audio --teacher CKPT --dataset ucf101 --data-root UCF-101 \
        --split-dir ucfTrainTestlist --subset train --out feats/audio [--num-clips 3]
    python training/extract_teacher_features.py --kind image --teacher microsoft/resnet-34 --dataset folder \
        --data-root clips/train --out feats/image

--kind audio: an XKD folder (its XKDAudioModel); video: its XKDVideoModel; image: any transformers image backbone
(AutoModel). --num-clips > 1 stores a (num_clips, D) array, of which training draws one row per step.
Exit codes: 0 done, 2 bad arguments or missing files.
"""

import argparse
import json
import sys

from transformers_xkd.downstream.datasets import MissingMediaError, SplitFileError, load_split
from transformers_xkd.downstream.distill import extract_teacher_features


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", required=True, choices=["audio", "video", "image"])
    p.add_argument("--teacher", required=True, help="XKD folder (audio/video) or image backbone folder / Hub id")
    p.add_argument("--dataset", required=True, choices=["folder", "ucf101", "hmdb51"])
    p.add_argument("--data-root", required=True)
    p.add_argument("--split-dir", default=None)
    p.add_argument("--split", type=int, default=1)
    p.add_argument("--subset", default="train", choices=["train", "test"])
    p.add_argument("--out", required=True)
    p.add_argument("--num-clips", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--allow-missing", action="store_true")
    args = p.parse_args(argv)
    try:
        ds = load_split(args.dataset, args.data_root, args.subset, args.split_dir, args.split, "video",
                        allow_missing=args.allow_missing)
        if args.kind == "audio":
            from transformers_xkd import XKDAudioModel, XKDFeatureExtractor
            from transformers_xkd.downstream.runner import load_processors

            teacher = XKDAudioModel.from_pretrained(args.teacher)
            _, fe = load_processors(args.teacher, False, True)
            vp = None
        elif args.kind == "video":
            from transformers_xkd import XKDVideoModel
            from transformers_xkd.downstream.runner import load_processors

            teacher = XKDVideoModel.from_pretrained(args.teacher)
            vp, fe = load_processors(args.teacher, True, False)
        else:
            from transformers import AutoModel

            teacher, vp, fe = AutoModel.from_pretrained(args.teacher), None, None
        report = extract_teacher_features(teacher, args.kind, ds, args.out, video_processor=vp, feature_extractor=fe,
                                          num_clips=args.num_clips, batch_size=args.batch_size, device=args.device,
                                          overwrite=args.overwrite)
    except (MissingMediaError, SplitFileError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
