"""Linear-evaluation results (SVM or FC probe) exported as classifier folders.

A linear-evaluation result is a linear layer on the frozen encoder's pooled feature, so
:func:`export_linear_classifier` writes it as an `XKDFor{Video,Audio}Classification` folder whose classifier holds
the SVM / probe weights: the same folder type as fine-tuning, loadable with ``pipeline(...)`` (with
``import transformers_xkd``) or with ``trust_remote_code=True`` (the folder carries ``modeling_xkd.py``). Its card
comes from `transformers_xkd.model_card`, the push from `transformers_xkd.hub`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["export_linear_classifier"]


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
