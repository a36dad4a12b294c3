"""The work behind ``training/linear_eval.py`` and ``training/finetune.py`` (kept here so it is importable and
tested; the scripts only parse arguments and turn readable errors into exit status 2)."""

from __future__ import annotations

import ast
import difflib
import json
import os
import re
from dataclasses import replace
from pathlib import Path

from .datasets import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, load_folder, load_split
from .features import LINEAR_EVAL_PROTOCOLS, ClipProtocol, extract_features, load_backbone
from ..hub import push_folder_to_hub
from ..model_card import MeasuredResult, make_downstream_card, save_card
from ..utils_io import atomic_write_text
from .linear_export import export_linear_classifier

__all__ = ["load_processors", "load_datasets", "run_linear_eval", "run_finetune", "DATASET_NAMES",
           "DownstreamUsageError", "parse_key_values", "check_recipe_overrides", "check_training_overrides",
           "check_checkpoint_folder", "check_output_folder", "check_classes", "check_decodable", "RECIPE_RULES"]

DATASET_NAMES = {"ucf101": "UCF101", "hmdb51": "HMDB51", "esc50": "ESC-50", "kinetics400": "Kinetics-400",
                 "kinetics_sound": "Kinetics-Sound", "fsd50k": "FSD50K", "folder": "custom"}


def load_processors(folder, need_video: bool, need_audio: bool):
    """`(XKDVideoProcessor | None, XKDFeatureExtractor | None)` from ``folder`` when saved there, else defaults."""
    from ..feature_extraction_xkd import XKDFeatureExtractor
    from ..video_processing_xkd import XKDVideoProcessor

    folder = Path(folder) if folder is not None else None
    vp = fe = None
    if need_video:
        has = folder is not None and (folder / "video_preprocessor_config.json").is_file()
        vp = XKDVideoProcessor.from_pretrained(str(folder)) if has else XKDVideoProcessor()
    if need_audio:
        fe = XKDFeatureExtractor()
        if folder is not None and (folder / "preprocessor_config.json").is_file():
            cfg = json.loads((folder / "preprocessor_config.json").read_text())
            if cfg.get("feature_extractor_type") == "XKDFeatureExtractor":
                fe = XKDFeatureExtractor.from_pretrained(str(folder))
    return vp, fe


def load_datasets(dataset: str, data_root, split_dir=None, split: int = 1, modality: str = "video",
                  allow_missing: bool = False, test_root=None):
    """Train and test `datasets.Dataset`s for a dataset name (see :func:`.datasets.load_split`)."""
    media = "audio" if modality == "audio" else "video"
    if dataset == "folder":
        exts = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS
        root = Path(data_root)
        train_root = root / "train" if test_root is None and (root / "train").is_dir() else root
        test_dir = Path(test_root) if test_root is not None else root / "test"
        train = load_folder(train_root, media, exts, allow_missing=allow_missing)
        test = load_folder(test_dir, media, exts, allow_missing=allow_missing)
        return train, test
    train = load_split(dataset, data_root, "train", split_dir, split, media, allow_missing=allow_missing)
    test = load_split(dataset, data_root, "test", split_dir, split, media, allow_missing=allow_missing)
    return train, test


# --------------------------------------------------------------------------------------------------------------
# Command-line checks (every one raises DownstreamUsageError, which the scripts turn into exit status 2)
# --------------------------------------------------------------------------------------------------------------
class DownstreamUsageError(ValueError):
    """A command-line argument, file or dataset cannot be used; the message names it and what was expected."""


def parse_key_values(items, flag: str) -> dict:
    """``["lr=1e-4", "bf16=true"]`` (the items of every repeated ``flag``) -> dict; values are Python literals,
    ``true``/``false``, or else strings. A key given twice with different values is an error naming it."""
    out: dict = {}
    raw_of: dict = {}
    for item in items or []:
        if "=" not in item:
            raise DownstreamUsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, raw = (part.strip() for part in item.split("=", 1))
        if not key:
            raise DownstreamUsageError(f"{flag} {item!r}: empty key")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = {"true": True, "false": False, "none": None, "null": None}.get(raw.lower(), raw)
        if key in out and out[key] != value:
            raise DownstreamUsageError(f"{flag} {key} is given twice with different values ({raw_of[key]!r} and "
                                       f"{raw!r}); keep one")
        out[key], raw_of[key] = value, raw
    return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: ``--set`` rules for fine-tuning recipe keys: (check, what is expected).
