"""What a pretraining run folder may hold, and how ``--resume`` reads it without running code.

* A fresh run never writes into a folder that holds another run (:func:`check_run_folder`): ``--resume``
  continues it, ``--overwrite`` deletes the run's files first (:func:`clear_run_folder`, only the names listed in
  :data:`RUN_ARTIFACTS`; anything else in the folder is left alone).
* ``--resume`` with a model configuration whose parameter shapes differ from the saved one is refused before
  anything is written (:func:`shape_changes`).
* A checkpoint is read only through paths that cannot run code (:func:`verify_checkpoint`): safetensors headers,
  JSON, and ``torch.load(weights_only=True)`` (accelerate's optimizer, scaler and RNG files). A file that needs
  anything else to load (a pickle of arbitrary objects) stops the run, naming the file; a truncated or unreadable
  one makes ``--resume`` fall back to the previous complete checkpoint with a warning (:func:`resumable_checkpoint`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil

import torch

logger = logging.getLogger("transformers_xkd.pretraining")

TRAINER_STATE_NAME = "trainer_state.json"
#: Checkpoints written before the JSON state kept the counters in accelerate's ``register_for_checkpointing``
#: pickle; it is still read, but only with ``weights_only=True`` (it holds plain integers).
LEGACY_TRAINER_STATE_NAME = "custom_checkpoint_0.pkl"
CONFIG_NAME = "pretraining_config.json"
INDEX_NAME = "clip_index.json"
#: Files and folders a run writes into its --output-dir (what --overwrite deletes).
RUN_ARTIFACTS = ("checkpoints", "logs", "pretraining", "teachers", "rank_state", INDEX_NAME, CONFIG_NAME)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")


class RunFolderError(ValueError):
    """The output folder cannot be used as asked (it holds another run, or --resume would mix two runs)."""


class UnsafeCheckpointError(RunFolderError):
    """A checkpoint file would need more than tensors and plain values to load: refused, nothing was loaded."""


class CorruptCheckpointError(RunFolderError):
    """A checkpoint file is truncated or unreadable."""


# ----------------------------------------------------------------------------------------------------------------
# Fresh run vs --resume vs --overwrite
# ----------------------------------------------------------------------------------------------------------------


def flatten_config(prefix: str, value, out: dict) -> dict:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}`` (into ``out``): scalars kept, ``None`` as ``"null"``,
    anything else as its ``str`` (what trackers and the resume comparison take)."""
    if isinstance(value, dict):
        for k, v in value.items():
            flatten_config(f"{prefix}.{k}" if prefix else k, v, out)
    elif isinstance(value, (int, float, str, bool)) or value is None:
        out[prefix] = value if value is not None else "null"
    else:
        out[prefix] = str(value)
    return out


def run_artifacts(output_dir: str) -> list[str]:
    """The names of :data:`RUN_ARTIFACTS` present in ``output_dir``."""
    if not os.path.isdir(output_dir):
        return []
    return [name for name in RUN_ARTIFACTS if os.path.exists(os.path.join(output_dir, name))]


def check_run_folder(output_dir: str, resume: bool, overwrite: bool) -> None:
    """Refuse a fresh run into a folder that holds another run (read-only; every process may call it)."""
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite exclude each other: continue the run or replace it.")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise RunFolderError(f"--output-dir {output_dir} exists and is not a folder.")
    found = run_artifacts(output_dir)
    if found and not resume and not overwrite:
        raise RunFolderError(
            f"--output-dir {output_dir} already holds a run ({', '.join(found)}). Pass --resume to continue it, "
            "--overwrite to delete that run's files first, or choose another --output-dir."
        )


def clear_run_folder(output_dir: str) -> list[str]:
    """Delete the run's own files (:data:`RUN_ARTIFACTS`) from ``output_dir``; returns what was deleted."""
    removed = []
    for name in run_artifacts(output_dir):
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        removed.append(name)
    return removed


