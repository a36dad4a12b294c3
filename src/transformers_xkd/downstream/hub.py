"""Model cards with measured results, linear heads exported as classifiers, and pushes to the Hub.

transformers' own `Trainer.create_model_card` writes no ``pipeline_tag`` and leaves ``model-index`` empty for
video classification (hf_conventions section 5), so the card is built here with `huggingface_hub.ModelCardData`:
``pipeline_tag`` (video-classification / audio-classification), ``library_name: transformers``, ``base_model``,
``datasets``, ``license: cc-by-nc-4.0`` (the released code's license) and the measured numbers as ``model-index``
`EvalResult` entries.

A linear-evaluation result (SVM or FC probe) is a linear layer on the frozen encoder's pooled feature, so
:func:`export_linear_classifier` writes it as an `XKDFor{Video,Audio}Classification` folder whose classifier holds
the SVM / probe weights: the same folder type as fine-tuning, loadable with ``pipeline(...)`` (with
``import transformers_xkd``) or with ``trust_remote_code=True`` (the folder carries ``modeling_xkd.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..model_card import CITATION, CODE_URL, PAPER_URL

__all__ = [
    "MeasuredResult",
    "make_downstream_card",
    "write_model_card",
    "export_linear_classifier",
    "push_folder_to_hub",
    "PUSH_IGNORE_PATTERNS",
]

PIPELINE_TAGS = {"video": "video-classification", "audio": "audio-classification"}
TASK_NAMES = {"video": "Video classification", "audio": "Audio classification"}
# Trainer leftovers and caches never belong in the model repo.
PUSH_IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/*", "runs/*", "_*", "*.npz", "features/*", ".cache/*"]


@dataclass(frozen=True)
class MeasuredResult:
    """One number measured by this package (percent), for the card's ``model-index``.

    Attributes:
        dataset_type / dataset_name: Hub dataset id-like type (``"ucf101"``) and display name.
        metric_type: ``"accuracy"`` or ``"map"``; metric_name: e.g. ``"Top-1 accuracy (linear SVM, C=0.01)"``.
        value: the number.
        split / config: dataset split (``"test"``) and config (``"split1"``, ``"fold1"``), optional.
    """

    dataset_type: str
    dataset_name: str
    metric_type: str
    metric_name: str
    value: float
    split: str | None = "test"
    config: str | None = None


def _is_hub_id(value: str | None) -> bool:
    # a local folder is not a Hub id; the card's base_model must name a repo others can open
    return bool(value) and not os.path.exists(str(value)) and str(value).count("/") == 1


def make_downstream_card(
    modality: str,
    model_name: str,
    results: list[MeasuredResult],
    base_model: str | None = None,
    datasets: list[str] | None = None,
    protocol: str = "fine-tuning",
    details: dict | None = None,
    license: str = "cc-by-nc-4.0",
    repo_id: str | None = None,
):
    """A `huggingface_hub.ModelCard` for a downstream XKD classifier.

    Args:
        modality: ``"video"`` or ``"audio"`` (sets ``pipeline_tag``).
        model_name: the model-index name.
        results: measured numbers.
        base_model: the pretrained XKD repo id (omitted from the metadata when it is a local path).
        datasets: Hub dataset ids/names the classifier was trained on.
        protocol: ``"fine-tuning"``, ``"linear SVM"`` or ``"linear probe"`` (prose only).
        details: hyper-parameters shown in a table.
        repo_id: used in the usage snippet.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    if modality not in PIPELINE_TAGS:
        raise ValueError(f"modality must be 'video' or 'audio', got {modality!r}")
    eval_results = [
        EvalResult(
            task_type=PIPELINE_TAGS[modality], task_name=TASK_NAMES[modality],
            dataset_type=r.dataset_type, dataset_name=r.dataset_name, dataset_split=r.split,
            dataset_config=r.config, metric_type=r.metric_type, metric_name=r.metric_name,
            metric_value=round(float(r.value), 4),
        )
        for r in results
    ]
    data = ModelCardData(
        model_name=model_name,
        base_model=base_model if _is_hub_id(base_model) else None,
        datasets=datasets or None,
        license=license,
        library_name="transformers",
        pipeline_tag=PIPELINE_TAGS[modality],
        tags=["xkd", modality, PIPELINE_TAGS[modality], protocol.replace(" ", "-")],
        metrics=sorted({r.metric_type for r in results}) or None,
        eval_results=eval_results or None,
    )
    rid = repo_id or "<repo_id>"
    base_text = f"[{base_model}](https://huggingface.co/{base_model})" if _is_hub_id(base_model) else (
        f"`{base_model}`" if base_model else "an XKD checkpoint")
    rows = "\n".join(
        f"| {r.dataset_name} | {r.config or ''} | {r.split or ''} | {r.metric_name} | {r.value:.2f} |" for r in results
    ) or "| - | - | - | - | - |"
    detail_rows = "\n".join(f"| {k} | {v} |" for k, v in (details or {}).items())
    content = f"""---
{data.to_yaml()}
---

# {model_name}

An XKD {modality} encoder ({base_text}) with a classification head trained by **{protocol}**, exported by
[transformers-xkd]({CODE_URL}). XKD: *Cross-modal Knowledge Distillation with Domain Alignment for Video
Representation Learning* (AAAI 2024, [paper]({PAPER_URL})).

## Results (measured)

| dataset | config | split | metric | value |
|---|---|---|---|---|
{rows}

## Usage

```python
from transformers import pipeline

clf = pipeline("{PIPELINE_TAGS[modality]}", model="{rid}", trust_remote_code=True)
print(clf("clip.{'mp4' if modality == 'video' else 'wav'}"))
```

With `pip install transformers-xkd`, `import transformers_xkd` registers the classes and `trust_remote_code` is
not needed. Decoding uses PyAV (`pip install av`); no torchvision, torchaudio or ffmpeg program is required.

## Training procedure

| setting | value |
|---|---|
| protocol | {protocol} |
{detail_rows}

## License

CC BY-NC 4.0, the license of the original XKD code release.

## Citation

```bibtex
{CITATION}
```
"""
    return ModelCard(content)


