"""The XKD pretraining loop on accelerate (1 GPU, 8 GPUs, several machines; two processes on a CPU for tests).

One optimizer step (as the released `main_xkd.py`):
    for each of ``gradient_accumulation_steps`` micro-batches: views on the device -> ``XKDForPretraining`` forward
    (mixed precision through accelerate) -> backward (gradient sync only on the last micro-batch);
    then unscale (fp16) -> per-parameter clipping at 0.3 over ``student_parameters()`` (decoders are not clipped)
    -> AdamW (betas 0.9/0.95) -> EMA update of the teachers with the cosine momentum.
The learning rate (warm-up + cosine), EMA momentum and teacher temperatures are pure functions of the step
(:mod:`.schedules`); the data position is a function of the step too (``step * accumulation`` micro-batches of an
epoch-seeded order), and the random augmentations of step ``s`` are drawn after seeding with ``(seed, s)``. So a
checkpoint needs only the model, optimizer, scaler and the step, and ``--resume`` continues bit-exactly on a CPU.

Checkpoints (``OUT/checkpoints/step-00000100``) are ``accelerator.save_state`` folders plus ``trainer_state.json``
(the counters; nothing is registered with accelerate's pickling ``register_for_checkpointing``), written to a
temporary folder and renamed into place only when complete: a kill during the write leaves the previous checkpoint
as the latest. ``--resume`` reads them only through safe paths (:mod:`.run_folder`). At the end, ``OUT/pretraining`` (the whole ``XKDForPretraining``) and ``OUT/teachers`` (an ``XKDModel``
with the EMA teachers, what the paper evaluates, with the feature extractor) are written with ``save_pretrained``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, fields
from typing import Any

import torch

from ..configuration_xkd import XKDConfig
from ..modeling_xkd import XKDForPretraining
from .config import build_model_config
from .data import (
    VIDEO_EXTENSIONS,
    ClipSettings,
    ShardedEpochSampler,
    XKDPretrainingDataset,
    ScanReport,
    collate_clips,
    load_or_scan,
    resolve_source,
)
from ..utils_io import atomic_write_text, replace_folder
from .run_folder import (
    flatten_config as _flatten,
    CONFIG_NAME,
    INDEX_NAME,
    check_resume_config,
    check_run_folder,
    clear_run_folder,
    load_trainer_state,
    resumable_checkpoint,
    save_trainer_state,
)
from .schedules import (
    clip_gradients_per_parameter,
    ema_momentum,
    learning_rate,
    teacher_temperature,
    weight_decay_groups,
)
from .views import VideoViewSettings, XKDViewMaker


logger = logging.getLogger("transformers_xkd.pretraining")

CHECKPOINT_PREFIX = "step-"
COMPLETE_MARKER = "checkpoint_complete.json"
LOGGED_OUTPUTS = (
    "loss", "reconstruction_loss", "video_reconstruction_loss", "audio_reconstruction_loss", "distillation_loss",
    "video_to_audio_distillation_loss", "audio_to_video_distillation_loss", "alignment_loss",
    "student_alignment_loss", "teacher_alignment_loss", "video_teacher_entropy", "audio_teacher_entropy",
    "video_teacher_student_kl", "audio_teacher_student_kl", "video_teacher_batch_entropy",
    "audio_teacher_batch_entropy", "video_teacher_spread", "audio_teacher_spread",
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; nothing was saved over the last good checkpoint."""


class DecodeFailureError(RuntimeError):
    """More than the allowed fraction of clips failed to decode."""


# ----------------------------------------------------------------------------------------------------------------
# State saved with every checkpoint (besides what accelerate saves itself)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Counters restored by ``--resume`` (``trainer_state.json`` in each checkpoint: JSON, never a pickle).

    ``step``: optimizer steps done; ``micro_batches``: micro-batches consumed per process (the data position);
    ``clips``: clips consumed over all processes; ``decode_attempts`` / ``decode_failures``: totals over all
    processes; ``world_size`` / ``per_device_batch_size``: to detect a resume with another layout.
    """

    step: int = 0
    micro_batches: int = 0
    clips: int = 0
    decode_attempts: int = 0
    decode_failures: int = 0
    world_size: int = 1
    per_device_batch_size: int = 1

    def state_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def load_state_dict(self, state: dict) -> None:
        for f in fields(self):
            if f.name in state:
                setattr(self, f.name, int(state[f.name]))


class FailureTracker:
    """Counts decode failures; raises :class:`DecodeFailureError` when more than ``max_fraction`` of the attempts
    failed, once at least ``min_samples`` attempts were made (a few bad files early on must not stop a run)."""

    def __init__(self, max_fraction: float, min_samples: int, attempts: int = 0, failures: int = 0):
        self.max_fraction, self.min_samples = float(max_fraction), int(min_samples)
        self.attempts, self.failures = int(attempts), int(failures)

    @property
    def fraction(self) -> float:
        return self.failures / self.attempts if self.attempts else 0.0

    def update(self, clips: int, failures: int) -> None:
        """``clips`` delivered and ``failures`` replaced since the last call (each failure was an extra attempt)."""
        self.attempts += int(clips) + int(failures)
        self.failures += int(failures)
        if self.attempts >= self.min_samples and self.fraction > self.max_fraction:
            raise DecodeFailureError(
                f"{self.failures} of {self.attempts} clips ({100 * self.fraction:.1f}%) failed to decode, more than "
                f"data.max_failure_fraction={self.max_fraction}. See decode_failures.jsonl in the log folder for the "
                "files; fix or remove them (or raise the limit)."
            )


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: atomic, keep the last K
# ----------------------------------------------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """Complete checkpoints under ``root`` as ``(step, path)``, oldest first. Temporary folders (a write that was
    killed) and folders without the completion marker are ignored."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if not name.startswith(CHECKPOINT_PREFIX) or not os.path.isdir(path):
            continue
        try:
            step = int(name[len(CHECKPOINT_PREFIX):])
        except ValueError:
            continue
        if os.path.exists(os.path.join(path, COMPLETE_MARKER)):
            found.append((step, path))
    return sorted(found)


