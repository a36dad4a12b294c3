"""LoRA fine-tuning of XKD classifiers with PEFT (optional extra: ``pip install transformers-xkd[peft]``).

* :class:`LoraSettings`: rank, alpha, dropout, target modules. The default targets are the attention and MLP
  projections of every encoder block (``qkv``, ``proj``, ``fc1``, ``fc2``: the names of `XKDAttention` and
  `XKDMLP`); the patch projection (``projection``) and the final norm are left frozen. The classification head is
  new for every label set, so it is trained in full (PEFT's ``modules_to_save``) and saved with the adapter.
* :func:`apply_lora`: wrap a classifier in a `peft.PeftModel`; only the adapters and the head train.
* :func:`save_adapter` / :func:`load_adapter`: the adapter folder (PEFT's ``adapter_config.json`` +
  ``adapter_model.safetensors``) plus the classifier's ``config.json`` (labels, sizes), so that loading needs
  only the adapter folder and the pretrained checkpoint it names.
* :func:`merge_adapter`: fold the adapters into the weights (W + (alpha / r) B A) and save a plain
  `XKDFor*Classification` folder that `pipeline(...)` and `from_pretrained` load without PEFT.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

__all__ = [
    "DEFAULT_LORA_TARGET_MODULES",
    "LoraSettings",
    "apply_lora",
    "count_parameters",
    "save_adapter",
    "load_adapter",
    "merge_adapter",
]

# The Linear layers of every block: XKDAttention.qkv / .proj and XKDMLP.fc1 / .fc2 (PEFT matches name suffixes).
DEFAULT_LORA_TARGET_MODULES = ("qkv", "proj", "fc1", "fc2")
_CLASSIFIER_CONFIG = "classifier_config.json"


def _require_peft():
    try:
        import peft
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "LoRA fine-tuning needs the optional `peft` package: pip install 'transformers-xkd[peft]'."
        ) from err
    return peft


@dataclass
class LoraSettings:
    """LoRA hyper-parameters.

    Args:
        rank: the rank r of each update B A.
        alpha: the scale numerator; the update is (alpha / r) B A.
        dropout: dropout on the adapter's input.
        target_modules: module-name suffixes to adapt (default: attention and MLP projections of every block).
        train_head: also train (and save) the classification head in full; it is new for each label set.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = field(default=DEFAULT_LORA_TARGET_MODULES)
    train_head: bool = True

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}.")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must lie in [0, 1), got {self.dropout!r}.")
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules:
            raise ValueError("LoRA target_modules must name at least one module (e.g. qkv, proj, fc1, fc2).")

    def peft_config(self):
        peft = _require_peft()
        return peft.LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            modules_to_save=["classifier"] if self.train_head else None,
            bias="none",
        )


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def apply_lora(model: nn.Module, settings: LoraSettings | None = None):
    """Wrap an `XKDFor{Video,Audio}Classification` in a `peft.PeftModel` with LoRA adapters.

    Every base weight is frozen; the adapters (and, with ``train_head``, the head) train. Raises a clear error
    when no module matches ``target_modules``.
    """
    peft = _require_peft()
    settings = settings or LoraSettings()
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    missing = [t for t in settings.target_modules if t not in names]
    if missing:
        raise ValueError(
            f"LoRA target_modules {missing} match no Linear layer of {type(model).__name__}; "
            f"its Linear layers are named {sorted(names)}."
        )
    return peft.get_peft_model(model, settings.peft_config())


def save_adapter(peft_model, folder) -> Path:
    """Save the adapter (and the trained head) in ``folder``, with the classifier config it belongs to."""
    folder = Path(folder)
    peft_model.save_pretrained(str(folder))
    base = peft_model.get_base_model()
    (folder / _CLASSIFIER_CONFIG).write_text(json.dumps(
        {"model_class": type(base).__name__, "config": base.config.to_dict()}, indent=2, sort_keys=True))
    return folder


def load_adapter(adapter_dir, pretrained=None, is_trainable: bool = False):
    """Rebuild the classifier from ``pretrained`` (default: the checkpoint the adapter names) and load the adapter.

    Returns the `peft.PeftModel` (eval mode unless ``is_trainable``).
    """
    peft = _require_peft()
    from .. import modeling_xkd
    from ..configuration_xkd import XKDAudioConfig, XKDVideoConfig

    adapter_dir = Path(adapter_dir)
    info_path = adapter_dir / _CLASSIFIER_CONFIG
    if not info_path.is_file():
        raise FileNotFoundError(f"{adapter_dir} has no {_CLASSIFIER_CONFIG}: not a folder written by save_adapter.")
    info = json.loads(info_path.read_text())
    cls = {"XKDForVideoClassification": modeling_xkd.XKDForVideoClassification,
           "XKDForAudioClassification": modeling_xkd.XKDForAudioClassification}.get(info["model_class"])
    if cls is None:
        raise ValueError(f"{info_path}: unknown model_class {info['model_class']!r}.")
    config_cls = XKDVideoConfig if cls is modeling_xkd.XKDForVideoClassification else XKDAudioConfig
    config = config_cls.from_dict(info["config"])
    if pretrained is None:
        pretrained = peft.PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    if pretrained is None:
        raise ValueError(f"{adapter_dir}: the adapter names no base checkpoint; pass `pretrained`.")
    # The head is saved with the adapter (modules_to_save); the base one is re-initialised, then replaced.
    base = cls.from_pretrained(pretrained, config=config, ignore_mismatched_sizes=True)
    model = peft.PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=is_trainable)
    return model if is_trainable else model.eval()


def merge_adapter(peft_model, output_dir=None, processor=None):
    """Fold the adapters into the base weights and return the plain classifier; with ``output_dir``, save it
    there (weights, config, remote code) together with ``processor``, a folder `pipeline(...)` loads."""
    merged = peft_model.merge_and_unload()
    if output_dir is not None:
        output_dir = Path(output_dir)
        merged.save_pretrained(str(output_dir))
        if processor is not None:
            processor.save_pretrained(str(output_dir))
    return merged


def lora_settings_dict(settings: LoraSettings) -> dict:
    """The settings as plain JSON values (for run summaries and model cards)."""
    out = asdict(settings)
    out["target_modules"] = list(settings.target_modules)
    return out