RECIPE_RULES = {
    "modality": (lambda v: v in ("video", "audio"), '"video" or "audio"'),
    "lr": (lambda v: _number(v) and v > 0, "a number > 0"),
    "layer_decay": (lambda v: v is None or (_number(v) and 0 < v <= 1), "null or a number in (0, 1]"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "warmup_epochs": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "epochs": (lambda v: _number(v) and v > 0, "a number > 0"),
    "mixup": (lambda v: _number(v) and v >= 0, "a number >= 0 (Beta alpha; 0: off)"),
    "cutmix": (lambda v: _number(v) and v >= 0, "a number >= 0 (Beta alpha; 0: off)"),
    "label_smoothing": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "rand_augment": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_integer(x) and x >= 0 for x in v),
                     "a pair (num_ops, magnitude), e.g. (4,7)"),
    "random_erasing": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "batch_size": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "test_clips": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "test_crops": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "scheduler": (lambda v: isinstance(v, str), "a transformers lr_scheduler_type name, e.g. cosine"),
    "classifier_dropout": (lambda v: v is None or (_number(v) and 0 <= v < 1), "null or a number in [0, 1)"),
    "multi_label": (lambda v: isinstance(v, bool), "true or false"),
    "volume_jitter": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "time_warp": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "freq_masks": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "freq_mask_param": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "time_masks": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "time_mask_param": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
}


def check_recipe_overrides(overrides: dict, flag: str = "--set") -> dict:
    """Every key must be a recipe key and every value of the expected type and range."""
    for key, value in overrides.items():
        if key not in RECIPE_RULES:
            close = difflib.get_close_matches(key, RECIPE_RULES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DownstreamUsageError(f"{flag} {key}={value!r}: unknown recipe key{hint}; known keys: "
                                       f"{sorted(RECIPE_RULES)}")
        check, expected = RECIPE_RULES[key]
        if not check(value):
            raise DownstreamUsageError(f"{flag} {key}={value!r}: expected {expected}")
    return overrides


def check_training_overrides(overrides: dict, flag: str = "--train-arg") -> dict:
    """Every key must be a `transformers.TrainingArguments` field, with a value of the field default's type."""
    import dataclasses

    from transformers import TrainingArguments

    defaults = {f.name: f.default for f in dataclasses.fields(TrainingArguments) if f.init}
    for key, value in overrides.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, defaults, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DownstreamUsageError(f"{flag} {key}={value!r}: not a TrainingArguments field{hint}")
        default = defaults[key]
        if isinstance(default, bool):
            ok, expected = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, expected = _integer(value), "an integer"
        elif isinstance(default, float):
            ok, expected = _number(value), "a number"
        else:
            ok, expected = True, ""
        if not ok:
            raise DownstreamUsageError(f"{flag} {key}={value!r}: expected {expected} (TrainingArguments.{key})")
    return overrides


def check_checkpoint_folder(checkpoint, flag: str, allow_hub_id: bool = False) -> None:
    """A local folder must exist and hold a ``config.json``; with ``allow_hub_id`` a name that is not a local path
    is taken for a Hub id (``owner/name``)."""
    path = Path(checkpoint)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DownstreamUsageError(f"{flag} {checkpoint}: the folder has no config.json, so it is not a saved "
                                       "model folder (pass the folder written by save_pretrained or the pretraining "
                                       "run's teachers/ or pretraining/ folder)")
        return
    if path.exists():
        raise DownstreamUsageError(f"{flag} {checkpoint}: not a folder")
    looks_like_hub_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(checkpoint)) is not None
    if not (allow_hub_id and looks_like_hub_id):
        raise DownstreamUsageError(f"{flag} {checkpoint}: no such folder"
                                   + (" (nor a Hub id of the form owner/name)" if allow_hub_id else ""))


