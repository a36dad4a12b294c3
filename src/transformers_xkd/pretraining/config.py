"""Pretraining configuration: YAML files merged over the released defaults, plus ``--set key=value`` overrides.

Sections (every key is listed in :data:`DEFAULT_CONFIG`, which holds the released `xkd.yaml` / `main_xkd.py` recipe):

* ``model``: fields of :class:`~transformers_xkd.XKDConfig` (``video_config`` / ``audio_config`` as dicts); the view
  sizes come from here (global video ``num_frames`` x ``image_size``, local ``local_num_frames`` x
  ``local_image_size``, audio ``max_length`` / ``local_max_length`` x ``num_mel_bins``);
* ``data``: decoding and the scan; ``augment``: the view augmentations; ``train``: optimisation;
  ``checkpoint``, ``log``; ``debug``: fault injection and per-rank dumps used by the tests.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any, Callable, Sequence

import yaml

from ..configuration_xkd import XKDConfig
from ..log_mel_xkd import KINETICS_SOUND_MEAN, KINETICS_SOUND_STD

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
        "mel_mean": KINETICS_SOUND_MEAN,  # -5.3688107, the released Kinetics-Sound statistics (log_mel_xkd)
        "mel_std": KINETICS_SOUND_STD,  # 4.410007
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


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key, the value, where it came from and what was
    expected. A ``ValueError``, so that the command line turns it into exit status 2."""


def parse_overrides(items: Sequence[str]) -> dict:
    """``["train.lr=2e-4", "model.variant=xkd-mas"]`` -> nested dict; values are parsed as YAML scalars/lists.

    The items of repeated ``--set`` flags add up; a key given twice with different values (or once as a whole
    section and once as one of its keys) is an error naming it.
    """
    out: dict = {}
    seen: dict[str, tuple[str, Any]] = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. train.lr=2e-4), got {item!r}.")
        key, raw = item.split("=", 1)
        keys = [k for k in key.strip().split(".") if k]
        if not keys:
            raise ConfigError(f"--set {item!r}: empty key.")
        dotted = ".".join(keys)
        value = _parse_value(raw)
        if dotted in seen:
            if seen[dotted][1] != value:
                raise ConfigError(f"--set {dotted} is given twice with different values ({seen[dotted][0]!r} and "
                                  f"{raw!r}); keep one.")
            continue
        for other in seen:
            if other.startswith(dotted + ".") or dotted.startswith(other + "."):
                raise ConfigError(f"--set {other} and --set {dotted} overlap (one is inside the other); keep one.")
        seen[dotted] = (raw, value)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# Validation: types follow DEFAULT_CONFIG (and XKDConfig for the model section); ranges are listed here.
# ----------------------------------------------------------------------------------------------------------------


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pair(ok, ordered=True):
    return lambda v: (isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) and ok(x) for x in v)
                      and (not ordered or v[0] <= v[1]))


