"""Downstream protocols for XKD encoders: frozen-feature SVM / linear probes, Trainer fine-tuning, Hub export.

Modules: :mod:`.datasets` (labelled folders, UCF101 / HMDB51 / ESC-50 split lists, missing-file reports),
:mod:`.features` (clip sampling, late fusion, cached feature extraction), :mod:`.svm` (released cost sweeps),
:mod:`.probe` (FC probe, mAP), :mod:`.finetune` (layer-wise LR decay, batched augmentation, multi-view testing),
:mod:`.linear_export` (a linear head as a classifier folder; its card: ``model_card``, its push: ``hub``),
:mod:`.metrics` (offline top-k / mAP),
:mod:`.lora` (LoRA fine-tuning with PEFT: apply, save/load adapter, merge into a plain folder).
"""

from .datasets import (
    MissingMediaError,
    MissingMediaReport,
    SplitFileError,
    check_entries,
    load_esc50,
    load_folder,
    load_hmdb51,
    load_split,
    load_ucf101,
)
from .features import LINEAR_EVAL_PROTOCOLS, ClipProtocol, FeatureSet, extract_features, late_fusion, load_backbone
from .lora import LoraSettings, apply_lora, load_adapter, merge_adapter, save_adapter
from .metrics import average_by_video, mean_average_precision, top_k_accuracy
from .probe import PROBE_RECIPES, train_linear_probe
from .svm import SVM_COST_SWEEPS, SVMSweepResult, svm_sweep

__all__ = [
    "MissingMediaError", "MissingMediaReport", "SplitFileError", "check_entries", "load_esc50", "load_folder",
    "load_hmdb51", "load_split", "load_ucf101", "LINEAR_EVAL_PROTOCOLS", "ClipProtocol", "FeatureSet",
    "extract_features", "late_fusion", "load_backbone", "average_by_video", "mean_average_precision",
    "top_k_accuracy", "PROBE_RECIPES", "train_linear_probe", "SVM_COST_SWEEPS", "SVMSweepResult", "svm_sweep",
    "LoraSettings", "apply_lora", "save_adapter", "load_adapter", "merge_adapter",
]
