"""One benchmark run: the suite's sizes, the chosen sections in order, the results dict (JSON schema
``SCHEMA_VERSION``), merging sections of an earlier run, and the files written (``<suite>-<device>[-smoke]``
``.json``, ``.md``, ``.png``). ``benchmarks/run.py`` is the command line over :func:`run_suite`.
"""

from __future__ import annotations

import datetime
import json
import platform
import time
import warnings
from pathlib import Path

import torch

from ..utils_io import atomic_write_text
from .goals import evaluate_goals
from .harness import cpu_name, device_slug, load_average, usable_cpus
from .report import markdown_report, write_plot

SCHEMA_VERSION = 1
SECTIONS = ("encoder", "pretrain", "logmel", "data")
# section name (--sections) -> its key in the results
SECTION_KEYS = dict(encoder="encoder_inference", pretrain="pretraining_step", logmel="log_mel", data="data_path")


class BenchmarkUsageError(ValueError):
    """A run asked for something this machine or this suite cannot do (an unknown section, CUDA without a GPU)."""


def suite_settings(suite: str, smoke: bool) -> dict:
    """Sizes and repeat counts. The CPU suite keeps full ViT-B encoders (what users run) but a reduced width for
    the training step, and chooses repeats so that a 2-core machine finishes in about ten minutes."""
    if smoke:
        return dict(
            encoder_size="tiny", batches=(1, 2), dtypes=("fp32", "bf16"), attn=("sdpa", "eager"),
            warmup={1: 1, 2: 1}, repeats={1: 1, 2: 1}, pretrain_size="tiny", pretrain_batch=2, pretrain_warmup=1,
            pretrain_repeats=1, logmel_batches=(1, 4), logmel_repeats=1, data_clips=1, data_seconds=2.0,
            synth_clips=1, synth_size=(256, 144), synth_seconds=5.0,
        )
    if suite == "cpu":
        return dict(
            encoder_size="base", batches=(1, 8), dtypes=("fp32", "bf16"), attn=("sdpa", "eager"),
            # batch 8 (11-40 s a call here) takes no separate warm-up: fp32 linears go to MKL gemm with no
            # per-shape setup, and the median of three absorbs the first call's oneDNN primitive creation.
            warmup={1: 1, 8: 0}, repeats={1: 5, 8: 4}, pretrain_size="cpu-reduced", pretrain_batch=2,
            pretrain_warmup=1, pretrain_repeats=4, logmel_batches=(1, 64), logmel_repeats=5, data_clips=3, data_seconds=None,
            synth_clips=2, synth_size=(854, 480), synth_seconds=10.0,
        )
    return dict(  # gpu
        encoder_size="base", batches=(1, 8, 32), dtypes=("fp32", "bf16"), attn=("sdpa", "eager"),
        warmup={1: 3, 8: 3, 32: 3}, repeats={1: 20, 8: 20, 32: 10}, pretrain_size="base", pretrain_batch=32, pretrain_warmup=3,
        pretrain_repeats=10, logmel_batches=(1, 64), logmel_repeats=5, data_clips=3, data_seconds=None,
        synth_clips=2, synth_size=(854, 480), synth_seconds=10.0,
    )



def run_suite(suite: str = "cpu", smoke: bool = False, sections=SECTIONS, out_dir: str | Path = ".",
              device: str | None = None, media_root: str | Path | None = None, compile_model: bool = False,
              threads: int | None = None, merge: bool = False, log=print) -> dict:
    """Run `sections` of `suite` and write the results to `out_dir`; returns the results dict.

    media_root: the folder whose ``video/`` files the data path measures (None: synthetic clips only).
    threads: torch intra-op threads (None: torch's choice; a smoke run takes one). merge: keep the sections of an
    existing results file that this run does not measure (with the time and load of their own run).
    Restores torch's thread count afterwards, so that tests can call it in-process.
    """
    saved_threads = torch.get_num_threads()
    try:
        return _run_suite(suite, smoke, list(sections), Path(out_dir), device, media_root, compile_model, threads,
                          merge, log)
    finally:
        torch.set_num_threads(saved_threads)


