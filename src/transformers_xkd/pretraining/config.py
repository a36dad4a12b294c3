"""Pretraining configuration: YAML files merged over the released defaults, plus ``--set key=value`` overrides.

Sections (every key is listed in :data:`DEFAULT_CONFIG`, which holds the released recipe, spec sections 4-6):

* ``model``: fields of :class:`~transformers_xkd.XKDConfig` (``video_config`` / ``audio_config`` as dicts); the view
  sizes come from here (global video ``num_frames`` x ``image_size``, local ``local_num_frames`` x
  ``local_image_size``, audio ``max_length`` / ``local_max_length`` x ``num_mel_bins``);
* ``data``: decoding and the scan; ``augment``: the view augmentations; ``train``: optimisation;
  ``checkpoint``, ``log``; ``debug``: fault injection and per-rank dumps used by the tests.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import yaml

from ..configuration_xkd import XKDConfig

DEFAULT_CONFIG: dict[str, Any] = {
    "seed": 99999,
    "model": {"variant": "xkd"},
    "data": {
        "clip_duration": 4.0,  # seconds: 32 frames at 8 fps, 64,000 samples at 16 kHz
        "fps": 8.0,
        "short_side": 112,  # frames are resized so that the shorter side is this (bilinear) before cropping
        "sampling_rate": 16000,
        "n_fft": 1024,
        "hop_length": 143,
        "mel_mean": -5.3688107,
        "mel_std": 4.410007,
        "local_audio_duration": 1.0,
        "local_audio_start_step": 100,  # samples: the released local start is randint(0, 480) * 100
        "min_duration": 1.1,  # both streams must be longer than this (released K400 filter)
        "scan": True,
        "column": None,  # datasets sources: the column holding paths/bytes (guessed when null)
        "split": "train",
        "extensions": None,  # folder sources: video file extensions (null: the usual video containers)
        "num_workers": 8,
        "scan_workers": 8,
        "max_retries": 10,
        "max_failure_fraction": 0.01,  # stop when more than this fraction of decoded clips fail
        "failure_check_min_samples": 500,  # ... once at least this many clips were attempted
    },
    "augment": {
        "video_global": {
            "scale": [0.2, 1.0], "ratio": [0.75, 1.3333333333333333], "flip_p": 0.5,
            "jitter": [0.4, 0.4, 0.4, 0.2], "jitter_p": 1.0, "grayscale_p": 0.0, "blur_p": 0.0,
            "blur_sigma": [0.1, 2.0], "blur_kernel": None,
        },
        "video_local": {
            "scale": [0.08, 0.4], "ratio": [0.75, 1.3333333333333333], "flip_p": 0.5,
            "jitter": [0.4, 0.4, 0.4, 0.2], "jitter_p": 1.0, "grayscale_p": 0.2, "blur_p": 0.5,
            "blur_sigma": [0.1, 2.0], "blur_kernel": None,  # null: released size // 20 * 2 + 1 (9 for 96)
        },
        "audio_global_gain": [0.9, 1.1],
        "audio_local_gain": [0.8, 1.2],
        "audio_global_random_resize_crop": False,
        "audio_local_random_resize_crop": True,
        "audio_virtual_crop_scale": [1.0, 1.5],
        "audio_crop_scale": [0.6, 1.5],
    },
    "train": {
        "per_device_batch_size": 32,  # x 8 GPUs = 256, the released global batch
        "gradient_accumulation_steps": 1,
        "epochs": 800,
        "warmup_epochs": 30,
        "lr": 1.0e-4,  # for a global batch of 256 (no scaling rule in the released code)
        "final_lr": 0.0,
        "weight_decay": 0.3,
        "betas": [0.9, 0.95],
        "eps": 1.0e-8,
        "clip_grad": 0.3,  # per parameter, students and their heads only
        "mixed_precision": "bf16",  # "no" | "bf16" | "fp16" (released: fp16 autocast + GradScaler)
        "gradient_checkpointing": False,
        # torch.compile the model's forward (nn.Module.compile, so checkpoints keep their names): False, True
        # (inductor) or a backend name. The first steps then include the compilation (minutes for ViT-B).
        "compile": False,
        "find_unused_parameters": False,
        "init_from": None,  # a save_pretrained XKDForPretraining folder to start from
    },
    "checkpoint": {"every_steps": 1000, "keep_last": 3},
    "log": {
        "every_steps": 20,
        "collapse_patience": 5,  # consecutive logs with collapsed monitors before the warning
        "collapse_entropy_fraction": 0.02,  # batch-mean teacher entropy below this fraction of log(K): one dim dominates
        "collapse_kl": 1.0e-4,  # unused (kept for old configs): the KL cannot reach 0, see CollapseMonitor
        "collapse_uniform_fraction": 0.98,  # mean teacher entropy above this fraction of log(K): uniform collapse
        "collapse_spread": 0.05,  # teacher outputs' std across the batch below this: constant-output collapse
        "trackers": "auto",  # "auto": tensorboard when installed; a list of accelerate tracker names; "none"
    },
    "debug": {"nonfinite_loss_at_step": None, "dump_rank_state": False},
}


def _merge(base: dict, update: dict, where: str = "", strict: bool = True) -> dict:
    """Recursive merge. ``strict``: keys must already exist (typos fail loudly); the ``model`` section is free
    (checked against XKDConfig's fields afterwards)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}.{key}" if where else key
        if strict and key not in out:
            raise ValueError(f"Unknown configuration key {path!r}; valid keys here: {sorted(out)}.")
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value, path, strict=strict and path != "model")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_model_keys(model: dict) -> None:
    known = set(XKDConfig().to_dict())
    unknown = sorted(k for k in model if k not in known)
    if unknown:
        raise ValueError(f"Unknown model configuration keys {unknown}; they must be XKDConfig fields.")


def _parse_value(raw: str):
    """YAML scalar/list, except that ``2e-4`` is a number (YAML 1.1, which PyYAML follows, wants ``2.0e-4``)."""
    if not raw.strip():
        return None
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _numbers(value):
    """Recursively turn strings such as ``1e-4`` (YAML 1.1 reads them as strings) into floats."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str):
        try:
            return float(value) if any(c.isdigit() for c in value) else value
        except ValueError:
            return value
    return value


def parse_overrides(items: Sequence[str]) -> dict:
    """``["train.lr=2e-4", "model.variant=xkd-mas"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--set expects key=value (e.g. train.lr=2e-4), got {item!r}.")
        key, raw = item.split("=", 1)
        keys = [k for k in key.strip().split(".") if k]
        if not keys:
            raise ValueError(f"--set {item!r}: empty key.")
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = _parse_value(raw)
    return out


def load_config(path: str | None = None, overrides: Sequence[str] | dict | None = None) -> dict:
    """Released defaults <- YAML file <- overrides. Unknown keys raise a ValueError naming them."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    if path is not None:
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a YAML mapping at the top level.")
        loaded = _numbers(loaded)
        config = _merge(config, loaded)
    if overrides:
        config = _merge(config, overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    _check_model_keys(config["model"])
    return config


def build_model_config(config: dict) -> XKDConfig:
    return XKDConfig(**copy.deepcopy(config["model"]))


__all__ = ["DEFAULT_CONFIG", "load_config", "parse_overrides", "build_model_config"]