def check_output_folder(output_dir, flag: str = "--output-dir") -> None:
    """The folder exists as a folder, or can be created (its nearest existing parent is a writable folder)."""
    path = Path(output_dir)
    if path.exists():
        if not path.is_dir():
            raise DownstreamUsageError(f"{flag} {output_dir}: exists and is not a folder")
        if not os.access(path, os.W_OK):
            raise DownstreamUsageError(f"{flag} {output_dir}: not writable")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise DownstreamUsageError(f"{flag} {output_dir}: cannot be created ({parent} is not a writable folder)")


def check_classes(train_ds, dataset: str, data_root) -> None:
    """A classifier needs at least two classes with training clips."""
    names = train_ds.features["label"].names if hasattr(train_ds.features["label"], "names") else None
    present = sorted({int(x) for x in train_ds["label"]}) if len(train_ds) and not isinstance(
        train_ds[0]["label"], (list, tuple)) else None
    if present is not None and len(present) < 2:
        shown = [names[i] for i in present] if names else present
        raise DownstreamUsageError(
            f"--data-root {data_root} ({dataset}): the training split has {len(present)} class {shown}; a classifier "
            "needs at least two classes")


def check_decodable(ds, modality: str, split: str) -> None:
    """The one rule for undecodable clips (both commands): refuse. Every file's header is read first; a file that
    cannot be opened, or lacks the stream the modality needs, stops the command before any feature is extracted
    or any training step runs, with the list of such files (remove them from the split or folder)."""
    from ..decoding_xkd import MediaDecodingError, MediaReader
    from .datasets import media_paths

    need_video = modality in ("video", "audio_visual")
    need_audio = modality in ("audio", "audio_visual")
    bad = []
    for path in media_paths(ds):
        try:
            with MediaReader(path) as reader:
                info = reader.info
        except MediaDecodingError as err:
            bad.append(f"{path}: {err.reason}")
            continue
        except Exception as err:  # noqa: BLE001 - PyAV's odd errors on odd files: still a file to name
            bad.append(f"{path}: {type(err).__name__}: {err}")
            continue
        if need_video and not info.has_video:
            bad.append(f"{path}: no video stream")
        elif need_audio and not info.has_audio:
            bad.append(f"{path}: no audio stream")
    if bad:
        shown = "\n  ".join(bad[:10]) + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DownstreamUsageError(f"{len(bad)} {split} file(s) cannot be decoded for modality {modality!r}:\n  "
                                   f"{shown}\nRemove them from the split (or folder) and run again.")


def _finish_folder(output_dir, modality, results, checkpoint, datasets, protocol, details, push_to_hub,
                   base_model, name, private=None):
    card = make_downstream_card(modality, name, results, base_model=base_model or str(checkpoint),
                                datasets=datasets, protocol=protocol, details=details, repo_id=push_to_hub)
    save_card(card, output_dir)
    if push_to_hub:
        push_folder_to_hub(output_dir, push_to_hub, commit_message=f"XKD {protocol}: {name}", private=private)


