"""XKD's log-mel kernel: the released ``MelSpectrogramLibrosa`` recipe, batched in torch (no librosa).

Released recipe (`MelSpectrogramLibrosa`), reproduced to <= 1e-4 after normalisation (tested against librosa):

1. mono 16 kHz waveform, trimmed or zero-padded to ``clip_duration`` (4 s = 64,000 samples);
2. STFT: n_fft 1024, hop 143, periodic Hann window of 1024, centred frames with reflect padding;
3. power ``|X|^2 + 2.2e-16``;
4. Slaney-scale, Slaney-normalised mel filters (80 mels, 0-8000 Hz) applied to the power spectrum;
5. natural log after adding float32 eps (1.1920929e-07) (not dB);
6. normalisation ``(x - (-5.3688107)) / 4.410007`` (Kinetics-Sound statistics).

4 s gives 1 + 64000 // 143 = 448 frames; the output layout is time-first, ``(batch[, clips], 448, 80)``.

Precision (``compute_dtype``). The log turns absolute STFT round-off into relative error wherever a mel band's power
is near the 1.19e-7 floor, and a float32 FFT's round-off in every bin scales with the whole frame's energy (about
2 units in the last place of ``||frame||`` rms, measured). A loud tone next to a quiet band therefore puts a plain
float32 STFT up to ~1e-3 away from the float64 reference on the normalised scale (a 7.9 kHz full-scale tone: 9.6e-4),
ten times the 1e-4 parity budget; the real media stay below 7e-5 (spoken digits: 6.4e-5). So:

* ``"mixed"`` (default): float32 STFT plus a per-frame error bound (below); frames whose bound exceeds
  :data:`GUARD_TOLERANCE` (2.5e-5) are recomputed in float64. Largest error seen: 1e-5 (tones, clipping, DC,
  square waves, silence, quiet noise, 40 random tone/noise/DC/clipping mixtures, the real media). Frames redone:
  ~0.1% of speech-like synthetic audio, 0-17% of real clips (38% of one low-passed film clip), all of a loud tone.
* ``"float32"``: no guard; fastest; up to ~1e-3 off on loud tonal audio (fine for training, not for parity).
* ``"float64"``: float64 STFT for every frame (the previous behaviour's precision; ~2.3x the float32 time).

The bound, for mel band ``m`` of a frame: with per-bin FFT error ``|e_k| <= d`` and ``d = 10 * 2**-24 * ||frame||``
(5x the measured rms), Cauchy-Schwarz gives ``|mel_err| <= 2 sqrt(W_m mel_m) d + W_m d**2`` (``W_m`` the filter's
weight sum), so ``|log_err| <= that / (mel_m + eps_m)``. Frames it lets through were never seen above 6.2e-6.

CPU work goes clip by clip through buffers that stay in cache (reflect pad, framing times the window, a batched real
FFT, squares, a banded mel product that skips the zeros of the filter bank, log), shared out to
``torch.get_num_threads()`` single-threaded workers (one clip each at a time: a busy core then delays one clip,
where intra-op threads would stall every small op). Other devices (``device="cuda"``) run the same maths on the
whole batch at once.

:class:`XKDLogMelSpectrogram` is the kernel alone (waveforms in, normalised log-mels out);
``feature_extraction_xkd.XKDFeatureExtractor`` is a thin shell around it and the clip layer. Only relative imports
between package modules are used here, so the file can be copied for ``trust_remote_code``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank


# Released constants (the released `MelSpectrogramLibrosa`).
POWER_EPSILON = 2.2e-16
LOG_EPSILON = float(np.finfo(np.float32).eps)  # 1.1920929e-07
KINETICS_SOUND_MEAN = -5.3688107
KINETICS_SOUND_STD = 4.410007

COMPUTE_DTYPES = ("mixed", "float32", "float64")
# "mixed": frames whose float32 error bound exceeds this (normalised scale; the parity budget is 1e-4) are redone in
# float64.
GUARD_TOLERANCE = 2.5e-5
# Per-bin float32 FFT error bound, in float32 units in the last place (2**-24) of the frame's L2 norm. Measured on
# MKL's and pocketfft's float32 FFTs: ~2 ulp rms on tones, noise and DC; 10 keeps the bound above every error seen.
FFT_ERROR_ULPS = 10.0
_FLOAT32_ULP = 2.0**-24
_MEL_BAND_GROUPS = 8  # the banded mel product: filters in 8 runs, each multiplied over its own bin range only



class _MelPlan:
    """Constants of the log-mel kernels for one (filter bank, FFT size, dtype, device)."""

    def __init__(self, mel_filters: np.ndarray, n_fft: int, dtype: torch.dtype, device: torch.device):
        weights = np.asarray(mel_filters, dtype=np.float64).T  # (mels, bins)
        n_mels, n_bins = weights.shape
        self.n_fft, self.n_mels, self.n_bins, self.dtype, self.device = n_fft, n_mels, n_bins, dtype, device
        self.window = torch.hann_window(n_fft, periodic=True, dtype=dtype, device=device)  # librosa get_window("hann")
        self.weights = torch.as_tensor(weights.T.copy(), dtype=dtype, device=device)  # (bins, mels)
        row_sums = weights.sum(axis=1)
        # POWER_EPSILON added to every bin before the (linear) mel product is POWER_EPSILON * row sum after it.
        bias = LOG_EPSILON + POWER_EPSILON * row_sums
        self.bias = torch.as_tensor(bias, dtype=dtype, device=device)
        self.bias_column = self.bias[:, None]
        # error-bound constants (see XKDLogMelSpectrogram._flag_frames)
        self.max_row_sum, self.min_bias = float(row_sums.max()), float(bias.min())
        # Parseval: a real frame's energy is (|X_0|^2 + 2 |X_1..|^2 + |X_nyquist|^2) / n_fft over the rfft bins
        parseval = np.full(n_bins, 2.0 / n_fft)
        parseval[0] = 1.0 / n_fft
        if n_fft % 2 == 0:
            parseval[-1] = 1.0 / n_fft
        self.parseval = torch.as_tensor(parseval, dtype=dtype, device=device)
        self.parseval_interleaved = torch.as_tensor(np.repeat(parseval, 2), dtype=dtype, device=device)
        # Banded product on the interleaved (re^2, im^2) layout of the squared spectrum: runs of consecutive filters,
        # each multiplied over the bins it touches only (8 runs do ~1/7 of the dense multiply-adds for 80 x 513).
        nonzero = [np.flatnonzero(row) for row in weights]
        self.bands = []
        for run in np.array_split(np.arange(n_mels), min(_MEL_BAND_GROUPS, n_mels)):
            spans = [(idx[0], idx[-1] + 1) for idx in (nonzero[m] for m in run) if idx.size]
            lo, hi = (min(a for a, _ in spans), max(b for _, b in spans)) if spans else (0, 1)
            block = np.repeat(weights[run[0] : run[-1] + 1, lo:hi], 2, axis=1)  # (run, 2 * (hi - lo))
            self.bands.append(
                (int(run[0]), int(run[-1]) + 1, 2 * lo, 2 * hi, torch.as_tensor(block, dtype=dtype, device=device))
            )


class _ClipBuffers:
    """Per-worker scratch for one clip (re-used clip after clip, so it stays in cache)."""

    def __init__(self, plan: _MelPlan, length: int, frames: int):
        dtype = plan.dtype
        self.padded = torch.empty(length + 2 * (plan.n_fft // 2), dtype=dtype)
        self.windowed = torch.empty(frames, plan.n_fft, dtype=dtype)
        self.mel = torch.empty(plan.n_mels * frames, dtype=dtype)
        self.energy = torch.empty(frames, dtype=dtype)


@functools.lru_cache(maxsize=None)
def _openmp_backend() -> bool:
    """Whether torch's intra-op backend is OpenMP, where a thread's ``torch.set_num_threads`` is its own setting
    (the native backend refuses a second call once its pool runs)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