def latest_checkpoint(root: str) -> str | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def commit_checkpoint(tmp_dir: str, root: str, step: int, keep_last: int) -> str:
    """Move a fully written checkpoint folder into place (one ``os.replace``: atomic on one file system), then
    delete the oldest complete checkpoints beyond ``keep_last`` and any stale temporary folders.

    Only the main process calls this, after every process finished writing into ``tmp_dir``.
    """
    with open(os.path.join(tmp_dir, COMPLETE_MARKER), "w") as f:
        json.dump({"step": step, "time": time.time()}, f)
    final = os.path.join(root, checkpoint_name(step))
    # re-saving the same step (e.g. after a resume) swaps the folders, then deletes the old one
    replace_folder(tmp_dir, final, aside=os.path.join(root, f".trash-{checkpoint_name(step)}-{os.getpid()}"))
    if keep_last and keep_last > 0:
        for _, old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    for name in os.listdir(root):
        if name.startswith((".tmp-", ".trash-")) and os.path.join(root, name) != tmp_dir:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return final


def save_checkpoint(accelerator, root: str, step: int, keep_last: int, state: "TrainState | None" = None) -> str:
    """Every process writes its part (accelerate: model/optimizer/scaler on the main process, RNG per process)
    into ``root/.tmp-step-N``, the main process adds ``trainer_state.json`` (``state``) and commits it. Returns the
    final path."""
    tmp_dir = os.path.join(root, f".tmp-{checkpoint_name(step)}")
    if accelerator.is_main_process:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)  # a previous write of this step that was killed
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp_dir, safe_serialization=True)
    accelerator.wait_for_everyone()
    final = os.path.join(root, checkpoint_name(step))
    if accelerator.is_main_process:
        if state is not None:
            save_trainer_state(tmp_dir, state.state_dict())
        final = commit_checkpoint(tmp_dir, root, step, keep_last)
    accelerator.wait_for_everyone()
    return final


# ----------------------------------------------------------------------------------------------------------------
# Monitors
# ----------------------------------------------------------------------------------------------------------------


