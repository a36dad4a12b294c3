#!/usr/bin/env python
"""Prepare XKD training data once: clips re-encoded small into WebDataset-style tar shards plus a manifest.

    python training/prepare_data.py --input /data/kinetics400/train --output /data/k400-shards \
        [--short-side 128] [--fps native|8] [--gop-seconds 1] [--crf 20] [--audio-codec flac] \
        [--clips-per-shard 256] [--num-workers 16] [--shard-index I --num-shards N]

--input: a folder of videos (searched recursively), a .txt/.csv list of paths, or a datasets dataset (the forms
--train-data of training/pretrain.py takes). A rerun skips finished shards; with --num-shards N, machine I builds
every N-th shard, and the run that finds all shards done writes manifest.json. Then train with
--train-data /data/k400-shards (or its https:// / s3:// / hf:// URL). Exit codes: 0 done (failures are listed and
written to failures.json), 2 bad arguments.
"""

import argparse
import json
import os
import sys

from transformers_xkd.pretraining.data import VIDEO_EXTENSIONS, resolve_source
from transformers_xkd.pretraining.prepare import PrepareSettings, prepare_shards
from transformers_xkd.utils_io import atomic_write_text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="folder, .txt/.csv list, or datasets dataset")
    parser.add_argument("--output", required=True, help="folder for shard-*.tar, shard-*.json and manifest.json")
    parser.add_argument("--short-side", type=int, default=128)
    parser.add_argument("--fps", default="native", help="'native' or a frame rate")
    parser.add_argument("--gop-seconds", type=float, default=1.0)
    parser.add_argument("--crf", type=int, default=20)
    parser.add_argument("--preset", default="veryfast")
    parser.add_argument("--tune", default=None, help="x264 tune, e.g. fastdecode (measured: no clear gain)")
    parser.add_argument("--audio-codec", default="flac", choices=["flac", "pcm_s16le", "pcm_f32le"])
    parser.add_argument("--max-duration", type=float, default=None, help="keep at most this many seconds per clip")
    parser.add_argument("--clips-per-shard", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--shard-index", type=int, default=0)
    parser.add_argument("--num-shards", type=int, default=1)
    parser.add_argument("--column", default=None, help="datasets source: the column with the media")
    parser.add_argument("--split", default="train")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        fps = None if args.fps == "native" else float(args.fps)
        settings = PrepareSettings(short_side=args.short_side, fps=fps, gop_seconds=args.gop_seconds, crf=args.crf,
                                   preset=args.preset, tune=args.tune, audio_codec=args.audio_codec,
                                   max_duration=args.max_duration)
        settings.validate()
        source = resolve_source(args.input, extensions=VIDEO_EXTENSIONS, column=args.column, split=args.split)
        entries = [(source.name(item), source.media(item)) for item in source.items]
        summary = prepare_shards(entries, args.output, settings, clips_per_shard=args.clips_per_shard,
                                 num_workers=args.num_workers, shard_index=args.shard_index,
                                 num_shards=args.num_shards, progress=not args.no_progress)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if summary["failures"]:
        path = os.path.join(args.output, f"failures-{args.shard_index}-of-{args.num_shards}.json")
        atomic_write_text(path, json.dumps(summary["failures"], indent=1))
        print(f"{len(summary['failures'])} input(s) could not be prepared (listed in {path}):", file=sys.stderr)
        for failure in summary["failures"][:20]:
            print(f"  {failure['source']}: {failure['error']}", file=sys.stderr)
    print(f"built {summary['shards_built']} shard(s), skipped {summary['shards_skipped']} already done, "
          f"{summary['clips']} clip(s); manifest: {summary['manifest'] or 'not yet (other shards pending)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