class XKDLogMelSpectrogram:
    r"""
    The released log-mel of equal-length mono waveforms (see the module docstring for the recipe and precision).

    Args:
        feature_size (`int`, defaults to 80): mel bins.
        sampling_rate (`int`, defaults to 16000): rate of the waveforms (Hz).
        n_fft (`int`, defaults to 1024): FFT size and periodic Hann window length.
        hop_length (`int`, defaults to 143): STFT hop.
        min_frequency / max_frequency (`float`, defaults to 0 / 8000): Slaney mel filter range (Hz).
        mean / std (`float`): normalisation statistics (:data:`KINETICS_SOUND_MEAN` / :data:`KINETICS_SOUND_STD`).
        do_normalize (`bool`, defaults to `True`): apply ``(x - mean) / std``.
        compute_dtype (`str`, defaults to `"mixed"`): ``"mixed"``, ``"float32"`` or ``"float64"``.

    Call it (or :meth:`log_mel`) on `(N, S)` / `(S,)` waveforms; returns `(N, 1 + S // hop_length, feature_size)`.
    """

    def __init__(
        self,
        feature_size: int = 80,
        sampling_rate: int = 16000,
        n_fft: int = 1024,
        hop_length: int = 143,
        min_frequency: float = 0.0,
        max_frequency: float = 8000.0,
        mean: float = KINETICS_SOUND_MEAN,
        std: float = KINETICS_SOUND_STD,
        do_normalize: bool = True,
        compute_dtype: str = "mixed",
    ):
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
        self.feature_size, self.sampling_rate = int(feature_size), int(sampling_rate)
        self.n_fft, self.hop_length = int(n_fft), int(hop_length)
        self.min_frequency, self.max_frequency = float(min_frequency), float(max_frequency)
        self.mean, self.std, self.do_normalize = float(mean), float(std), bool(do_normalize)
        self.compute_dtype = compute_dtype
        # (n_fft // 2 + 1, feature_size), librosa-compatible (htk=False, norm="slaney")
        self.mel_filters = mel_filter_bank(
            num_frequency_bins=self.n_fft // 2 + 1,
            num_mel_filters=self.feature_size,
            min_frequency=self.min_frequency,
            max_frequency=self.max_frequency,
            sampling_rate=self.sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        )

    def settings(self) -> tuple:
        """Everything the output depends on (a feature extractor rebuilds its kernel when this changes)."""
        return (self.feature_size, self.sampling_rate, self.n_fft, self.hop_length, self.min_frequency,
                self.max_frequency, self.mean, self.std, self.do_normalize, self.compute_dtype)

    def __call__(self, waveforms, device=None) -> torch.Tensor:
        return self.log_mel(waveforms, device=device)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_mel_plans", None)  # rebuilt on demand (and may hold accelerator tensors)
        return state

    def _plan(self, dtype: torch.dtype, device: torch.device) -> _MelPlan:
        plans = self.__dict__.setdefault("_mel_plans", {})
        key = (dtype, str(device), self.n_fft, id(self.mel_filters))
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = _MelPlan(self.mel_filters, self.n_fft, dtype, device)
        return plan

    # ---------------------------------------------------------------------------------------------------------
    def log_mel(self, waveforms: torch.Tensor | np.ndarray, device: str | torch.device | None = None) -> torch.Tensor:
        """Released log-mel of a batch of equal-length mono waveforms.

        Args:
            waveforms (`torch.Tensor` or `np.ndarray` of shape `(N, S)` or `(S,)`): float waveforms at
                ``sampling_rate``; ``S`` must exceed ``n_fft // 2`` (the reflect padding).
            device (`str` or `torch.device`, *optional*): where to compute, e.g. ``"cuda"``. Defaults to the
                tensor's device (CPU for numpy input).

        Returns:
            `torch.Tensor` of shape `(N, 1 + S // hop_length, feature_size)`, float32, on ``device``, normalised
            when ``do_normalize``.
        """
        x = waveforms.detach() if torch.is_tensor(waveforms) else torch.as_tensor(np.asarray(waveforms))
        if x.is_complex() or x.dtype == torch.bool or x.ndim not in (1, 2):
            raise ValueError(
                f"waveforms: expected a real `(N, S)` or `(S,)` waveform array, got dtype {x.dtype} and shape "
                f"{tuple(x.shape)}"
            )
        if x.ndim == 1:
            x = x[None]
        if x.shape[-1] <= self.n_fft // 2:
            raise ValueError(
                f"waveforms: need more than n_fft // 2 = {self.n_fft // 2} samples for the centred (reflect-padded) "
                f"STFT, got {x.shape[-1]}"
            )
        device = x.device if device is None else torch.device(device)
        mode = getattr(self, "compute_dtype", "mixed")
        if mode not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {mode!r}")
        if device.type == "mps" and mode != "float32":
            raise ValueError(f"compute_dtype={mode!r} needs float64, which MPS lacks; use compute_dtype='float32'")
        compute = torch.float64 if mode == "float64" else torch.float32
        # Inputs float32 cannot hold exactly keep their values for the float64 work.
        exact = x.to(device) if (mode != "float32" and x.dtype in (torch.float64, torch.int32, torch.int64)) else None
        # A preprocessing step: no autograd, and no autocast (a bfloat16 mel product would break parity).
        no_autocast = (
            torch.autocast(device.type, enabled=False) if device.type in ("cpu", "cuda") else contextlib.nullcontext()
        )
        with torch.no_grad(), no_autocast:
            if device.type == "cpu":
                # no whole-batch conversion here: each worker casts its clip while reflect-padding it (a multi-threaded
                # cast on this thread would leave OpenMP threads spinning for ~10 ms, stealing the workers' cores)
                return self._log_mel_cpu(x.cpu(), exact, mode, compute)
            return self._log_mel_batched(x.to(device=device, dtype=compute), exact, mode)

    def _normalise_(self, log_mel: torch.Tensor) -> torch.Tensor:
        if self.do_normalize:
            log_mel.sub_(self.mean).div_(self.std)
        return log_mel

    def _guard_tolerance(self) -> float:
        """:data:`GUARD_TOLERANCE` in raw log units (the budget is on the normalised scale)."""
        return GUARD_TOLERANCE * (abs(self.std) if self.do_normalize else 1.0)

    def _flag_frames(self, mel: torch.Tensor, frame_energy: torch.Tensor, plan: _MelPlan) -> torch.Tensor:
        """Boolean mask over frames whose float32 log-mel error bound exceeds the guard tolerance.

        ``mel`` is `(..., mels, frames)` (before the log), ``frame_energy`` `(..., frames)` the windowed frames'
        squared L2 norms. With the per-bin FFT error bound ``d`` of a frame, a band's log error is at most
        ``f(mel) = (2 sqrt(W mel) d + W d^2) / (mel + b)``; taking the largest filter sum ``W`` and the smallest
        floor ``b`` (they vary by ~3%) keeps it a bound, and ``f(mel) > tolerance`` is a quadratic in ``sqrt(mel)``:
        the frame is flagged when any of its mel values lies between the roots (a test on a few per-frame numbers).
        """
        tol = self._guard_tolerance()
        w, b = plan.max_row_sum, plan.min_bias
        d2 = frame_energy * (FFT_ERROR_ULPS * _FLOAT32_ULP) ** 2  # d^2 per frame
        disc = d2 * (w * (1.0 + tol)) - tol * tol * b
        if float(disc.max()) <= 0.0:  # f(mel) <= tolerance for every mel value of every frame
            return torch.zeros(frame_energy.shape, dtype=torch.bool, device=frame_energy.device)
        root = disc.clamp_min(0.0).sqrt_()
        centre = (d2 * w).sqrt_()  # sqrt(W) d
        high = (centre + root).div_(tol).square_().unsqueeze(-2)
        low = (centre - root).div_(tol)
        low = torch.where(low > 0, low.square(), torch.full_like(low, -1.0)).unsqueeze(-2)  # s- < 0: from mel = 0
        inside = (mel - low).mul_(high - mel)  # > 0 exactly when low < mel < high
        return inside.amax(dim=-2) > 0

    def _reflect_pad_into(self, padded: torch.Tensor, wave: torch.Tensor) -> torch.Tensor:
        half, n = self.n_fft // 2, wave.shape[-1]
        padded[half : half + n].copy_(wave)
        padded[:half].copy_(wave[1 : half + 1].flip(0))
        padded[half + n :].copy_(wave[n - half - 1 : n - 1].flip(0))
        return padded

    def _log_mel_cpu(self, x: torch.Tensor, exact: torch.Tensor | None, mode: str, dtype: torch.dtype) -> torch.Tensor:
        """Clip-by-clip CPU kernel in ``dtype``; clips are shared out to ``torch.get_num_threads()`` worker threads."""
        num, length = x.shape
        frames = 1 + length // self.hop_length
        out = torch.empty(num, frames, self.feature_size, dtype=torch.float32)
        plan = self._plan(dtype, x.device)
        threads = torch.get_num_threads()
        if threads <= 1 or not _openmp_backend():
            self._cpu_worker(x, exact, out, iter(range(num)), plan, mode)
            return out
        # One clip at a time per worker thread (torch ops release the GIL), each worker single-threaded inside:
        # coarser than intra-op parallelism, so a busy core delays one clip rather than every op (a single clip
        # also runs single-threaded: its ~20 small ops lose more to thread hand-offs than they gain). This thread
        # is one of the workers.
        workers = min(threads, num)
        counter = itertools.count()
        clips = iter(lambda: next(counter), None)  # shared, thread-safe under the GIL

        def work():
            torch.set_num_threads(1)  # this thread's own OpenMP/MKL setting (OpenMP backend)
            self._cpu_worker(x, exact, out, itertools.takewhile(lambda i: i < num, clips), plan, mode)

        try:
            if workers == 1:
                work()
            else:
                with ThreadPoolExecutor(max_workers=workers - 1) as pool:
                    futures = [pool.submit(work) for _ in range(workers - 1)]
                    work()
                    for future in futures:
                        future.result()
        finally:
            torch.set_num_threads(threads)  # also resets the default that threads started later begin with
        return out

    def _cpu_worker(self, x, exact, out, clips, plan: _MelPlan, mode: str) -> None:
        length, frames = x.shape[1], out.shape[1]
        buffers = _ClipBuffers(plan, length, frames)
        buffers64 = None
        for i in clips:
            self._reflect_pad_into(buffers.padded, x[i])
            mel, energy = self._clip_mel(plan, buffers, need_energy=mode == "mixed")
            flagged = self._flag_frames(mel, energy, plan).nonzero().squeeze(1) if mode == "mixed" else None
            out[i].copy_(self._normalise_(mel.add_(plan.bias_column).log_()).T)
            if flagged is None or not flagged.numel():
                continue
            # float64 redo: the flagged frames gathered (~3x a float32 frame), or the whole clip when most are
            # flagged (loud tones)
            plan64 = self._plan(torch.float64, x.device)
            if buffers64 is None:
                buffers64 = _ClipBuffers(plan64, length, frames)
            whole = 3 * flagged.numel() >= 2 * frames
            # float32 padding holds the samples exactly unless the input was wider (exact)
            source = buffers.padded if exact is None else self._reflect_pad_into(buffers64.padded, exact[i])
            mel64, _ = self._clip_mel(plan64, buffers64, None if whole else flagged, padded=source)
            mel64 = self._normalise_(mel64.add_(plan64.bias_column).log_()).T
            if whole:
                out[i].copy_(mel64)
            else:
                out[i, flagged] = mel64.to(torch.float32)

    def _float64_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised float64 log-mel, as float32 `(n, mels)`, of unwindowed frames `(n, n_fft)`."""
        plan = self._plan(torch.float64, frames.device)
        squares = torch.view_as_real(torch.fft.rfft(frames.to(torch.float64) * plan.window)).square_()
        power = squares[..., 0] + squares[..., 1]
        return self._normalise_((power @ plan.weights).add_(plan.bias).log_()).to(torch.float32)

    def _clip_mel(self, plan: _MelPlan, buffers: "_ClipBuffers", frame_index=None, need_energy=False, padded=None):
        """Mel power `(mels, n)` (a view of ``buffers.mel``) of a reflect-padded clip (``padded``, by default
        ``buffers.padded``): all its frames, or those in ``frame_index``; plus the frames' energies if asked."""
        all_frames = (buffers.padded if padded is None else padded).unfold(0, self.n_fft, self.hop_length)
        if frame_index is None:
            count = all_frames.shape[0]
            windowed = buffers.windowed
            torch.mul(all_frames, plan.window, out=windowed)
        else:
            count = frame_index.numel()
            windowed = buffers.windowed[:count]
            torch.mul(all_frames[frame_index], plan.window, out=windowed)
        spec = torch.fft.rfft(windowed)  # (out= is slower: it transforms into a temporary and copies)
        squares = torch.view_as_real(spec).view(count, 2 * plan.n_bins).square_()  # re^2, im^2 interleaved
        mel = buffers.mel[: plan.n_mels * count].view(plan.n_mels, count)  # mels first: bands fill whole rows
        for m0, m1, k0, k1, block in plan.bands:
            torch.mm(block, squares[:, k0:k1].T, out=mel[m0:m1])
        energy = torch.mv(squares, plan.parseval_interleaved, out=buffers.energy[:count]) if need_energy else None
        return mel, energy

    def _log_mel_batched(self, x: torch.Tensor, exact: torch.Tensor | None, mode: str) -> torch.Tensor:
        """Whole-batch kernel for accelerators (and a cross-check of the CPU kernel): same maths, one op each."""
        half = self.n_fft // 2
        plan = self._plan(x.dtype, x.device)
        padded = torch.nn.functional.pad(x[:, None], (half, half), mode="reflect")[:, 0]
        windowed = padded.unfold(-1, self.n_fft, self.hop_length) * plan.window  # (N, frames, n_fft)
        power = torch.view_as_real(torch.fft.rfft(windowed)).square().sum(-1)  # (N, frames, bins)
        # float64 products: exact enough whatever the TF32 / matmul-precision settings (they are small)
        plan64 = self._plan(torch.float64, x.device)
        mel = (power.double() @ plan64.weights).to(x.dtype).transpose(1, 2)  # (N, mels, frames)
        flagged = None
        if mode == "mixed":
            flagged = self._flag_frames(mel, (power.double() @ plan64.parseval).to(x.dtype), plan)
        out = self._normalise_(mel.add(plan.bias_column).log_()).transpose(1, 2).to(torch.float32).contiguous()
        if flagged is not None and bool(flagged.any()):
            clip, frame = flagged.nonzero(as_tuple=True)
            source = exact if exact is not None else x
            padded64 = torch.nn.functional.pad(source.to(torch.float64)[:, None], (half, half), mode="reflect")[:, 0]
            out[clip, frame] = self._float64_frames(padded64.unfold(-1, self.n_fft, self.hop_length)[clip, frame])
        return out

    # ---------------------------------------------------------------------------------------------------------


__all__ = [
    "XKDLogMelSpectrogram",
    "KINETICS_SOUND_MEAN",
    "KINETICS_SOUND_STD",
    "POWER_EPSILON",
    "LOG_EPSILON",
    "COMPUTE_DTYPES",
    "GUARD_TOLERANCE",
]