class CollapseMonitor:
    """Watches the teachers for the two DINO collapse modes (paper Sec. B.5) and warns once per mode, after
    ``patience`` consecutive logs, with what to change.

    * **One dimension dominates** (every sample gets the same sharp distribution): the entropy of the batch-mean
      teacher distribution (``*_teacher_batch_entropy``) falls below ``entropy_fraction * log K``.
    * **Uniform / constant output** (the teacher ignores its input; centring then makes it uniform): the spread of
      the teacher outputs across the batch (``*_teacher_spread``) falls below ``spread_threshold``, or the mean
      per-sample entropy (``*_teacher_entropy``) rises above ``uniform_fraction * log K``.

    The teacher-student KL is logged but not used: with the projector's affine-free final LayerNorm the student
    logits always have spread 1 / tau_s, so the KL cannot approach 0 even in a collapsed run.
    ``kl_threshold`` is accepted for configuration compatibility and ignored.
    """

    MODES = ("dominant", "uniform")

    def __init__(self, output_size: int, patience: int, entropy_fraction: float, kl_threshold: float | None = None,
                 uniform_fraction: float = 0.98, spread_threshold: float = 0.05):
        self.log_k = math.log(output_size)
        self.entropy_threshold = entropy_fraction * self.log_k
        self.uniform_threshold = uniform_fraction * self.log_k
        self.spread_threshold = float(spread_threshold)
        self.patience = max(1, int(patience))
        self.streaks = {mode: 0 for mode in self.MODES}
        self.warned: set[str] = set()

    def reasons(self, values: dict) -> dict[str, list[str]]:
        """The collapse signs in one log record, per mode."""
        found = {mode: [] for mode in self.MODES}
        for tower in ("video", "audio"):
            batch = values.get(f"{tower}_teacher_batch_entropy")
            if batch is not None and batch < self.entropy_threshold:
                found["dominant"].append(
                    f"{tower}_teacher_batch_entropy={batch:.3g} < {self.entropy_threshold:.3g} (of log K = "
                    f"{self.log_k:.3g})")
            spread = values.get(f"{tower}_teacher_spread")
            if spread is not None and spread < self.spread_threshold:
                found["uniform"].append(f"{tower}_teacher_spread={spread:.3g} < {self.spread_threshold:.3g}")
            entropy = values.get(f"{tower}_teacher_entropy")
            if entropy is not None and entropy > self.uniform_threshold:
                found["uniform"].append(
                    f"{tower}_teacher_entropy={entropy:.4g} > {self.uniform_threshold:.4g} (log K = {self.log_k:.4g})")
        return found

    def check(self, values: dict) -> str | None:
        """Update the streaks with one log record; return a warning the first time a mode lasts ``patience`` logs."""
        messages = []
        for mode, reasons in self.reasons(values).items():
            self.streaks[mode] = self.streaks[mode] + 1 if reasons else 0
            if self.streaks[mode] >= self.patience and mode not in self.warned:
                self.warned.add(mode)
                messages.append(self._message(mode, reasons))
        return " ".join(messages) or None

    def _message(self, mode: str, reasons: list[str]) -> str:
        head = f"possible {mode} collapse of the teachers: for {self.patience} consecutive logs {', '.join(reasons)}."
        if mode == "dominant":
            return head + (
                " One output dimension dominates for every clip. Centre faster (lower model.center_momentum, e.g. "
                "0.9 -> 0.8), soften the teachers (raise model.video_teacher_temperature / "
                "audio_teacher_temperature or their warm-up values), or slow the teacher (raise "
                "model.ema_momentum_start), and check the learning rate (paper Sec. B.5).")
        return head + (
            " The teachers output (nearly) the same thing for every clip and the centred distribution is uniform, "
            "so distillation carries no information. Sharpen the teachers (lower model.video_teacher_temperature / "
            "audio_teacher_temperature), centre more slowly (raise model.center_momentum, e.g. 0.9 -> 0.99), and "
            "let the teacher follow the student sooner (lower model.ema_momentum_start; at a few hundred steps "
            "0.997 leaves most of the random init in the teacher); see README 'Small-scale runs'.")


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------


def _use_cpu() -> bool:
    forced = os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes")
    return forced or not torch.cuda.is_available()


def _trackers(setting) -> list | None:
    if setting in (None, "none", False):
        return None
    if setting == "auto":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            try:
                import tensorboardX  # noqa: F401
            except ImportError:
                return None
        return ["tensorboard"]
    return list(setting) if isinstance(setting, (list, tuple)) else [setting]


MIXED_PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"


