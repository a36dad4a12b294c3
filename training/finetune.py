#!/usr/bin/env python
"""Fine-tune an XKD encoder with the transformers Trainer (released recipes: ucf101, hmdb51, kinetics400, esc50,
fsd50k) and save a pipeline-ready classifier folder with a model card.

    python training/finetune.py --pretrained CKPT --dataset ucf101 --data-root UCF-101 \
        --split-dir ucfTrainTestlist --split 1 --output-dir runs/ucf101-ft [--push-to-hub user/xkd-ucf101]

--set KEY=VALUE overrides a recipe key (lr, layer_decay, mixup, cutmix, label_smoothing, epochs, batch_size,
test_clips, test_crops, ...); --train-arg KEY=VALUE overrides a TrainingArguments field (max_steps=50, bf16=true).
--lora trains LoRA adapters (needs the `peft` extra) on the attention and MLP projections (--lora-targets) plus
the head, saves the adapter in OUTPUT_DIR/adapter and the merged plain classifier in OUTPUT_DIR.
Exit codes: 0 done, 2 bad arguments or missing files (a report lists them).
"""

import argparse
import ast
import sys

from transformers_xkd.downstream.datasets import MissingMediaError, SplitFileError
from transformers_xkd.downstream.runner import run_finetune


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


def _lora_settings(args):
    if not args.lora:
        return None
    from transformers_xkd.downstream.lora import DEFAULT_LORA_TARGET_MODULES, LoraSettings

    try:
        return LoraSettings(args.lora_rank, args.lora_alpha, args.lora_dropout,
                            tuple(args.lora_targets or DEFAULT_LORA_TARGET_MODULES))
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err


def main(argv=None) -> int:
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
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--train-arg", dest="train_args", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID")
    p.add_argument("--base-model", default=None, help="Hub id of the pretrained checkpoint, for the card")
    p.add_argument("--allow-missing", action="store_true")
    p.add_argument("--lora", action="store_true", help="LoRA adapters instead of full fine-tuning (peft extra)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--lora-targets", nargs="+", default=None, metavar="NAME",
                   help="module names to adapt (default: qkv proj fc1 fc2)")
    args = p.parse_args(argv)
    try:
        run_finetune(
            args.pretrained, args.dataset, args.data_root, args.output_dir, args.recipe, args.modality,
            args.split_dir, args.split, _pairs(args.overrides, "--set"), _pairs(args.train_args, "--train-arg"),
            args.push_to_hub, args.base_model, args.allow_missing, test_root=args.test_root,
            lora=_lora_settings(args),
        )
    except (MissingMediaError, SplitFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