def run_linear_eval(
    checkpoint,
    dataset: str,
    data_root,
    modality: str = "video",
    split_dir=None,
    split: int = 1,
    protocol: str | None = None,
    classifier: str = "svm",
    costs=None,
    train_clips: int | None = None,
    test_clips: int | None = None,
    cache_dir=None,
    output_dir=None,
    push_to_hub: str | None = None,
    base_model: str | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    allow_missing: bool = False,
    probe_epochs: int | None = None,
    seed: int = 0,
    progress: bool = True,
    test_root=None,
) -> dict:
    """Extract (or reuse cached) features, run the SVM sweep or FC probe, optionally export + card + push.

    Returns a dict of the measured numbers (also written to ``output_dir/linear_eval_results.json``).
    """
    from .probe import PROBE_RECIPES, train_linear_probe
    from .svm import SVM_COST_SWEEPS, svm_sweep

    if protocol is not None and protocol not in LINEAR_EVAL_PROTOCOLS:
        # an unknown preset would otherwise fall back to the default clip counts without a word
        raise DownstreamUsageError(f"protocol: unknown clip-count preset {protocol!r}; expected one of "
                                   f"{', '.join(LINEAR_EVAL_PROTOCOLS)} (or none: the dataset's own)")
    name = protocol or dataset
    base = LINEAR_EVAL_PROTOCOLS.get(name, ClipProtocol(name=name, modality=modality))
    prot = replace(base, name=name, modality=modality, seed=seed,
                   train_clips=train_clips or base.train_clips, test_clips=test_clips or base.test_clips)
    if output_dir is not None:
        check_output_folder(output_dir)
    if classifier not in ("svm", "fc"):
        raise DownstreamUsageError(f"classifier must be 'svm' or 'fc', got {classifier!r}")
    train_ds, test_ds = load_datasets(dataset, data_root, split_dir, split, modality, allow_missing, test_root)
    if isinstance(checkpoint, (str, os.PathLike)):
        check_checkpoint_folder(checkpoint, "--checkpoint")
    check_classes(train_ds, dataset, data_root)
    check_decodable(train_ds, modality, "train")
    check_decodable(test_ds, modality, "test")
    backbone = load_backbone(checkpoint, modality)
    vp, fe = load_processors(checkpoint, prot.needs_video, prot.needs_audio)
    kw = dict(video_processor=vp, feature_extractor=fe, cache_dir=cache_dir, batch_size=batch_size, device=device,
              progress=progress)
    train = extract_features(backbone, train_ds, prot, "train", **kw)
    test = extract_features(backbone, test_ds, prot, "test", **kw)
    class_names = train_ds.features["label"].names
    out: dict = {"checkpoint": str(checkpoint), "dataset": dataset, "split": split, "modality": modality,
                 "classifier": classifier, "train_clips": prot.train_clips, "test_clips": prot.test_clips,
                 "num_train_videos": train.num_videos, "num_test_videos": test.num_videos}
    if classifier == "svm":
        sweep = costs if costs else SVM_COST_SWEEPS.get(name, SVM_COST_SWEEPS["ucf101"])
        result = svm_sweep(train, test, sweep, seed=seed, num_classes=len(class_names))
        print(result.summary())
        out.update(result.to_dict())
        weight, bias = result.weight, result.bias
        metric = MeasuredResult(dataset, DATASET_NAMES.get(dataset, dataset), "accuracy",
                                f"Top-1 accuracy (linear SVM, C={result.best_cost:g}, best of sweep)",
                                result.best_top1, "test", f"split{split}" if dataset != "folder" else None)
        protocol_text, details = "linear SVM", {"costs": sweep, "best C": result.best_cost}
    elif classifier == "fc":
        recipe = dict(PROBE_RECIPES.get(name, PROBE_RECIPES["kinetics400"]))
        multi = bool(recipe.pop("multi_label", False))
        if probe_epochs is not None:
            recipe["epochs"] = probe_epochs
        result = train_linear_probe(train, test, num_classes=len(class_names), multi_label=multi, seed=seed,
                                    device=device, **recipe)
        print(f"linear probe: {result.metrics}")
        out.update({"metrics": result.metrics, "probe": recipe})
        weight, bias = result.weight, result.bias
        key = "mAP" if multi else "top1"
        metric = MeasuredResult(dataset, DATASET_NAMES.get(dataset, dataset), "map" if multi else "accuracy",
                                f"{'mAP' if multi else 'Top-1 accuracy'} (linear probe)", result.metrics[key],
                                "test", f"split{split}" if dataset != "folder" else None)
        protocol_text, details = "linear probe", recipe
    else:
        raise ValueError(f"classifier must be 'svm' or 'fc', got {classifier!r}")
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / "linear_eval_results.json", json.dumps(out, indent=2, default=float))
        if modality in ("video", "audio"):
            export_linear_classifier(checkpoint, modality, weight, bias, class_names, output_dir,
                                     vp if modality == "video" else fe)
            details = {**details, "train clips per video": prot.train_clips, "test clips per video": prot.test_clips}
            _finish_folder(output_dir, modality, [metric], checkpoint, [dataset] if dataset != "folder" else None,
                           protocol_text, details, push_to_hub, base_model,
                           f"xkd-{modality}-{dataset}-{classifier}")
        elif push_to_hub:
            raise ValueError("--push-to-hub needs a single-modality classifier; audio_visual late fusion spans two "
                             "encoders and has no single pipeline model")
    return out


