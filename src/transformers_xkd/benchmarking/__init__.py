"""The benchmarks of ``benchmarks/run.py`` (speed, memory) and ``benchmarks/learning.py``, as importable modules.

- ``harness``: timing (interleaved rounds, median and spread), the machine's description, one-core pinning,
  process memory readings;
- one module per section: ``encoders`` (XKD vs VideoMAE / AST inference), ``pretraining_step`` (XKD vs the
  AV-MAE baseline step, FLOPs, memory), ``log_mel`` (vs the released librosa recipe), ``data_path`` (decode +
  sample + augment on one core);
- ``goals`` (the targets, judged), ``report`` (markdown and plot), ``suite`` (one run: sections, results file);
- ``learning``: the learning benchmark (pretrain on AV-digits per objective and seed, probe every checkpoint).

Only the harness is imported here; the sections load the model code, librosa and PyAV when they run.
"""

from .harness import (
    cpu_name,
    device_slug,
    load_average,
    machine_description,
    summarize,
    time_interleaved,
    usable_cpus,
)

__all__ = [
    "cpu_name", "device_slug", "load_average", "machine_description", "summarize", "time_interleaved",
    "usable_cpus",
]
