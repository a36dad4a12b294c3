#!/usr/bin/env python
"""XKD self-supervised pretraining (thin CLI over transformers_xkd.pretraining).

    accelerate launch training/pretrain.py --config training/configs/xkd.yaml \
        --train-data /data/kinetics400/train --output-dir runs/xkd [--max-steps N] [--resume] [--set key=value ...]

--train-data: a folder of videos (searched recursively), a .txt/.csv list of paths, or a datasets dataset
(a save_to_disk folder or hf://owner/name) with a path/bytes column. --set overrides any configuration key, e.g.
--set train.per_device_batch_size=16 train.gradient_accumulation_steps=2 model.variant=xkd-mas.
Exit codes: 0 done, 2 bad arguments/configuration, 3 non-finite loss, 4 too many undecodable files.
"""

import argparse
import sys

from transformers_xkd.pretraining import DecodeFailureError, NonFiniteLossError, load_config, run_pretraining


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file (training/configs/*.yaml)")
    parser.add_argument("--train-data", required=True, help="folder, .txt/.csv list, or datasets dataset")
    parser.add_argument("--output-dir", required=True, help="checkpoints, logs and exported models go here")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many optimizer steps in total (schedules still follow train.epochs)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="configuration overrides, e.g. train.lr=2e-4")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        summary = run_pretraining(config, args.train_data, args.output_dir, max_steps=args.max_steps,
                                  resume=args.resume)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except DecodeFailureError as err:
        print(f"error: {err}", file=sys.stderr)
        return 4
    except ValueError as err:  # bad data source or configuration: a message, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"done: {summary['step']} steps; exported {summary['exports']['pretraining']} and "
          f"{summary['exports']['teachers']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