def _launcher_argv(pid: int | None = None) -> list[str] | None:
    """The command line of the ``accelerate launch`` process that started this one (Linux ``/proc``; the
    launcher is the parent for single-process and torchrun-style launches), or ``None``."""
    try:
        with open(f"/proc/{pid or os.getppid()}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None
    return argv if "launch" in argv and any("accelerate" in os.path.basename(a) for a in argv) else None


def _launcher_chose_precision(argv: list[str] | None, script: str | None = None) -> bool:
    """Whether the launcher's precision was chosen (``--mixed_precision`` before the script, ``--config_file``, or
    an ``accelerate config`` default file that sets it) rather than being its built-in default ``no``."""
    if argv is not None:
        launch = argv.index("launch")
        end = len(argv)
        if script:
            for i in range(launch + 1, len(argv)):
                if os.path.basename(argv[i]) == os.path.basename(script):
                    end = i
                    break
        head = argv[launch + 1:end]
        flags = ("--mixed_precision", "--mixed-precision", "--config_file", "--config-file")
        if any(a == f or a.startswith(f + "=") for a in head for f in flags):
            return True
    try:
        from accelerate.commands.config import default_config_file
    except ImportError:  # pragma: no cover
        return False
    if os.path.isfile(default_config_file):
        try:
            import yaml

            with open(default_config_file) as f:
                return bool((yaml.safe_load(f) or {}).get("mixed_precision"))
        except Exception:  # noqa: BLE001 - an unreadable accelerate config: accelerate itself will complain
            return False
    return False


def resolve_mixed_precision(config_value: str, launcher_value: str | None, launcher_chose: bool) -> tuple[str, str]:
    """The precision to train in and why (for the log).

    ``launcher_value`` is what ``accelerate launch`` passed (``ACCELERATE_MIXED_PRECISION``; ``None`` when the
    script runs without it). An explicit launcher choice (``launcher_chose``: ``--mixed_precision``, a
    ``--config_file`` or an ``accelerate config`` default) wins over ``train.mixed_precision``, loudly; the
    launcher's built-in default ``no`` (nothing chosen) does not override the configuration.
    """
    config_value = config_value or "no"
    if launcher_value is None:
        return config_value, "train.mixed_precision"
    launcher_value = str(launcher_value).lower()
    if launcher_value == config_value:
        return config_value, "train.mixed_precision and the launcher agree"
    if launcher_chose:
        return launcher_value, (f"the launcher's choice (accelerate launch --mixed_precision {launcher_value}) "
                                f"overrides train.mixed_precision={config_value}")
    return config_value, (f"train.mixed_precision; the launcher's {launcher_value!r} is its default, not a choice "
                          f"(pass accelerate launch --mixed_precision to override)")


def build_accelerator(config: dict, output_dir: str, precision: str | None = None):
    """``Accelerator(cpu=True)`` when there is no GPU (or ACCELERATE_USE_CPU is set): without it a two-process CPU
    launch runs each process alone and nothing says so (reference/environment.md). ``precision``: from
    :func:`resolve_mixed_precision` (default: ``train.mixed_precision``)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    cpu = _use_cpu()
    precision = precision or config["train"]["mixed_precision"] or "no"
    if cpu and precision == "fp16":
        logger.warning("fp16 mixed precision needs a GPU; running in fp32 on the CPU.")
        precision = "no"
    return Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        log_with=_trackers(config["log"]["trackers"]),
        project_config=ProjectConfiguration(project_dir=output_dir, logging_dir=os.path.join(output_dir, "logs")),
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=bool(config["train"]["find_unused_parameters"]))
        ],
    )


def clip_settings(config: dict, model_config: XKDConfig) -> ClipSettings:
    """Data settings, checked against the model's view sizes (a mismatch fails here, not deep in a conv)."""
    d, a = config["data"], config["augment"]
    v_cfg, a_cfg = model_config.video_config, model_config.audio_config
    settings = ClipSettings(
        clip_duration=float(d["clip_duration"]), fps=float(d["fps"]), short_side=int(d["short_side"]),
        local_num_frames=model_config.local_num_frames, num_local_video_views=model_config.num_local_video_views,
        sampling_rate=int(d["sampling_rate"]), n_fft=int(d["n_fft"]), hop_length=int(d["hop_length"]),
        num_mel_bins=a_cfg.num_mel_bins, mel_mean=float(d["mel_mean"]), mel_std=float(d["mel_std"]),
        global_frames=a_cfg.max_length, local_frames=model_config.local_max_length,
        local_audio_duration=float(d["local_audio_duration"]), local_audio_start_step=int(d["local_audio_start_step"]),
        num_local_audio_views=model_config.num_local_audio_views,
        global_gain=tuple(a["audio_global_gain"]), local_gain=tuple(a["audio_local_gain"]),
        global_random_resize_crop=bool(a["audio_global_random_resize_crop"]),
        local_random_resize_crop=bool(a["audio_local_random_resize_crop"]),
        virtual_crop_scale=tuple(a["audio_virtual_crop_scale"]), crop_scale=tuple(a["audio_crop_scale"]),
        max_retries=int(d["max_retries"]),
    )
    if settings.num_frames != v_cfg.num_frames:
        raise ValueError(
            f"data.clip_duration={settings.clip_duration} s at data.fps={settings.fps} gives {settings.num_frames} "
            f"frames, but the model's video_config.num_frames is {v_cfg.num_frames}."
        )
    if settings.local_num_frames > settings.num_frames:
        raise ValueError(f"model.local_num_frames={settings.local_num_frames} exceeds the {settings.num_frames}-frame clip.")
    if settings.short_side < max(v_cfg.image_size, model_config.local_image_size) // 2:
        raise ValueError(
            f"data.short_side={settings.short_side} is too small for {v_cfg.image_size}-pixel views "
            "(released: 112 for 112 and 96)."
        )
    if settings.local_num_samples > settings.num_samples:
        raise ValueError("data.local_audio_duration must not exceed data.clip_duration.")
    natural = 1 + settings.num_samples // settings.hop_length
    if abs(natural - settings.global_frames) > max(2, settings.global_frames // 8):
        raise ValueError(
            f"data.clip_duration/hop_length give {natural} spectrogram frames, far from the model's audio "
            f"max_length={settings.global_frames}; adjust data.hop_length."
        )
    return settings


def view_maker(config: dict, model_config: XKDConfig) -> XKDViewMaker:
    def settings(section: dict, size: int) -> VideoViewSettings:
        return VideoViewSettings(
            size=size, scale=tuple(section["scale"]), ratio=tuple(section["ratio"]), flip_p=float(section["flip_p"]),
            jitter=tuple(section["jitter"]), jitter_p=float(section["jitter_p"]),
            grayscale_p=float(section["grayscale_p"]), blur_p=float(section["blur_p"]),
            blur_sigma=tuple(section["blur_sigma"]), blur_kernel=section["blur_kernel"],
        )

    a = config["augment"]
    return XKDViewMaker(
        settings(a["video_global"], model_config.video_config.image_size),
        settings(a["video_local"], model_config.local_image_size),
        model_config.local_num_frames,
    )


def _step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    # A distinct, reproducible stream per (step, micro-batch, process) for masking noise and on-device augmentation.
    return (seed * 1_000_003 + step * 10_007 + micro * 101 + rank) % (2**63 - 1)


def _worker_init(worker_id: int) -> None:
    # Eight workers per GPU each running torch ops with all cores' threads would oversubscribe the CPU.
    torch.set_num_threads(1)


def _to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


class JsonLinesLog:
    """Append-only JSON-lines log (written even when no tracker is installed)."""

    def __init__(self, path: str, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if enabled:
            os.makedirs(os.path.dirname(path), exist_ok=True)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def run_pretraining(
    config: dict,
    train_data: str,
    output_dir: str,
    max_steps: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict:
    """Pretrain XKD. ``config`` comes from :func:`.config.load_config`.

    Args:
        train_data: a folder, a .txt/.csv list, or a datasets dataset (see :func:`.data.resolve_source`).
        output_dir: checkpoints, logs, the clip index and the exported folders go here. A folder that holds
            another run is refused unless ``resume`` or ``overwrite`` (:mod:`.run_folder`).
        max_steps: stop after this many optimizer steps in total (the schedules still follow ``train.epochs``,
            so that a run stopped early and resumed is the same run). ``None``: the whole schedule; ``0``: no step
            (the configuration, data scan and model are set up and checked; nothing is trained, saved or exported).
        resume: continue from the latest complete, readable checkpoint in ``output_dir/checkpoints``.
        overwrite: delete the run files already in ``output_dir`` (:data:`.run_folder.RUN_ARTIFACTS`) first.

    Returns:
        a summary dict (steps done, last logged values, export paths). Raises :class:`NonFiniteLossError` or
        :class:`DecodeFailureError` on the faults described in the module docstring, a ``ValueError``
        (:class:`.run_folder.RunFolderError`, ...) before anything is written for a bad configuration or folder.
    """
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    if max_steps is not None and (isinstance(max_steps, bool) or int(max_steps) != max_steps or max_steps < 0):
        raise ValueError(f"max_steps must be None (the whole schedule) or an integer >= 0, got {max_steps!r}")
    seed, train_cfg, data_cfg, log_cfg = int(config["seed"]), config["train"], config["data"], config["log"]
    log_dir = os.path.join(output_dir, "logs")
    ckpt_root = os.path.join(output_dir, "checkpoints")
    index_path = os.path.join(output_dir, INDEX_NAME)
    config_path = os.path.join(output_dir, CONFIG_NAME)

    # --- checks that write nothing (every process runs them, so that all stop together) --------------------------
    model_config = build_model_config(config)
    settings = clip_settings(config, model_config)
    check_run_folder(output_dir, resume, overwrite)
    changed: list[str] = []
    resume_from = None
    if resume:
        changed = check_resume_config(output_dir, config)
        resume_from = resumable_checkpoint(list_checkpoints(ckpt_root))
    source = resolve_source(train_data, extensions=tuple(data_cfg["extensions"] or VIDEO_EXTENSIONS),
                            column=data_cfg["column"], split=data_cfg["split"])
    if resume and os.path.exists(index_path):  # raises ClipIndexMismatchError before anything is written
        load_or_scan(source, index_path, float(data_cfg["min_duration"]), 1, scan=bool(data_cfg["scan"]),
                     on_mismatch="refuse")
    precision, precision_source = resolve_mixed_precision(
        train_cfg["mixed_precision"], os.environ.get(MIXED_PRECISION_ENV),
        _launcher_chose_precision(_launcher_argv(), script=sys.argv[0] if sys.argv else None),
    )

    accelerator = build_accelerator(config, output_dir, precision)
    is_main = accelerator.is_main_process
    # XKD_LOG_LEVEL=WARNING keeps a run to its progress bar and warnings (the Quickstart's quiet mode)
    level = os.environ.get("XKD_LOG_LEVEL", "INFO").upper() if is_main else "WARNING"
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    world, rank = accelerator.num_processes, accelerator.process_index
    if is_main:
        if overwrite:
            removed = clear_run_folder(output_dir)
            if removed:
                logger.warning("--overwrite: deleted %s from %s", ", ".join(removed), output_dir)
        os.makedirs(log_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    jsonl = JsonLinesLog(os.path.join(log_dir, "train_log.jsonl"), enabled=is_main)
    if is_main:
        if changed:
            logger.warning("--resume with a changed configuration: %s", ", ".join(changed))
        atomic_write_text(config_path, json.dumps(config, indent=2))
        overridden = "overrides" in precision_source
        (logger.warning if overridden else logger.info)(
            "%d process(es), device %s, mixed precision %s (%s)", world, accelerator.device,
            accelerator.mixed_precision, precision_source)
        jsonl.write({"event": "setup", "processes": world, "device": str(accelerator.device),
                     "mixed_precision": str(accelerator.mixed_precision), "mixed_precision_source": precision_source})

    # --- data ---------------------------------------------------------------------------------------------------
    report = None
    if is_main:  # one scan, shared through the file (and reused by --resume so the data order is the same)
        report = load_or_scan(source, index_path, float(data_cfg["min_duration"]), int(data_cfg["scan_workers"]),
                              scan=bool(data_cfg["scan"]), on_mismatch="refuse" if resume else "rescan")
        logger.info("%s", report.summary())
        jsonl.write({"event": "scan", "source": report.source, "total": report.total, "kept": len(report.kept),
                     "dropped": report.dropped, "examples": report.examples})
    accelerator.wait_for_everyone()
    if not is_main:
        if not os.path.exists(index_path):
            raise ValueError(
                f"Process {rank} cannot see {index_path}, which the main process wrote: --output-dir must be on a "
                "file system shared by all processes (and machines)."
            )
        with open(index_path) as f:  # the main process's scan, as written (never rescanned here)
            report = ScanReport.from_json(json.load(f))
    if not report.kept:
        raise ValueError(f"No usable clips in {train_data!r}:\n{report.summary()}")

    batch_size = int(train_cfg["per_device_batch_size"])
    accum = int(train_cfg["gradient_accumulation_steps"])
    dataset = XKDPretrainingDataset(source, report.kept, settings, seed=seed, durations=report.durations)
    sampler = ShardedEpochSampler(len(dataset), batch_size, world, rank, seed=seed)
    num_workers = int(data_cfg["num_workers"])
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_clips, num_workers=num_workers,
        persistent_workers=num_workers > 0, pin_memory=accelerator.device.type == "cuda", drop_last=True,
        prefetch_factor=2 if num_workers > 0 else None, worker_init_fn=_worker_init,
    )
    micro_per_epoch = sampler.batches_per_epoch
    if micro_per_epoch < 1:
        raise ValueError("Not even one batch per epoch; lower train.per_device_batch_size.")
    steps_per_epoch = micro_per_epoch / accum
    total_steps = max(1, int(float(train_cfg["epochs"]) * micro_per_epoch // accum))
    warmup_steps = int(float(train_cfg["warmup_epochs"]) * micro_per_epoch // accum)
    stop_step = total_steps if max_steps is None else min(total_steps, int(max_steps))  # 0: no step

    # --- model and optimizer ------------------------------------------------------------------------------------
    set_seed(seed)  # the same initial weights on every process
    if train_cfg["init_from"]:
        model = XKDForPretraining.from_pretrained(train_cfg["init_from"])
        model_config = model.config
    else:
        model = XKDForPretraining(model_config)
    if train_cfg["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
    model.train()
    compile_setting = train_cfg["compile"]
    if compile_setting:
        # In place: the module (and so state-dict names, EMA and export) stays the same object.
        backend = "inductor" if compile_setting is True else str(compile_setting)
        known = torch._dynamo.list_backends(exclude_tags=())
        if backend not in known:
            raise ValueError(f"train.compile: unknown torch.compile backend {backend!r}; use true, false or one of "
                             f"{sorted(known)}.")
        model.compile(backend=backend)
    groups = weight_decay_groups(model, float(train_cfg["weight_decay"]))
    adamw_kwargs = dict(lr=float(train_cfg["lr"]), betas=tuple(train_cfg["betas"]), eps=float(train_cfg["eps"]))
    if accelerator.device.type in ("cuda", "cpu"):
        # One fused kernel over all parameters; on the CPU it is 4x faster than torch's default foreach path.
        adamw_kwargs["fused"] = True
    optimizer = torch.optim.AdamW(groups, **adamw_kwargs)
    views = view_maker(config, model_config).to(accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped: XKDForPretraining = accelerator.unwrap_model(model)
    state = TrainState(world_size=world, per_device_batch_size=batch_size)

    if resume:
        if resume_from is None:
            logger.warning("--resume: no complete checkpoint in %s; starting from scratch.", ckpt_root)
        else:
            # every file was read through a safe path above (resumable_checkpoint); accelerate reads the model from
            # safetensors and the optimizer, scaler and RNG files with weights_only=True. Nothing is registered
            # with register_for_checkpointing (that path unpickles with weights_only=False).
            accelerator.load_state(resume_from)
            state.load_state_dict(load_trainer_state(resume_from))
            if state.world_size != world or state.per_device_batch_size != batch_size:
                # the data position is counted in micro-batches of this layout: re-derive it from the clip count
                logger.warning(
                    "Resuming with %d process(es) x batch %d; the checkpoint used %d x %d. The data position is "
                    "approximated from the number of clips seen.", world, batch_size, state.world_size,
                    state.per_device_batch_size,
                )
                state.micro_batches = state.clips // (world * batch_size)
                state.world_size, state.per_device_batch_size = world, batch_size
            logger.info("resumed from %s at step %d", resume_from, state.step)
            jsonl.write({"event": "resume", "checkpoint": resume_from, "step": state.step})
    failures = FailureTracker(float(data_cfg["max_failure_fraction"]), int(data_cfg["failure_check_min_samples"]),
                              state.decode_attempts, state.decode_failures)

    if accelerator.trackers:
        accelerator.init_trackers("xkd_pretraining", config=_flatten("", config, {}))
    if is_main:
        logger.info(
            "%d clips, %d micro-batches per epoch per process, %.2f optimizer steps per epoch, %d steps in the "
            "schedule (%d warm-up), stopping at %d", len(dataset), micro_per_epoch, steps_per_epoch, total_steps,
            warmup_steps, stop_step,
        )

    def micro_batches(start: int):
        epoch, offset = divmod(start, micro_per_epoch)
        while True:
            sampler.set_position(epoch, offset)
            for batch in loader:
                yield batch
            epoch, offset = epoch + 1, 0

    data_iter = micro_batches(state.micro_batches)
    collapse = CollapseMonitor(model_config.projector_output_size, log_cfg["collapse_patience"],
                               float(log_cfg["collapse_entropy_fraction"]), float(log_cfg["collapse_kl"]),
                               uniform_fraction=float(log_cfg["collapse_uniform_fraction"]),
                               spread_threshold=float(log_cfg["collapse_spread"]))
    failure_log = os.path.join(log_dir, "decode_failures.jsonl")
    nan_step = config["debug"]["nonfinite_loss_at_step"]
    every_ckpt, keep_last = int(config["checkpoint"]["every_steps"]), int(config["checkpoint"]["keep_last"])
    every_log = max(1, int(log_cfg["every_steps"]))
    global_batch = batch_size * world * accum
    progress = tqdm(total=stop_step, initial=state.step, disable=not is_main, unit="step", dynamic_ncols=True,
                    desc="XKD pretraining")
    last_values: dict[str, Any] = {}
    throughput, tick = None, time.perf_counter()
    v_cfg = model_config

    while state.step < stop_step:
        step = state.step
        human_step = step + 1  # 1-based in messages: "step 3" is the third optimizer step
        lr = learning_rate(step, float(train_cfg["lr"]), warmup_steps, total_steps, float(train_cfg["final_lr"]))
        for group in optimizer.param_groups:
            group["lr"] = lr
        momentum = ema_momentum(step, total_steps, v_cfg.ema_momentum_start, v_cfg.ema_momentum_end)
        epoch = (step * accum) // micro_per_epoch
        temps = (
            teacher_temperature(epoch, v_cfg.video_warmup_teacher_temperature, v_cfg.video_teacher_temperature,
                                v_cfg.teacher_temperature_warmup_epochs),
            teacher_temperature(epoch, v_cfg.audio_warmup_teacher_temperature, v_cfg.audio_teacher_temperature,
                                v_cfg.teacher_temperature_warmup_epochs),
        )
        for micro in range(accum):
            batch = next(data_iter)
            torch.manual_seed(_step_seed(seed, step, micro, rank))
            inputs = views(_to_device(batch, accelerator.device))
            sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
            with sync:
                output = model(**inputs, teacher_temperatures=temps)
                loss = output.loss
                if nan_step is not None and human_step == int(nan_step):
                    loss = loss * float("nan")  # fault injection for the tests (debug.nonfinite_loss_at_step)
                # One small all-reduce: every process must stop together, and the failure counts are global.
                flags = torch.tensor(
                    [0.0 if torch.isfinite(loss.detach()).item() else 1.0, float(len(batch["failed"])),
                     float(batch["video"].shape[0])], device=accelerator.device,
                )
                # one device-to-host copy per micro-batch (the stop decision needs it before the backward)
                nonfinite, failed_clips, batch_clips = accelerator.reduce(flags, reduction="sum").tolist()
                if nonfinite > 0:
                    last = latest_checkpoint(ckpt_root)
                    raise NonFiniteLossError(
                        f"The loss is not finite at step {human_step} (epoch {epoch}, lr {lr:.3g}); stopping without "
                        f"saving. The last good checkpoint is {last or 'none (no checkpoint was written yet)'}."
                    )
                accelerator.backward(loss / accum)
            if batch["failed"]:
                for failure in batch["failed"]:
                    logger.warning("skipped a clip that failed to decode: %s", failure)
                with open(failure_log, "a") as f:
                    for failure in batch["failed"]:
                        f.write(json.dumps({"step": human_step, "rank": rank, "file": failure}) + "\n")
            failures.update(int(batch_clips), int(failed_clips))
            state.micro_batches += 1
            state.clips += int(batch_clips)

        accelerator.unscale_gradients(optimizer)  # no-op without fp16; clipping must see true gradient norms
        grad_norms = clip_gradients_per_parameter(list(unwrapped.student_parameters()), float(train_cfg["clip_grad"]))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        unwrapped.update_teachers(momentum)  # after every optimizer step, on the unwrapped model
        state.step += 1
        state.decode_attempts, state.decode_failures = failures.attempts, failures.failures

        now = time.perf_counter()
        rate = global_batch / max(now - tick, 1e-9)
        throughput = rate if throughput is None else 0.9 * throughput + 0.1 * rate
        tick = now
        progress.update(1)

        if state.step % every_log == 0 or state.step == stop_step:
            # only what this objective computed (model.objective="mae" has no distillation or alignment terms)
            logged = [name for name in LOGGED_OUTPUTS if getattr(output, name, None) is not None]
            scalars = torch.stack([getattr(output, name).detach().float() for name in logged])
            scalars = accelerator.reduce(scalars, reduction="mean")
            values = {name: float(v) for name, v in zip(logged, scalars.tolist())}
            values.update(
                lr=lr, ema_momentum=momentum, video_teacher_temperature=temps[0], audio_teacher_temperature=temps[1],
                epoch=state.micro_batches / micro_per_epoch, clips_per_second=throughput,
                student_grad_norm=float(grad_norms.norm()) if grad_norms.numel() else 0.0,
                decode_failures=failures.failures, clips=state.clips,
            )
            last_values = values
            if accelerator.trackers:
                accelerator.log(values, step=state.step)
            jsonl.write({"step": state.step, **values})
            progress.set_postfix(loss=f"{values['loss']:.4f}", clips_s=f"{throughput:.1f}", lr=f"{lr:.2e}")
            warning = collapse.check(values)
            if warning and is_main:
                logger.warning("step %d: %s", state.step, warning)
                jsonl.write({"step": state.step, "warning": warning})

        if every_ckpt > 0 and (state.step % every_ckpt == 0 or state.step == stop_step):
            path = save_checkpoint(accelerator, ckpt_root, state.step, keep_last, state)
            if is_main:
                jsonl.write({"event": "checkpoint", "step": state.step, "path": path})
    progress.close()

    # --- export ---------------------------------------------------------------------------------------------------
    if max_steps == 0:  # a set-up check: nothing trained, so nothing to export
        if is_main:
            jsonl.write({"event": "done", "step": state.step, "exports": None})
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return {"step": state.step, "total_steps": total_steps, "values": {}, "exports": None,
                "decode_failures": failures.failures, "decode_attempts": failures.attempts}
    exports = export_models(accelerator, model, output_dir, settings)
    if config["debug"]["dump_rank_state"]:
        dump_rank_state(unwrapped, os.path.join(output_dir, "rank_state"), rank)
    if is_main:
        jsonl.write({"event": "done", "step": state.step, "exports": exports})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"step": state.step, "total_steps": total_steps, "values": last_values, "exports": exports,
            "decode_failures": failures.failures, "decode_attempts": failures.attempts}


def export_models(accelerator, model, output_dir: str, settings: ClipSettings) -> dict:
    """``OUT/pretraining``: the whole XKDForPretraining; ``OUT/teachers``: an XKDModel of the EMA teachers with the
    matching processors (frames + log-mel, sized for this model). Both load with ``from_pretrained``."""
    from ..processing_xkd import XKDProcessor

    state_dict = accelerator.get_state_dict(model)  # a collective under FSDP/DeepSpeed: every process calls it
    unwrapped = accelerator.unwrap_model(model)
    paths = {"pretraining": os.path.join(output_dir, "pretraining"), "teachers": os.path.join(output_dir, "teachers")}
    if accelerator.is_main_process:
        # From the gathered full state dict (sharded parameters under FSDP/DeepSpeed), and before save_pretrained,
        # which empties the dict it is given.
        teachers = unwrapped.export_teachers(state_dict)
        unwrapped.save_pretrained(paths["pretraining"], state_dict=state_dict, safe_serialization=True)
        teachers.save_pretrained(paths["teachers"], safe_serialization=True)
        # Processors that fit the model (frames, mel bins, crop; the released evaluation transform: shorter side to
        # int(crop / 0.875), centre crop), with the run's audio settings (its clip, when it gives the model's frames).
        processor = XKDProcessor.from_model_config(
            unwrapped.config,
            video_kwargs=dict(fps=settings.fps),
            audio_kwargs=dict(sampling_rate=settings.sampling_rate, n_fft=settings.n_fft,
                              hop_length=settings.hop_length, mean=settings.mel_mean, std=settings.mel_std,
                              **({"clip_duration": settings.clip_duration}
                                 if 1 + settings.num_samples // settings.hop_length == settings.global_frames else {})),
        )
        feature_extractor, video_processor = processor.feature_extractor, processor.video_processor
        for path in paths.values():
            processor.save_pretrained(path)
            feature_extractor.save_pretrained(path)
            video_processor.save_pretrained(path)
    accelerator.wait_for_everyone()
    return paths


def dump_rank_state(model: XKDForPretraining, folder: str, rank: int) -> str:
    """Each process writes its teachers and centers (used by the two-process test to compare ranks)."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for prefix in ("video_model.", "audio_model.", "video_teacher_head.", "audio_teacher_head.",
                   "video_teacher_center", "audio_teacher_center"):
        for key, value in model.state_dict().items():
            if key.startswith(prefix):
                tensors[key] = value.detach().cpu().contiguous().clone()
    path = os.path.join(folder, f"rank{rank}.safetensors")
    save_file(tensors, path)
    return path


__all__ = [
    "NonFiniteLossError", "DecodeFailureError", "TrainState", "FailureTracker", "CollapseMonitor",
    "checkpoint_name", "list_checkpoints", "latest_checkpoint", "commit_checkpoint", "save_checkpoint",
    "build_accelerator", "resolve_mixed_precision", "clip_settings", "view_maker", "run_pretraining",
    "export_models", "dump_rank_state",
]
