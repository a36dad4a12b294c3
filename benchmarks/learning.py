"""The learning benchmark: does XKD learn, and do KD and domain alignment help (the paper's Table 1 ablation)?

    python benchmarks/learning.py                       # the CPU benchmark (2 cores: about half an hour)
    python benchmarks/learning.py --scale smoke         # a handful of clips, 2 steps (the test)
    python benchmarks/learning.py --scale gpu --workers 1   # larger clips, ViT-S width, 5000 steps

Makes (or reuses) an AV-digits set, pretrains "mae", "mae+kd" and "xkd" with the same budget for every seed, probes
the EMA teachers' frozen video, audio and late-fusion features (FC probe and linear SVM) at step 0 (random init) and
along the run, and writes benchmarks/results/learning-<scale>-<machine>.{json,md} plus -steps.png (probe accuracy
against steps) and -monitors.png (collapse monitors). All logic is in transformers_xkd.benchmarking.learning.
"""

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))


def _slug(machine: str) -> str:
    name = re.sub(r"\((R|TM|tm|r)\)", "", machine.split(",")[0])
    name = re.sub(r"(?i)\b(processor|cpu|\d+-core|@.*)\b", "", name)
    cores = re.search(r"(\d+) CPU cores", machine)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    slug = "-".join(slug.split("-")[:2]) or "machine"
    return slug + (f"-{cores.group(1)}c" if cores else "")


def main(argv=None) -> int:
    from transformers_xkd.benchmarking.learning import (
        OBJECTIVES, SCALES, machine_description, run_learning_benchmark, write_results,
    )

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (smoke: 0)")
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--steps", type=int, default=None, help="pretraining steps per arm (default: the scale's)")
    parser.add_argument("--workers", type=int, default=2, help="arms trained in parallel (one thread each)")
    parser.add_argument("--work-dir", default=None, help="data and runs (default: outputs/learning-<scale>)")
    parser.add_argument("--data-dir", default=None, help="an AV-digits folder to reuse (made when missing)")
    parser.add_argument("--model-set", action="append", default=[], metavar="FIELD=VALUE",
                        help="an XKDConfig field for every arm (repeatable), e.g. video_teacher_temperature=0.04")
    parser.add_argument("--tag", default="", help="suffix of the results' file names (a recipe variant)")
    parser.add_argument("--reprobe", default=None, metavar="RESULTS_JSON",
                        help="probe the checkpoints of a finished benchmark again (needs its --work-dir)")
    parser.add_argument("--output-prefix", default=None,
                        help="results prefix (default: benchmarks/results/learning-<scale>-<machine>)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the arms' own bars; the benchmark shows one over arms
    from transformers_xkd.pretraining.config import parse_overrides

    model_overrides = parse_overrides(args.model_set) if args.model_set else None
    seeds = args.seeds or ([0] if args.scale == "smoke" else [0, 1, 2])
    work = args.work_dir or os.path.join("outputs", f"learning-{args.scale}")
    if args.reprobe:
        import json

        from transformers_xkd.benchmarking.learning import reprobe_results

        with open(args.reprobe) as f:
            previous = json.load(f)
        work = args.work_dir or os.path.join("outputs", f"learning-{previous['scale']}")
        data_root = args.data_dir or os.path.join(work, "avdigits")
        results = reprobe_results(previous, work, data_root)
        prefix = args.output_prefix or args.reprobe[: -len(".json")]
        paths = write_results(results, prefix)
        print(open(paths["md"]).read())
        return 0
    results = run_learning_benchmark(work, args.scale, seeds=seeds, objectives=args.objectives,
                                     workers=args.workers, data_root=args.data_dir, steps=args.steps,
                                     progress=False, model_overrides=model_overrides)
    prefix = args.output_prefix or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results",
        f"learning-{args.scale}-{_slug(machine_description())}" + (f"-{args.tag}" if args.tag else ""))
    paths = write_results(results, prefix)
    with open(paths["md"]) as f:
        print(f.read())
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
