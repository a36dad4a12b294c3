"""Section 3, log-mel extraction: XKDFeatureExtractor (compute_dtype "mixed" and "float32", all threads and one)
vs the released librosa recipe on the same 4 s waveforms, with their largest difference. Result key: ``log_mel``.
"""

from __future__ import annotations

import numpy as np
import torch

from .harness import time_interleaved


def librosa_recipe(waveform: np.ndarray, mel_basis: np.ndarray) -> np.ndarray:
    """The released MelSpectrogramLibrosa on one clip (the recipe of log_mel_xkd.py): librosa.stft (n_fft 1024, hop 143,
    centred, reflect), power + 2.2e-16, Slaney mel (80, 0-8000), natural log after float32 eps, normalise.
    Returns (frames, mels)."""
    import librosa

    spec = librosa.stft(waveform, n_fft=1024, hop_length=143, center=True, pad_mode="reflect")
    power = np.abs(spec) ** 2 + 2.2e-16
    log_mel = np.log(mel_basis @ power + np.finfo(np.float32).eps)
    return ((log_mel - (-5.3688107)) / 4.410007).T


def speech_like_waveforms(batch: int, seconds: float = 4.0, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Speech-like test audio: a few harmonics with a wandering pitch, noise and silent stretches (quiet bins are
    where log-mel round-off shows)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    out = []
    for _ in range(batch):
        f0 = 120 + 60 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t)
        phase = 2 * np.pi * np.cumsum(f0) / rate
        x = sum(rng.uniform(0.05, 0.3) / k * np.sin(k * phase) for k in range(1, 6))
        x = x + 0.01 * rng.standard_normal(t.size)
        gate = (np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t) > -0.6).astype(np.float64)
        out.append((x * gate).astype(np.float32))
    return np.stack(out)


def bench_log_mel(settings: dict, log) -> dict:
    import librosa

    from transformers_xkd import feature_extraction_xkd
    from transformers_xkd.feature_extraction_xkd import XKDFeatureExtractor

    from threadpoolctl import threadpool_limits  # installed with scikit-learn (the train extra)

    fe = XKDFeatureExtractor()  # compute_dtype="mixed", the default
    fe32 = XKDFeatureExtractor(compute_dtype="float32")
    mel_basis = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=80, fmin=0.0, fmax=8000.0)  # built once, as released
    device = torch.device("cpu")
    rows = []
    for batch in settings["logmel_batches"]:
        waves = speech_like_waveforms(batch)
        wave_list = list(waves)
        threads = torch.get_num_threads()

        def ours():
            fe(wave_list, sampling_rate=16000, return_tensors="pt")

        def ours_1_thread():
            torch.set_num_threads(1)
            try:
                fe(wave_list, sampling_rate=16000, return_tensors="pt")
            finally:
                torch.set_num_threads(threads)

        def ours_float32():  # compute_dtype="float32": no float64 guard (training speed, up to ~1e-3 off)
            fe32(wave_list, sampling_rate=16000, return_tensors="pt")

        def released():  # one clip at a time, as the released dataset's __getitem__ does
            # numpy's BLAS gets the same number of threads as torch: idle BLAS threads spinning on a busy core
            # made the baseline 2-4x slower in some runs, which would flatter the speed-up.
            with threadpool_limits(limits=threads):
                for w in wave_list:
                    librosa_recipe(w, mel_basis)

        stats = time_interleaved({"xkd": ours, "xkd_1_thread": ours_1_thread, "xkd_float32": ours_float32,
                                  "librosa": released}, 1, settings["logmel_repeats"], device)
        a = fe(wave_list, sampling_rate=16000, return_tensors="pt")["input_values"].numpy()
        b = np.stack([librosa_recipe(w, mel_basis) for w in wave_list])
        diff = float(np.abs(a - b).max())
        a32 = fe32(wave_list, sampling_rate=16000, return_tensors="pt")["input_values"].numpy()
        row = dict(batch=batch, xkd=stats["xkd"], xkd_1_thread=stats["xkd_1_thread"], librosa=stats["librosa"],
                   xkd_float32=stats["xkd_float32"],
                   speedup=stats["librosa"]["median_s"] / stats["xkd"]["median_s"],
                   speedup_1_thread=stats["librosa"]["median_s"] / stats["xkd_1_thread"]["median_s"],
                   speedup_float32=stats["librosa"]["median_s"] / stats["xkd_float32"]["median_s"],
                   max_abs_diff=diff, max_abs_diff_float32=float(np.abs(a32 - b).max()),
                   output_shape=list(a.shape), torch_threads=threads, compute_dtype=fe.compute_dtype)
        rows.append(row)
        log(f"  log-mel b{batch}: XKD {stats['xkd']['median_s'] * 1e3:.1f} ms ({threads} threads), "
            f"1 thread {stats['xkd_1_thread']['median_s'] * 1e3:.1f} ms, librosa {stats['librosa']['median_s'] * 1e3:.1f} ms "
            f"-> {row['speedup']:.2f}x; max |diff| {diff:.2e}")
    return dict(parity_budget=1e-4, librosa_version=librosa.__version__,
                extractor_module=feature_extraction_xkd.__name__, results=rows)