def write_model_card(folder, card) -> Path:
    """Write ``card`` as ``folder/README.md`` (replacing the Trainer's card) and return the path."""
    path = Path(folder) / "README.md"
    card.save(str(path))
    return path


def export_linear_classifier(
    pretrained,
    modality: str,
    weight: np.ndarray,
    bias: np.ndarray,
    class_names: list[str],
    output_dir,
    processor=None,
):
    """Write a frozen encoder + a linear layer (SVM or FC probe) as an `XKDFor*Classification` folder.

    Args:
        pretrained: the XKD folder the features came from.
        modality: ``"video"`` or ``"audio"`` (late fusion has no single-tower classifier: refused).
        weight `(C, D)`, bias `(C,)`: the linear layer on the pooled feature.
        class_names: label names, index order.
        output_dir: destination folder.
        processor: the `XKDVideoProcessor` / `XKDFeatureExtractor` used for features, saved alongside.

    Returns:
        the classification model (in eval mode).
    """
    from .finetune import load_classifier

    if modality not in ("video", "audio"):
        raise ValueError(f"only single-modality linear heads can be exported as a classifier, got {modality!r} "
                         "(an audio-visual late-fusion SVM spans two encoders)")
    weight = np.asarray(weight, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    if weight.shape != (len(class_names), bias.shape[0]) and weight.shape[0] != len(class_names):
        raise ValueError(f"weight must be (num_classes={len(class_names)}, D), got {weight.shape}")
    model = load_classifier(pretrained, modality, class_names)
    if weight.shape[1] != model.config.hidden_size:
        raise ValueError(f"weight has {weight.shape[1]} inputs but the encoder's feature size is "
                         f"{model.config.hidden_size}")
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(weight))
        model.classifier.bias.copy_(torch.from_numpy(bias))
    model.eval()
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output_dir))
    if processor is not None:
        processor.save_pretrained(str(output_dir))
    return model


def push_folder_to_hub(folder, repo_id: str, commit_message: str = "Upload XKD classifier",
                       private: bool | None = None, token: str | None = None, revision: str | None = None):
    """Create ``repo_id`` if needed and upload ``folder`` (minus Trainer checkpoints, logs and feature caches).

    Uses `huggingface_hub.HfApi` (looked up at call time, so tests can stand in a local fake). Returns the
    commit info of `upload_folder`.
    """
    import huggingface_hub

    folder = Path(folder)
    for required in ("config.json", "README.md"):
        if not (folder / required).is_file():
            raise ValueError(f"{folder} has no {required}: save the model and write its card before pushing")
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{folder} has no .safetensors weights to push")
    api = huggingface_hub.HfApi(token=token)
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    return api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, revision=revision,
        repo_type="model", ignore_patterns=PUSH_IGNORE_PATTERNS,
    )


def save_results_json(folder, payload: dict) -> Path:
    """``folder/eval_results.json``: the measured numbers next to the weights (also pushed)."""
    path = Path(folder) / "eval_results.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=float))
    return path
