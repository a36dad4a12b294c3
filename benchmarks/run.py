"""Side-by-side speed and memory benchmarks for transformers-xkd (issue 7).

    python benchmarks/run.py --suite cpu            # the CPU suite (2-core machine: a few minutes)
    python benchmarks/run.py --suite gpu            # the same measurements on CUDA (bf16 autocast, sdpa, MFU)
    python benchmarks/run.py --suite cpu --smoke    # tiny sizes, one repeat: checks the plumbing, not the speed
    python benchmarks/run.py --suite cpu --threads 1 --sections logmel,data --media ../shared/media

Writes ``benchmarks/results/<suite>-<device>.json`` and ``.md`` (and ``.png`` when matplotlib happens to be
installed; it is not a dependency). Sections:

1. ``encoder_inference``: XKDVideoModel vs VideoMAEModel (same width/depth/heads, 392 tokens) and XKDAudioModel vs
   ASTModel (patch strides chosen so that AST also has 560 patch tokens); fp32 and bf16 autocast; sdpa and eager;
   batch 1 and 8.
2. ``pretraining_step``: one XKDForPretraining optimisation step (forward + backward + AdamW + EMA) against the
   audio-visual MAE baseline (students + decoders + masked reconstruction only), time and peak memory; analytic
   FLOPs (cross-checked with torch's FlopCounterMode) and, on a GPU, model FLOPs utilisation.
3. ``log_mel``: XKDFeatureExtractor vs the released librosa recipe on the same 4 s waveforms, batch 1 and 64.
4. ``data_path``: decode + sample (+ augment + log-mel) clips/s on one CPU core, real files and synthetic 480p clips.

Every number is a median over repeats taken after warm-up. Competing measurements (XKD vs its peer) are
interleaved round by round, so that load from other processes on a shared machine hits both alike; the spread
(min, max, interquartile range) is reported next to each median. All logic is in transformers_xkd.benchmarking.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO / "src"))

DEFAULT_MEDIA = REPO.parent / "shared" / "media"  # the shared clips next to the checkout (../shared/media)
SECTIONS = ("encoder", "pretrain", "logmel", "data")  # as transformers_xkd.benchmarking.suite.SECTIONS


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat (plumbing check, not speed)")
    p.add_argument("--device", default=None, help="override the suite's device (e.g. run the gpu suite's code "
                                                  "path on cpu for testing)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list from {SECTIONS}")
    p.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--media", default=None,
                   help="real clips for the data path (its video/ folder; default: $XKD_REAL_MEDIA, else "
                        "../shared/media next to the checkout when present)")
    p.add_argument("--compile", action="store_true", help="torch.compile the pretraining model")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--merge", action="store_true",
                   help="keep the sections of an existing results file that this run does not measure")
    return p.parse_args(argv)


def media_folder(arg: str | None) -> Path | None:
    """--media, else $XKD_REAL_MEDIA, else ../shared/media when it exists; None: synthetic clips only."""
    if arg:
        if not Path(arg).is_dir():
            raise SystemExit(f"--media {arg}: not a folder (expected the media folder holding video/)")
        return Path(arg)
    env = os.environ.get("XKD_REAL_MEDIA")
    if env:
        return Path(env)
    return DEFAULT_MEDIA if DEFAULT_MEDIA.exists() else None


def main(argv=None) -> dict:
    """Run the suite; returns the results dict (also written to disk)."""
    args = parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--sections: unknown {sorted(unknown)}; choose from {SECTIONS}")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers_xkd.benchmarking.suite import BenchmarkUsageError, run_suite

    try:
        return run_suite(args.suite, args.smoke, sections, args.out_dir, device=args.device,
                         media_root=media_folder(args.media), compile_model=args.compile, threads=args.threads,
                         merge=args.merge, log=lambda msg: print(msg, flush=True))
    except BenchmarkUsageError as err:
        raise SystemExit(str(err)) from None


if __name__ == "__main__":
    main()