def _parameter_shapes(model_section: dict) -> dict[str, tuple]:
    from ..modeling_xkd import XKDForPretraining
    from .config import build_model_config

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = XKDForPretraining(build_model_config({"model": model_section}))
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def shape_changes(saved_model_section: dict, model_section: dict, limit: int = 5) -> list[str]:
    """Parameters whose shape differs between two ``model`` sections (``"name: (a) -> (b)"``), at most ``limit``
    (plus a count of the rest); empty when every shape is the same."""
    before, now = _parameter_shapes(saved_model_section), _parameter_shapes(model_section)
    changes = [f"{k}: {before.get(k, 'absent')} -> {now.get(k, 'absent')}"
               for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if len(changes) > limit:
        changes = changes[:limit] + [f"... and {len(changes) - limit} more"]
    return changes


def check_resume_config(output_dir: str, config: dict) -> list[str]:
    """Compare ``config`` with the run's saved one. Raises :class:`RunFolderError` when the model's parameter
    shapes would change; returns the other changed keys (``"key: old -> new"``) for a warning."""
    path = os.path.join(output_dir, CONFIG_NAME)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as err:
        raise RunFolderError(f"--resume: cannot read {path} ({err}); it holds the run's configuration.") from None
    changed_shapes = shape_changes(saved.get("model", {}), config["model"])
    if changed_shapes:
        raise RunFolderError(
            f"--resume: the model configuration changes parameter shapes compared with {path} "
            f"({'; '.join(changed_shapes)}). A checkpoint cannot continue with other shapes: resume with the saved "
            "configuration, or start a new run in another --output-dir (or with --overwrite)."
        )
    before, now = flatten_config("", saved, {}), flatten_config("", config, {})
    return [f"{k}: {before.get(k)} -> {now.get(k)}" for k in sorted(set(before) | set(now))
            if before.get(k) != now.get(k) and not k.startswith("debug.")]


# ----------------------------------------------------------------------------------------------------------------
# Reading checkpoints safely
# ----------------------------------------------------------------------------------------------------------------


def _safe_torch_load(path: str):
    """``torch.load(weights_only=True)`` with accelerate's allow-list (numpy arrays and dtypes for RNG states)."""
    try:
        from accelerate.utils import load as accelerate_load
    except ImportError:  # pragma: no cover - accelerate is part of the train extra
        return torch.load(path, map_location="cpu", weights_only=True)
    return accelerate_load(path, map_location="cpu", weights_only=True)


def verify_checkpoint(path: str) -> None:
    """Read every file of a checkpoint folder through a path that cannot run code.

    Raises:
        UnsafeCheckpointError: a pickle-based file holds objects that ``weights_only=True`` refuses, or a file of
            an unknown kind is present; its path is named.
        CorruptCheckpointError: a file is truncated or unreadable (the caller may fall back to an older checkpoint).
    """
    from safetensors import safe_open

    files = []
    for root, _, names in os.walk(path):
        files.extend(os.path.join(root, n) for n in names)
    corrupt = []  # every file is examined: an unsafe one stops the run even when another is merely corrupt
    for file in sorted(files):
        suffix = os.path.splitext(file)[1].lower()
        if suffix not in (".json", ".safetensors", *_PICKLE_SUFFIXES):
            raise UnsafeCheckpointError(
                f"checkpoint {path}: unexpected file {file} (checkpoints hold .safetensors, .json and weights-only "
                f"{'/'.join(_PICKLE_SUFFIXES)} files); refused, nothing was loaded. Remove it if you trust it."
            )
        try:
            if suffix == ".json":
                with open(file) as f:
                    json.load(f)
            elif suffix == ".safetensors":
                with safe_open(file, framework="pt") as f:  # parses the header; checks the size it declares
                    f.keys()
            else:
                _safe_torch_load(file)
        except pickle.UnpicklingError as err:
            lines = str(err).strip().splitlines() or [type(err).__name__]
            detail = next((line for line in lines if "Unsupported" in line), lines[0]).strip()
            raise UnsafeCheckpointError(
                f"checkpoint {path}: {file} holds pickled objects that are not tensors or plain values ({detail}); "
                "refused without loading it (it may have been tampered with). Nothing was loaded."
            ) from None
        except Exception as err:  # noqa: BLE001 - any other failure means the file cannot be read as written
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            corrupt.append(f"{file}: {type(err).__name__}: {first}")
    if corrupt:
        raise CorruptCheckpointError("; ".join(corrupt))


def resumable_checkpoint(candidates: list[tuple[int, str]]) -> str | None:
    """The newest of ``candidates`` (``(step, path)``, oldest first) that :func:`verify_checkpoint` accepts; a
    corrupt one is skipped with a warning naming it. An unsafe file stops everything."""
    corrupt = []
    for _, path in reversed(candidates):
        try:
            verify_checkpoint(path)
            load_trainer_state(path)
        except CorruptCheckpointError as err:
            logger.warning("--resume: checkpoint %s is corrupt (%s); falling back to the previous complete one.",
                           path, err)
            corrupt.append(f"{path} ({err})")
            continue
        return path
    if corrupt:
        raise CorruptCheckpointError("--resume: no readable checkpoint; corrupt: " + "; ".join(corrupt))
    return None


def save_trainer_state(folder: str, state: dict) -> None:
    with open(os.path.join(folder, TRAINER_STATE_NAME), "w") as f:
        json.dump({k: int(v) for k, v in state.items()}, f, indent=1)


def load_trainer_state(folder: str) -> dict:
    """The trainer's counters of a verified checkpoint (JSON; a legacy accelerate pickle only with
    ``weights_only=True``)."""
    path = os.path.join(folder, TRAINER_STATE_NAME)
    if os.path.exists(path):
        with open(path) as f:
            state = json.load(f)
    elif os.path.exists(os.path.join(folder, LEGACY_TRAINER_STATE_NAME)):
        state = _safe_torch_load(os.path.join(folder, LEGACY_TRAINER_STATE_NAME))
    else:
        raise CorruptCheckpointError(f"checkpoint {folder}: no {TRAINER_STATE_NAME} (the step and data position)")
    if not isinstance(state, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in state.values()):
        raise CorruptCheckpointError(f"{path}: expected a mapping of integer counters, got {state!r:.200}")
    return state


__all__ = [
    "RUN_ARTIFACTS", "TRAINER_STATE_NAME", "RunFolderError", "UnsafeCheckpointError", "CorruptCheckpointError",
    "run_artifacts", "check_run_folder", "clear_run_folder", "shape_changes", "check_resume_config",
    "verify_checkpoint", "resumable_checkpoint", "save_trainer_state", "load_trainer_state",
]
