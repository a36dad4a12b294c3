#!/usr/bin/env python
"""Convert the released XKD checkpoints (github.com/pritamqu/XKD, tag `weights`) into transformers-xkd folders.

    python conversion/convert_xkd_original_to_hf.py \
        --video-checkpoint XKD_pretext_kinetics400_ep799vid_teacher.pth.tar \
        --audio-checkpoint XKD_pretext_kinetics400_ep799aud_teacher.pth.tar \
        --variant xkd --output-dir xkd-vitb-k400 [--full-checkpoint checkpoint.pth.tar] \
        [--repo-id xkd/vitb-k400 --push-to-hub] [--pretraining-dataset kinetics400|audioset]

Backbone files -> an `XKDModel` folder at --output-dir. A full `checkpoint.pth.tar` -> an `XKDForPretraining`
folder (at --output-dir when no backbone files are given, else at --pretraining-output-dir); --export-teachers DIR
also writes its teacher encoders as an `XKDModel` folder. The mapping lives in `transformers_xkd.convert_original`.
Every output folder is checked (distinct, empty or --overwrite, writable) before anything is converted or written;
temporary folders left by a killed run are removed. Exit codes: 0 done, 2 bad arguments or input files (the
message names the file or argument), 3 the upload failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--video-checkpoint", type=Path, help="released video backbone file (vid_teacher/vid_student)")
    parser.add_argument("--audio-checkpoint", type=Path, help="released audio backbone file (aud_teacher/aud_student)")
    parser.add_argument("--variant", required=True, choices=["xkd", "xkd-mas", "xkd-mats"])
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--full-checkpoint", type=Path, help="released checkpoint.pth.tar (resumable training state)")
    parser.add_argument("--pretraining-output-dir", type=Path,
                        help="where the XKDForPretraining folder goes when backbone files are given too "
                             "(default: <output-dir>-pretraining)")
    parser.add_argument("--export-teachers", type=Path, metavar="DIR",
                        help="with --full-checkpoint: also write its teacher encoders as an XKDModel folder")
    parser.add_argument("--config", type=Path,
                        help="config.json (or folder) of an XKDConfig with every size; default: the released "
                             "configuration, with tower widths/depths read from the files")
    parser.add_argument("--role", choices=["teacher", "student"],
                        help="which towers the backbone files are (default: read from the file names)")
    parser.add_argument("--pretraining-dataset", default="kinetics400", choices=["kinetics400", "audioset"],
                        help="for the model card's description and reported numbers")
    parser.add_argument("--repo-id", help="Hub repo id, e.g. xkd/vitb-k400 (used in the card; target of --push-to-hub)")
    parser.add_argument("--push-to-hub", action="store_true", help="upload --output-dir to --repo-id afterwards")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.repo_id:
        parser.error("--push-to-hub needs --repo-id")
    if args.export_teachers and not args.full_checkpoint:
        parser.error("--export-teachers needs --full-checkpoint")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers_xkd.cli import report_exit
    from transformers_xkd.convert_original import (
        ConversionError,
        convert_to_folders,
        load_config_file,
    )
    from transformers_xkd.hub import push_folder_to_hub

    try:
        config = None
        if args.config is not None:
            config = load_config_file(args.config)
        folders = convert_to_folders(
            variant=args.variant, output_dir=args.output_dir, video_checkpoint=args.video_checkpoint,
            audio_checkpoint=args.audio_checkpoint, full_checkpoint=args.full_checkpoint,
            pretraining_output_dir=args.pretraining_output_dir, export_teachers_dir=args.export_teachers,
            config=config, role=args.role, pretraining_dataset=args.pretraining_dataset, repo_id=args.repo_id,
            overwrite=args.overwrite,
        )
    except (ConversionError, OSError) as err:  # OSError: e.g. a folder that became unwritable while converting
        return report_exit("convert_xkd_original_to_hf.py", 2, "bad arguments or input files", err)
    for name, folder in folders.items():
        print(f"wrote {name} folder: {folder}")
    if args.push_to_hub:
        try:
            url = push_folder_to_hub(args.output_dir, args.repo_id,
                                     commit_message="Add XKD weights converted from the original release")
        except RuntimeError as err:
            return report_exit("convert_xkd_original_to_hf.py", 3, "the upload failed; the converted folder is complete", err)
        print(f"pushed {args.output_dir} to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