def _run_suite(suite, smoke, sections, out_dir, device, media_root, compile_model, threads, merge, log) -> dict:
    from .data_path import bench_data_path
    from .encoders import bench_encoders
    from .log_mel import bench_log_mel
    from .pretraining_step import bench_pretraining

    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise BenchmarkUsageError(f"--sections: unknown {sorted(unknown)}; choose from {SECTIONS}")
    warnings.filterwarnings("ignore")
    if threads:
        torch.set_num_threads(threads)
    elif smoke:
        # Tiny ops on 2 threads of a busy machine spend most of their time in OpenMP hand-offs; the smoke run
        # checks the plumbing, so it takes one thread and stays fast.
        torch.set_num_threads(1)
    import transformers

    transformers.logging.set_verbosity_error()
    device = torch.device(device or ("cuda" if suite == "gpu" else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkUsageError("--suite gpu needs a CUDA device (torch.cuda.is_available() is False); "
                           "use --device cpu to exercise its code path on the CPU")
    settings = suite_settings(suite, smoke)

    start = time.perf_counter()
    torch.manual_seed(0)
    res = dict(
        schema_version=SCHEMA_VERSION, suite=suite, smoke=smoke, device=device_slug(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        env=dict(torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
                 threads=torch.get_num_threads(), cpus=usable_cpus(), load_before=load_average()),
        settings={k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()}) for k, v in
                  settings.items()},
        not_run=[],
    )
    log(f"XKD benchmarks: suite {suite}{' (smoke)' if smoke else ''} on {res['device_name']} "
        f"({device.type}, {res['env']['threads']} threads, load {res['env']['load_before']})")
    if suite == "cpu":
        res["not_run"].append("GPU suite (no GPU on this machine): run `python benchmarks/run.py --suite gpu` "
                              "where one is available")
    timings = {}
    res["section_runs"] = {name: dict(created=res["created"], load_before=res["env"]["load_before"])
                           for name in sections}
    measure = dict(
        encoder=lambda: bench_encoders(settings, device, log),
        pretrain=lambda: bench_pretraining(settings, device, suite, log, smoke=smoke, compile_model=compile_model),
        logmel=lambda: bench_log_mel(settings, log),
        data=lambda: bench_data_path(settings, device, log, media_root=media_root, smoke=smoke),
    )
    for name in SECTIONS:  # always in this order, whatever the order asked for
        if name in sections:
            t = time.perf_counter()
            res[SECTION_KEYS[name]] = measure[name]()
            timings[name] = time.perf_counter() - t
    if "data" in sections and res["data_path"]["pipeline"] is None:
        res["not_run"].append("augmentation in the data path: " + res["data_path"]["augmentation_status"])
    res["env"]["load_after"] = load_average()
    for name in sections:
        res["section_runs"][name]["load_after"] = res["env"]["load_after"]
    res["section_seconds"] = timings
    res["total_seconds"] = time.perf_counter() - start

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{suite}-{res['device']}" + ("-smoke" if smoke else "")
    previous_path = out_dir / f"{stem}.json"
    if merge and previous_path.exists():
        # Sections measured in an earlier run are kept with the time and load of that run (section_runs).
        previous = json.loads(previous_path.read_text())
        for name, key in SECTION_KEYS.items():
            if name not in sections and key in previous:
                res[key] = previous[key]
                res["section_runs"][name] = previous.get("section_runs", {}).get(
                    name, dict(created=previous.get("created"), load_before=previous.get("env", {}).get("load_before"),
                               load_after=previous.get("env", {}).get("load_after")))
                res["section_seconds"][name] = previous.get("section_seconds", {}).get(name)
    res["goals"] = evaluate_goals(res)
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(res, indent=1, default=float) + "\n")
    atomic_write_text(out_dir / f"{stem}.md", markdown_report(res))
    res["plot"] = write_plot(res, out_dir / f"{stem}.png")
    log(f"wrote {out_dir / stem}.json/.md in {res['total_seconds']:.0f} s")
    for g in res["goals"]:
        log(f"  goal {g['name']}: {g['measured']} ({g['target']}) met={g['met']}")
    return res
