#!/usr/bin/env python
"""Fine-tune an XKD encoder with the transformers Trainer (released recipes: ucf101, hmdb51, kinetics400, esc50,
fsd50k) and save a pipeline-ready classifier folder with a model card.

    python training/finetune.py --pretrained CKPT --dataset ucf101 --data-root UCF-101 \
        --split-dir ucfTrainTestlist --split 1 --output-dir runs/ucf101-ft [--push-to-hub user/xkd-ucf101]

--set KEY=VALUE overrides a recipe key (lr, layer_decay, mixup, cutmix, label_smoothing, epochs, batch_size,
test_clips, test_crops, ...); --train-arg KEY=VALUE overrides a TrainingArguments field (max_steps=50, bf16=true).
Repeated --set / --train-arg flags add up; a key given twice with different values, an unknown key or a value of
the wrong type is refused before any data is read.
Exit codes: 0 done, 2 bad arguments, missing or undecodable files (a report lists them), a checkpoint folder
without config.json, or a training split with fewer than two classes.
--lora trains LoRA adapters (needs the `peft` extra) on the attention and MLP projections (--lora-targets) plus
the head, saves the adapter in OUTPUT_DIR/adapter and the merged plain classifier in OUTPUT_DIR.
"""

import argparse
import sys

from transformers_xkd.cli import report_exit
from transformers_xkd.downstream.runner import parse_key_values, run_finetune


def build_parser() -> argparse.ArgumentParser:
    """The arguments (a function, so that options can be added next to the others)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", required=True, help="XKD folder or Hub id")
    p.add_argument("--dataset", required=True, choices=["folder", "ucf101", "hmdb51", "esc50"])
    p.add_argument("--data-root", required=True)
    p.add_argument("--test-root", default=None)
    p.add_argument("--split-dir", default=None)
    p.add_argument("--split", type=int, default=1)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--recipe", default=None, help="default: the dataset's recipe (ucf101 for a folder)")
    p.add_argument("--modality", default=None, choices=["video", "audio"])
    # action="extend": the items of repeated flags add up (nargs="*" alone keeps only the last flag's)
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--train-arg", dest="train_args", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID")
    p.add_argument("--base-model", default=None, help="Hub id of the pretrained checkpoint, for the card")
    p.add_argument("--allow-missing", action="store_true")
    p.add_argument("--lora", action="store_true", help="LoRA adapters instead of full fine-tuning (peft extra)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--lora-targets", nargs="+", default=None, metavar="NAME",
                   help="module names to adapt (default: qkv proj fc1 fc2)")
    return p


def lora_settings(args):
    """The --lora* flags as a LoraSettings (None without --lora); a bad value raises ValueError (exit 2)."""
    if not args.lora:
        return None
    from transformers_xkd.downstream.lora import DEFAULT_LORA_TARGET_MODULES, LoraSettings

    return LoraSettings(args.lora_rank, args.lora_alpha, args.lora_dropout,
                        tuple(args.lora_targets or DEFAULT_LORA_TARGET_MODULES))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_finetune(
            args.pretrained, args.dataset, args.data_root, args.output_dir, args.recipe, args.modality,
            args.split_dir, args.split, parse_key_values(args.overrides, "--set"),
            parse_key_values(args.train_args, "--train-arg"), args.push_to_hub, args.base_model, args.allow_missing,
            test_root=args.test_root, lora=lora_settings(args),
        )
    except (ValueError, OSError) as err:  # DownstreamUsageError, MissingMediaError, SplitFileError, decoding
        return report_exit("training/finetune.py", 2, "bad arguments, files or data", err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
