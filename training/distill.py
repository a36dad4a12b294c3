#!/usr/bin/env python
"""Supervised cross-modal distillation with the related methods CCL (CVPR 2021) and MNF + CSC (arXiv 2304.07775),
or the supervised baseline, on the transformers Trainer; tests with sliding 16-frame windows and video retrieval;
saves a pipeline("video-classification") folder with a model card.

    # CCL-A, R(2+1)D from scratch, pre-extracted 512-d audio features (CCL's released layout)
    python training/distill.py --method ccl --teacher audio --student r2plus1d --dataset ucf101 \
        --data-root UCF-101 --split-dir ucfTrainTestlist --audio-features feats/audio --filter-audio \
        --output-dir runs/ccl-a
    # MNF + CSC, an XKD video student, its own audio as the teacher through a frozen XKD audio encoder
    python training/distill.py --method mnf-csc --teacher audio --student xkd --student-checkpoint CKPT \
        --audio-teacher CKPT --dataset folder --data-root clips/ --output-dir runs/mnf

--teacher audio|image|audio+image. A teacher is either a folder of pre-extracted features (--audio-features /
--image-features, <dir>/<class>/<video>.npy; make them with training/extract_teacher_features.py) or a model run on
the fly (--audio-teacher: an XKD folder; --image-teacher: any transformers image backbone folder or Hub id).
--recipe: ccl, ccl-ai, mnf-csc, baseline (default: the method's released recipe). --set KEY=VALUE overrides a recipe
key (epochs=2, batch_size=4, lr=0.01, fps=8.0); --train-arg KEY=VALUE a TrainingArguments field (max_steps=20).
Exit codes: 0 done, 2 bad arguments or missing files (a report lists them).
"""

import argparse
import ast
import json
import sys

from transformers_xkd.downstream.datasets import MissingMediaError, SplitFileError
from transformers_xkd.downstream.distill import DISTILLATION_RECIPES, run_distillation
from transformers_xkd.downstream.runner import load_datasets



def _pairs(items, flag):
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"error: {flag} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=["ccl", "mnf-csc", "baseline"])
    p.add_argument("--teacher", default="audio", choices=["audio", "image", "audio+image"])
    p.add_argument("--student", default="r2plus1d", choices=["r2plus1d", "xkd"])
    p.add_argument("--student-checkpoint", default=None, help="XKD folder for --student xkd (else random init)")
    p.add_argument("--student-config", default=None, help="JSON dict of student config fields")
    p.add_argument("--dataset", required=True, choices=["folder", "ucf101", "hmdb51"])
    p.add_argument("--data-root", required=True)
    p.add_argument("--test-root", default=None)
    p.add_argument("--split-dir", default=None)
    p.add_argument("--split", type=int, default=1)
    p.add_argument("--audio-features", default=None, help="folder of pre-extracted audio teacher features")
    p.add_argument("--image-features", default=None, help="folder of pre-extracted image teacher features")
    p.add_argument("--audio-teacher", default=None, help="XKD folder: frozen XKDAudioModel run on the clip's sound")
    p.add_argument("--image-teacher", default=None, help="transformers image backbone (AutoModel folder or Hub id)")
    p.add_argument("--filter-audio", action="store_true",
                   help="keep only videos with an audio stream and the classes that have some (UCF101 -> UCF51)")
    p.add_argument("--recipe", default=None, choices=sorted(DISTILLATION_RECIPES))
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--config", dest="config_overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="XKDDistillationConfig fields (mnf_threshold=0.2, mnf_sparsity_all_layers=true, ...)")
    p.add_argument("--train-arg", dest="train_args", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-retrieval", action="store_true")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID")
    p.add_argument("--allow-missing", action="store_true", help="skip split entries whose file is missing")
    args = p.parse_args(argv)
    teachers = [] if args.method == "baseline" else args.teacher.split("+")
    feature_dirs = {k: v for k, v in (("audio", args.audio_features), ("image", args.image_features)) if v}
    for t in teachers:
        if t not in feature_dirs and getattr(args, f"{t}_teacher") is None:
            p.error(f"teacher {t!r} needs --{t}-features (pre-extracted) or --{t}-teacher (on the fly)")
    try:
        train, test = load_datasets(args.dataset, args.data_root, args.split_dir, args.split, "video",
                                    args.allow_missing, test_root=args.test_root)
        results = run_distillation(
            args.method, train, test, args.output_dir, teachers=teachers, student=args.student, recipe=args.recipe,
            teacher_feature_dirs=feature_dirs, audio_teacher=args.audio_teacher, image_teacher=args.image_teacher,
            student_checkpoint=args.student_checkpoint,
            student_config=json.loads(args.student_config) if args.student_config else None,
            training_overrides={**_pairs(args.overrides, "--set"), **_pairs(args.train_args, "--train-arg")},
            config_overrides=_pairs(args.config_overrides, "--config"), filter_audio=args.filter_audio,
            retrieval=not args.no_retrieval, push_to_hub=args.push_to_hub,
        )
    except (MissingMediaError, SplitFileError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {k: results[k] for k in ("method", "teachers", "student", "top1")}
    summary["retrieval"] = {k: results.get("retrieval", {}).get(k) for k in ("R@1", "R@5", "mAP@500")}
    summary["missing_teacher_features"] = results["missing_teacher_features"]
    if "audio_filter" in results:
        summary["audio_filter"] = results["audio_filter"]["summary"]
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