_PROBABILITY = (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
_POSITIVE = (lambda v: _is_number(v) and v > 0, "a number > 0")
_NON_NEGATIVE = (lambda v: _is_number(v) and v >= 0, "a number >= 0")
_POSITIVE_INT = (lambda v: _is_int(v) and v >= 1, "an integer >= 1")
_NON_NEGATIVE_INT = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
_RANGE = (_pair(lambda x: x > 0), "a list [min, max] with 0 < min <= max")
_VIEW_RULES = {
    "scale": (_pair(lambda x: 0 < x <= 1), "a list [min, max] with 0 < min <= max <= 1"),
    "ratio": _RANGE, "blur_sigma": _RANGE,
    "flip_p": _PROBABILITY, "jitter_p": _PROBABILITY, "grayscale_p": _PROBABILITY, "blur_p": _PROBABILITY,
    "jitter": (lambda v: isinstance(v, (list, tuple)) and len(v) == 4 and all(_is_number(x) and x >= 0 for x in v),
               "a list of 4 numbers >= 0 (brightness, contrast, saturation, hue)"),
    "blur_kernel": (lambda v: v is None or (_is_int(v) and v >= 1 and v % 2 == 1), "null or an odd integer >= 1"),
}
#: Range rules by dotted key; keys not listed here get the rule implied by their default's type.
CONFIG_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": _NON_NEGATIVE_INT,
    "data.clip_duration": _POSITIVE, "data.fps": _POSITIVE, "data.short_side": _POSITIVE_INT,
    "data.sampling_rate": _POSITIVE_INT, "data.n_fft": _POSITIVE_INT, "data.hop_length": _POSITIVE_INT,
    "data.mel_mean": (lambda v: _is_number(v), "a number"),
    "data.mel_std": _POSITIVE, "data.local_audio_duration": _POSITIVE, "data.local_audio_start_step": _POSITIVE_INT,
    "data.min_duration": _NON_NEGATIVE, "data.num_workers": _NON_NEGATIVE_INT, "data.scan_workers": _POSITIVE_INT,
    "data.max_retries": _NON_NEGATIVE_INT, "data.max_failure_fraction": _PROBABILITY,
    "data.failure_check_min_samples": _NON_NEGATIVE_INT,
    "data.column": (lambda v: v is None or isinstance(v, str), "null or a column name"),
    "data.split": (lambda v: isinstance(v, str), "a split name"),
    "data.extensions": (lambda v: v is None or (isinstance(v, list) and v and all(isinstance(x, str) for x in v)),
                        "null or a list of file extensions, e.g. [.mp4, .avi]"),
    **{f"augment.video_{view}.{k}": rule for view in ("global", "local") for k, rule in _VIEW_RULES.items()},
    "augment.audio_global_gain": _RANGE, "augment.audio_local_gain": _RANGE,
    "augment.audio_virtual_crop_scale": _RANGE, "augment.audio_crop_scale": _RANGE,
    "train.per_device_batch_size": _POSITIVE_INT, "train.gradient_accumulation_steps": _POSITIVE_INT,
    "train.epochs": _POSITIVE, "train.warmup_epochs": _NON_NEGATIVE, "train.lr": _POSITIVE,
    "train.final_lr": _NON_NEGATIVE, "train.weight_decay": _NON_NEGATIVE, "train.eps": _POSITIVE,
    "train.betas": (_pair(lambda x: 0 <= x < 1, ordered=False), "a list of 2 numbers in [0, 1), e.g. [0.9, 0.95]"),
    "train.clip_grad": _POSITIVE,
    "train.mixed_precision": (lambda v: v in ("no", "bf16", "fp16"), 'one of "no", "bf16", "fp16"'),
    "train.compile": (lambda v: isinstance(v, (bool, str)), "true, false or a torch.compile backend name"),
    "train.init_from": (lambda v: v is None or isinstance(v, str), "null or a saved XKDForPretraining folder"),
    "checkpoint.every_steps": (_NON_NEGATIVE_INT[0], "an integer >= 0 (0: no checkpoints)"),
    "checkpoint.keep_last": (_NON_NEGATIVE_INT[0], "an integer >= 0 (0: keep all)"),
    "log.every_steps": _POSITIVE_INT,
    "log.trackers": (lambda v: v is None or v is False or isinstance(v, str)
                     or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
                     '"auto", "none", a tracker name or a list of them'),
    "debug.nonfinite_loss_at_step": (lambda v: v is None or _is_int(v), "null or a step number"),
}


def _type_rule(default) -> tuple[Callable[[Any], bool], str] | None:
    """The rule implied by a default value's type (for keys without an entry in :data:`CONFIG_RULES`)."""
    if isinstance(default, bool):
        return (lambda v: isinstance(v, bool), "true or false")
    if isinstance(default, int):
        return (_is_int, "an integer")
    if isinstance(default, float):
        return (_is_number, "a number")
    if isinstance(default, str):
        return (lambda v: isinstance(v, str), "a string")
    if isinstance(default, list):
        n = len(default)
        return (lambda v: isinstance(v, (list, tuple)) and len(v) == n, f"a list of {n} values, e.g. {default}")
    return None


