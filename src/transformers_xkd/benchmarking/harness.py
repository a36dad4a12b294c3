"""What every benchmark section shares: timing (interleaved rounds, median and spread), the machine's description,
one-core pinning and process memory readings.

Competing measurements (XKD vs its peer) are interleaved round by round, so that load from other processes on a
shared machine hits both alike; the spread (min, max, interquartile range) is reported next to each median.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import time

import numpy as np
import torch

# Dense bf16 tensor-core peak (TFLOP/s) used for MFU; matched against torch.cuda.get_device_name().
GPU_PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "V100": 125.0,
}


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock reading covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(times: list[float]) -> dict:
    """Median and spread of a list of durations (seconds)."""
    ts = sorted(times)
    q1, q3 = (np.percentile(ts, 25), np.percentile(ts, 75)) if len(ts) > 1 else (ts[0], ts[0])
    return dict(
        median_s=statistics.median(ts), min_s=ts[0], max_s=ts[-1], iqr_s=float(q3 - q1), n=len(ts),
        times_s=[round(t, 6) for t in times],
    )


def time_interleaved(fns: dict, warmup: int, repeats: int, device: torch.device) -> dict:
    """Run every function `warmup` times, then `repeats` rounds in which each function runs once (in an order that
    alternates between rounds, so neither always runs first after the other). Returns name -> summary."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
            sync(device)
    times = {name: [] for name in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: summarize(ts) for name, ts in times.items()}


def autocast_ctx(device: torch.device, dtype: str):
    """bf16 autocast on `device` for dtype "bf16"; nothing for "fp32"."""
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def load_average() -> list[float] | None:
    """The 1/5/15-minute load average (None where the platform has none): reported beside every measurement."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ----------------------------------------------------------------------------------------------------------------
# The machine
# ----------------------------------------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    name = platform.processor() or platform.machine() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return name or "unknown-cpu"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def machine_description() -> str:
    """'AMD EPYC, 2 CPU cores' (+ ', <GPU name>' when CUDA is available): what results files record."""
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu_name()}, {usable_cpus()} CPU cores{gpu}"


def device_slug(device: torch.device) -> str:
    """A short file-name-safe device string: 'intel-xeon-2c' or 'nvidia-h100-80gb-hbm3'."""
    if device.type == "cuda":
        raw = torch.cuda.get_device_name(device)
        suffix = ""
    else:
        raw = cpu_name()
        suffix = f"-{usable_cpus()}c"
    raw = re.sub(r"\((R|TM|tm|r)\)", "", raw)
    raw = re.sub(r"(?i)\b(processor|cpu|@.*)\b", "", raw)
    slug = re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-") or device.type
    return slug + suffix


def gpu_peak_tflops(device: torch.device) -> float | None:
    """The datasheet bf16 peak of a known GPU (None on the CPU or for an unknown GPU: no MFU is invented)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in GPU_PEAK_BF16_TFLOPS.items():
        if key.lower() in name.lower():
            return value
    return None


def measure_matmul_peak(device: torch.device, dtype: str, size: int = 2048, repeats: int = 5) -> float:
    """Achievable dense matmul FLOP/s on this device (a yardstick for CPU 'MFU'; the GPU uses its datasheet)."""
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=torch_dtype)
    b = torch.randn(size, size, device=device, dtype=torch_dtype)
    a @ b
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


@contextlib.contextmanager
def one_core():
    """Pin this process to one CPU and one torch thread (FFmpeg's decoder threads follow the affinity mask)."""
    threads = torch.get_num_threads()
    try:
        affinity = os.sched_getaffinity(0)
    except AttributeError:
        affinity = None
    try:
        if affinity:
            os.sched_setaffinity(0, {min(affinity)})
        torch.set_num_threads(1)
        yield
    finally:
        torch.set_num_threads(threads)
        if affinity:
            os.sched_setaffinity(0, affinity)


# ----------------------------------------------------------------------------------------------------------------
# Process memory
# ----------------------------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident set now (psutil)."""
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """The resident-set high-water mark of this process's life (getrusage)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux: writing 5 to /proc/self/clear_refs), so that the
    peak read afterwards belongs to the steps, not to model construction."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def vm_hwm_bytes() -> int | None:
    """The high-water mark since the last `reset_peak_rss` (/proc/self/status VmHWM; None off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
