#!/usr/bin/env python
"""Pictures of a pretraining run (thin CLI over transformers_xkd.pretraining.visualize; needs the `viz` extra).

    python training/visualize.py reconstruction RUN/pretraining CLIP.mp4 --output rec.png   # Sec. 4.11 figure
    python training/visualize.py curves RUN --output curves.png   # losses + collapse monitors of RUN/logs

reconstruction: original frames, masked input and reconstruction, and the same for the log-mel, of one clip read
with the folder's processors (an XKDForPretraining folder: OUT/pretraining of a run). curves: the losses and the
collapse monitors (teacher entropies, batch-mean entropy, spread, KL) of OUT/logs/train_log.jsonl.
"""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reconstruction")
    r.add_argument("model_dir")
    r.add_argument("clip")
    r.add_argument("--output", required=True)
    r.add_argument("--seed", type=int, default=0, help="seeds the masking")
    c = sub.add_parser("curves")
    c.add_argument("run")
    c.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    from transformers_xkd.pretraining.visualize import plot_training_log, reconstruction_figure

    try:
        if args.command == "reconstruction":
            out = reconstruction_figure(args.model_dir, args.clip, args.output, seed=args.seed)
            print(f"{out['path']}: {out['size'][0]}x{out['size'][1]} px; masked-patch MSE video "
                  f"{out['video_masked_mse']:.4f}, audio {out['audio_masked_mse']:.4f}")
        else:
            out = plot_training_log(args.run, args.output)
            print(f"{out['path']}: {out['steps']} logged steps")
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
