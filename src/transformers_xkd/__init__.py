"""transformers-xkd: XKD (cross-modal knowledge distillation with domain alignment, AAAI 2024) for transformers.

Importing the package registers every XKD class with transformers' Auto classes, so that
`AutoModel.from_pretrained(dir)` and `pipeline("video-classification", model=dir)` work on XKD folders.
"""

from .configuration_xkd import XKD_VARIANTS, XKDAudioConfig, XKDConfig, XKDVideoConfig
from .modeling_xkd import (
    XKDAudioModel,
    XKDAudioPreTrainedModel,
    XKDForAudioClassification,
    XKDForPretraining,
    XKDForPretrainingOutput,
    XKDForVideoClassification,
    XKDModel,
    XKDModelOutput,
    XKDPreTrainedModel,
    XKDVideoModel,
    XKDVideoPreTrainedModel,
)

__version__ = "0.1.0"

__all__ = [
    "XKD_VARIANTS",
    "XKDVideoConfig",
    "XKDAudioConfig",
    "XKDConfig",
    "XKDVideoModel",
    "XKDAudioModel",
    "XKDModel",
    "XKDForVideoClassification",
    "XKDForAudioClassification",
    "XKDForPretraining",
    "XKDForPretrainingOutput",
    "XKDModelOutput",
    "XKDVideoPreTrainedModel",
    "XKDAudioPreTrainedModel",
    "XKDPreTrainedModel",
]


def _register() -> None:
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForAudioClassification,
        AutoModelForPreTraining,
        AutoModelForVideoClassification,
    )

    AutoConfig.register("xkd", XKDConfig, exist_ok=True)
    AutoConfig.register("xkd_video", XKDVideoConfig, exist_ok=True)
    AutoConfig.register("xkd_audio", XKDAudioConfig, exist_ok=True)
    AutoModel.register(XKDConfig, XKDModel, exist_ok=True)
    AutoModel.register(XKDVideoConfig, XKDVideoModel, exist_ok=True)
    AutoModel.register(XKDAudioConfig, XKDAudioModel, exist_ok=True)
    AutoModelForPreTraining.register(XKDConfig, XKDForPretraining, exist_ok=True)
    AutoModelForVideoClassification.register(XKDVideoConfig, XKDForVideoClassification, exist_ok=True)
    AutoModelForAudioClassification.register(XKDAudioConfig, XKDForAudioClassification, exist_ok=True)

    # Saved folders carry the code (auto_map + copied modules) for trust_remote_code loading without the package.
    XKDVideoConfig.register_for_auto_class("AutoConfig")
    XKDAudioConfig.register_for_auto_class("AutoConfig")
    XKDConfig.register_for_auto_class("AutoConfig")
    XKDVideoModel.register_for_auto_class("AutoModel")
    XKDAudioModel.register_for_auto_class("AutoModel")
    XKDModel.register_for_auto_class("AutoModel")
    XKDForPretraining.register_for_auto_class("AutoModelForPreTraining")
    XKDForVideoClassification.register_for_auto_class("AutoModelForVideoClassification")
    XKDForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")


_register()

# --- media registration (media helper) ---
# --- end media registration ---
