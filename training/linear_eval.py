#!/usr/bin/env python
"""Linear evaluation of a frozen XKD checkpoint: linear SVM cost sweep (default) or FC probe.

    python training/linear_eval.py --checkpoint CKPT --dataset ucf101 --data-root UCF-101 \
        --split-dir ucfTrainTestlist --split 1 --modality video --cache-dir feats/ [--output-dir out/] \
        [--push-to-hub user/xkd-ucf101-svm]

--dataset: folder (DATA_ROOT/train/<class>/clip and DATA_ROOT/test/<class>/clip), ucf101, hmdb51 (SPLIT_DIR holds
the *_test_split<N>.txt files), esc50 (DATA_ROOT/meta/esc50.csv; --split is the test fold). Features are cached in
--cache-dir (keyed by checkpoint, file list, protocol and processors), so re-runs skip extraction. --output-dir
receives the results JSON and, for single-modality runs, the encoder + linear head as a pipeline-ready
classifier folder with a model card; --push-to-hub uploads that folder.
--protocol retrieval: video retrieval instead (test videos query the training videos by cosine similarity of their
mean clip features; R@1/5/10/20 and mAP@500; --test-clips clips per video, default 3).
Undecodable clips: refused (every file's header is read first; the files that cannot be decoded are listed).
Exit codes: 0 done, 2 bad arguments, missing or undecodable files (a report lists them), a checkpoint folder
without config.json, or a training split with fewer than two classes.
"""

import argparse
import sys

from transformers_xkd.cli import int_at_least, report_exit
from transformers_xkd.downstream.features import LINEAR_EVAL_PROTOCOLS
from transformers_xkd.downstream.runner import run_linear_eval


def fail(err: Exception) -> int:
    return report_exit("training/linear_eval.py", 2, "bad arguments, files or data", err)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="XKD folder (pretraining, XKDModel, tower or classifier)")
    p.add_argument("--dataset", required=True, choices=["folder", "ucf101", "hmdb51", "esc50"])
    p.add_argument("--data-root", required=True)
    p.add_argument("--test-root", default=None, help="folder dataset: test folder (default DATA_ROOT/test)")
    p.add_argument("--split-dir", default=None, help="folder of the official split lists")
    p.add_argument("--split", type=int, default=1, help="official split (UCF/HMDB 1-3) or ESC-50 test fold (1-5)")
    p.add_argument("--modality", default="video", choices=["video", "audio", "audio_visual"])
    p.add_argument("--protocol", default=None, choices=[*LINEAR_EVAL_PROTOCOLS, "retrieval"],
                   help="clip-count preset, or `retrieval` for video retrieval (default: the dataset's preset)")
    p.add_argument("--classifier", default="svm", choices=["svm", "fc"])
    p.add_argument("--costs", type=float, nargs="+", action="extend", default=None,
                   help="SVM costs (default: released sweep; repeated flags add up)")
    p.add_argument("--train-clips", type=int_at_least(1), default=None)
    p.add_argument("--test-clips", type=int_at_least(1), default=None)
    p.add_argument("--probe-epochs", type=int_at_least(1), default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--output-dir", default=None)
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID")
    p.add_argument("--base-model", default=None, help="Hub id of the pretrained checkpoint, for the card")
    p.add_argument("--batch-size", type=int_at_least(1), default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--allow-missing", action="store_true", help="skip split entries whose file is missing")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.push_to_hub and not args.output_dir:
        p.error("--push-to-hub needs --output-dir (the folder that is pushed)")
    if args.protocol == "retrieval":  # video retrieval (R@k, mAP@500), as the MNF + CSC release evaluates it
        from transformers_xkd.downstream.retrieval import run_retrieval_eval

        try:
            metrics = run_retrieval_eval(args.checkpoint, args.dataset, args.data_root, args.split_dir, args.split,
                                         args.modality, args.test_clips or 3, args.cache_dir, args.output_dir,
                                         args.batch_size, args.device, args.allow_missing, test_root=args.test_root)
        except (ValueError, OSError) as err:  # MissingMediaError, SplitFileError, decoding
            return fail(err)
        print(metrics)
        return 0
    try:
        run_linear_eval(
            args.checkpoint, args.dataset, args.data_root, args.modality, args.split_dir, args.split, args.protocol,
            args.classifier, args.costs, args.train_clips, args.test_clips, args.cache_dir, args.output_dir,
            args.push_to_hub, args.base_model, args.batch_size, args.device, args.allow_missing, args.probe_epochs,
            args.seed, test_root=args.test_root,
        )
    except (ValueError, OSError) as err:  # DownstreamUsageError, MissingMediaError, SplitFileError, decoding
        return fail(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