def run_finetune(
    pretrained,
    dataset: str,
    data_root,
    output_dir,
    recipe: str | None = None,
    modality: str | None = None,
    split_dir=None,
    split: int = 1,
    overrides: dict | None = None,
    training_overrides: dict | None = None,
    push_to_hub: str | None = None,
    base_model: str | None = None,
    allow_missing: bool = False,
    test_root=None,
    lora=None,
) -> dict:
    """Fine-tune with a released recipe, save a pipeline-ready folder with a card, optionally push it.

    ``lora`` (a :class:`.lora.LoraSettings`) trains LoRA adapters instead of every weight (see `finetune`)."""
    from .finetune import FINETUNE_RECIPES, finetune

    recipe_name = recipe or (dataset if dataset in FINETUNE_RECIPES else "ucf101")
    if recipe_name not in FINETUNE_RECIPES:
        raise ValueError(f"unknown recipe {recipe_name!r}; known: {sorted(FINETUNE_RECIPES)}")
    rec = dict(FINETUNE_RECIPES[recipe_name])
    if modality is not None:
        rec["modality"] = modality
    rec.update(check_recipe_overrides(dict(overrides or {})))
    check_training_overrides(dict(training_overrides or {}))
    check_output_folder(output_dir)
    modality = rec["modality"]
    train_ds, test_ds = load_datasets(dataset, data_root, split_dir, split, modality, allow_missing, test_root)
    if isinstance(pretrained, (str, os.PathLike)):
        check_checkpoint_folder(pretrained, "--pretrained", allow_hub_id=True)
    check_classes(train_ds, dataset, data_root)
    check_decodable(train_ds, modality, "train")
    check_decodable(test_ds, modality, "test")
    vp, fe = load_processors(pretrained, modality == "video", modality == "audio")
    out = finetune(pretrained, train_ds, test_ds, output_dir, rec, vp, fe, training_overrides, lora=lora)
    metrics = out.test_metrics or {k.replace("eval_", ""): v for k, v in out.eval_metrics.items()}
    multi = bool(rec.get("multi_label"))
    views = f"{rec['test_clips']} clips x {rec['test_crops']} crops" if out.test_metrics else "1 clip"
    cfg = f"split{split}" if dataset != "folder" else None
    dname = DATASET_NAMES.get(dataset, dataset)
    results = ([MeasuredResult(dataset, dname, "map", f"mAP (fine-tuning, {views})", metrics["mAP"], "test", cfg)]
               if multi else
               [MeasuredResult(dataset, dname, "accuracy", f"Top-1 accuracy (fine-tuning, {views})", metrics["top1"],
                               "test", cfg),
                MeasuredResult(dataset, dname, "accuracy", f"Top-5 accuracy (fine-tuning, {views})", metrics["top5"],
                               "test", cfg)])
    details = {k: v for k, v in rec.items() if k not in ("modality",)}
    if training_overrides:
        details.update({f"override {k}": v for k, v in training_overrides.items()})
    if lora is not None:
        from .lora import lora_settings_dict

        details.update({f"lora {k}": v for k, v in lora_settings_dict(lora).items()})
    summary = {"recipe": recipe_name, "train_loss": out.train_loss, "eval": out.eval_metrics,
               "test": out.test_metrics}
    atomic_write_text(Path(output_dir) / "finetune_results.json", json.dumps(summary, indent=2, default=float))
    _finish_folder(output_dir, modality, results, pretrained, [dataset] if dataset != "folder" else None,
                   "fine-tuning", details, push_to_hub, base_model, f"xkd-{modality}-{dataset}-finetuned")
    return summary
