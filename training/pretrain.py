#!/usr/bin/env python
"""XKD self-supervised pretraining (thin CLI over transformers_xkd.pretraining).

    accelerate launch training/pretrain.py --config training/configs/xkd.yaml \
        --train-data /data/kinetics400/train --output-dir runs/xkd [--max-steps N] [--resume | --overwrite] \
        [--set key=value ...]

--train-data: a folder of videos (searched recursively), a .txt/.csv list of paths, or a datasets dataset
(a save_to_disk folder or hf://owner/name) with a path/bytes column. --set overrides any configuration key, e.g.
--set train.per_device_batch_size=16 train.gradient_accumulation_steps=2 model.variant=xkd-mas (repeated --set
flags add up; a key given twice with different values is an error). An --output-dir that holds another run is
refused unless --resume (continue it) or --overwrite (delete its files first).
Exit codes: 0 done, 2 bad arguments/configuration/data/run folder, 3 non-finite loss, 4 too many undecodable
files. `accelerate launch` turns every failure into 1; the last line this script prints names its own code and
the cause (run it with `python training/pretrain.py` for one process to get the code itself).
"""

import argparse
import sys

from transformers_xkd.cli import int_at_least, report_exit
from transformers_xkd.pretraining import DecodeFailureError, NonFiniteLossError, load_config, run_pretraining

CAUSES = {2: "bad arguments, configuration, data or output folder", 3: "non-finite loss",
          4: "too many undecodable files"}


def _fail(code: int, err: Exception) -> int:
    return report_exit("training/pretrain.py", code, CAUSES[code], err)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file (training/configs/*.yaml)")
    parser.add_argument("--train-data", required=True, help="folder, .txt/.csv list, or datasets dataset")
    parser.add_argument("--output-dir", required=True, help="checkpoints, logs and exported models go here")
    parser.add_argument("--max-steps", type=int_at_least(0, "0: no step"), default=None,
                        help="stop after this many optimizer steps in total (schedules still follow train.epochs); "
                             "0: set up and check everything, train nothing; absent: the whole schedule")
    run_mode = parser.add_mutually_exclusive_group()
    run_mode.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    run_mode.add_argument("--overwrite", action="store_true",
                          help="delete the run already in --output-dir (checkpoints, logs, exports) first")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="configuration overrides, e.g. train.lr=2e-4 (repeatable)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except (ValueError, OSError) as err:
        return _fail(2, err)
    try:
        summary = run_pretraining(config, args.train_data, args.output_dir, max_steps=args.max_steps,
                                  resume=args.resume, overwrite=args.overwrite)
    except NonFiniteLossError as err:
        return _fail(3, err)
    except DecodeFailureError as err:
        return _fail(4, err)
    except (ValueError, OSError) as err:  # bad data source, configuration or folder: a message, not a traceback
        return _fail(2, err)
    if summary["exports"] is None:
        print(f"done: {summary['step']} steps (--max-steps 0: configuration, data and model checked; nothing "
              "trained or exported)")
    else:
        print(f"done: {summary['step']} steps; exported {summary['exports']['pretraining']} and "
              f"{summary['exports']['teachers']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