def _leaves(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf; the ``model`` section's keys count as leaves (their values may be dicts)."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and prefix != "model":
            out.update(_leaves(value, path))
        else:
            out[path] = value
    return out


def _describe(path: str, value, origins: dict[str, str]) -> str:
    try:
        shown = json.dumps(value)
    except (TypeError, ValueError):
        shown = repr(value)
    origin = next((origins[k] for k in (path, *_parents(path)) if k in origins), "configuration")
    return f"--set {path}={shown}" if origin == "--set" else f"{origin}: {path}={shown}"


def _parents(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def _check_model_values(model: dict, origins: dict[str, str]) -> None:
    """Types of the ``model`` section follow XKDConfig's defaults (and its tower configs' for the nested dicts)."""
    defaults = XKDConfig().to_dict()

    def check(path, value, default):
        if default is None or value is None:
            return
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{_describe(path, value, origins)}: expected a mapping of "
                                  f"{path.rsplit('.', 1)[-1]} fields.")
            for k, v in value.items():
                if k in default:
                    check(f"{path}.{k}", v, default[k])
            return
        rule = (lambda v: isinstance(v, (list, tuple)), "a list") if isinstance(default, list) else _type_rule(default)
        if rule is not None and not rule[0](value):
            raise ConfigError(f"{_describe(path, value, origins)}: expected {rule[1]} (the XKDConfig field's type).")

    for key, value in model.items():
        if key in defaults:
            check(f"model.{key}", value, defaults[key])


def validate_config(config: dict, origins: dict[str, str] | None = None) -> dict:
    """Check every value's type and range, in place; returns ``config`` with ``train.mixed_precision`` normalised
    (YAML reads a bare ``no`` as false). ``origins`` maps dotted keys to where they were set (for the message).

    Raises:
        ConfigError: naming the key, the value, where it came from and what was expected.
    """
    origins = origins or {}
    train = config.get("train", {})
    if train.get("mixed_precision") in (False, None):
        train["mixed_precision"] = "no"
    defaults = _leaves(DEFAULT_CONFIG)
    for path, value in _leaves(config).items():
        if path.startswith("model."):
            continue
        rule = CONFIG_RULES.get(path) or _type_rule(defaults.get(path))
        if rule is not None and not rule[0](value):
            raise ConfigError(f"{_describe(path, value, origins)}: expected {rule[1]}.")
    if train["warmup_epochs"] > train["epochs"]:
        raise ConfigError(f"{_describe('train.warmup_epochs', train['warmup_epochs'], origins)}: expected at most "
                          f"train.epochs={train['epochs']}.")
    _check_model_values(config.get("model", {}), origins)
    try:
        build_model_config(config)
    except (ValueError, TypeError) as err:
        where = sorted({v for k, v in origins.items() if k.startswith("model.")}) or ["configuration"]
        raise ConfigError(f"{', '.join(where)}: the model section is not a valid XKDConfig: {err}") from None
    return config


def load_config(path: str | None = None, overrides: Sequence[str] | dict | None = None) -> dict:
    """Released defaults <- YAML file <- overrides, then :func:`validate_config`. Unknown keys and wrong values
    raise a :class:`ConfigError` (a ``ValueError``) naming them."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    origins: dict[str, str] = {}
    if path is not None:
        with open(path) as f:
            try:
                loaded = yaml.safe_load(f) or {}
            except yaml.YAMLError as err:
                raise ConfigError(f"{path}: not valid YAML ({err}).") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a YAML mapping at the top level.")
        loaded = _numbers(loaded)
        config = _merge(config, loaded)
        origins.update({k: str(path) for k in _leaves(loaded)})
    if overrides:
        parsed = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        config = _merge(config, parsed)
        origins.update({k: "--set" for k in _leaves(parsed)})
    _check_model_keys(config["model"])
    return validate_config(config, origins)


def build_model_config(config: dict) -> XKDConfig:
    return XKDConfig(**copy.deepcopy(config["model"]))


__all__ = ["DEFAULT_CONFIG", "CONFIG_RULES", "ConfigError", "load_config", "parse_overrides", "validate_config",
           "build_model_config"]
