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
    XKDOutput,
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
    "XKDOutput",
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
from .decoding_xkd import (  # noqa: E402
    DecodedMedia,
    MediaDecodingError,
    MediaInfo,
    MediaNotFoundError,
    MediaReader,
    decode_media,
    load_audio,
)
from .clips_xkd import ClipSpec, Clips, audio_windows, clips_from_frames, decode_clips, read_clips  # noqa: E402
from .feature_extraction_xkd import XKDFeatureExtractor  # noqa: E402
from .log_mel_xkd import XKDLogMelSpectrogram  # noqa: E402
from .processing_xkd import XKDProcessor  # noqa: E402
from .video_processing_xkd import XKDVideoProcessor  # noqa: E402

__all__ += [
    "XKDFeatureExtractor",
    "XKDVideoProcessor",
    "XKDProcessor",
    "MediaReader",
    "MediaInfo",
    "DecodedMedia",
    "MediaDecodingError",
    "MediaNotFoundError",
    "decode_media",
    "decode_clips",
    "load_audio",
    "ClipSpec",
    "Clips",
    "read_clips",
    "clips_from_frames",
    "audio_windows",
    "XKDLogMelSpectrogram",
]


def _register_media() -> None:
    from transformers import AutoFeatureExtractor, AutoProcessor

    # `transformers.AutoVideoProcessor` is a dummy without torchvision, but the class in its module works, and the
    # video-classification pipeline loads its video processor through it (default backend key "torchvision"; our
    # processor needs no torchvision, so it is registered under both keys).
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    for config_class in (XKDVideoConfig, XKDConfig):
        AutoVideoProcessor.register(
            config_class,
            video_processor_classes={"torchvision": XKDVideoProcessor, "pil": XKDVideoProcessor},
            exist_ok=True,
        )
    for config_class in (XKDAudioConfig, XKDConfig):
        AutoFeatureExtractor.register(config_class, XKDFeatureExtractor, exist_ok=True)
    AutoProcessor.register(XKDConfig, XKDProcessor, exist_ok=True)
    # Saved folders carry the processing code (auto_map + copied modules) for trust_remote_code loading.
    XKDFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
    XKDVideoProcessor.register_for_auto_class("AutoVideoProcessor")
    XKDProcessor.register_for_auto_class("AutoProcessor")


_register_media()
# --- end media registration ---

# --- related methods: CCL and MNF + CSC (issue 15) ---
from .configuration_xkd_distillation import XKDDistillationConfig, XKDR2Plus1DConfig  # noqa: E402
from .distillation_ccl import (  # noqa: E402
    CCLCompositionHead,
    ccl_contrastive_loss,
    ccl_objective,
    ccl_symmetric_contrastive_loss,
    ccl_symmetric_kl_loss,
)
from .distillation_mnf import (  # noqa: E402
    MNFModule,
    csc_loss,
    csc_temperature,
    mnf_gate_sparsity_loss,
    mnf_objective,
    mnf_triplet_loss,
)
from .modeling_xkd_distillation import (  # noqa: E402
    XKDDistillationOutput,
    XKDForCCLDistillation,
    XKDForMNFDistillation,
    XKDR2Plus1DForVideoClassification,
    XKDR2Plus1DModel,
)

__all__ += [
    "XKDR2Plus1DConfig",
    "XKDDistillationConfig",
    "XKDR2Plus1DModel",
    "XKDR2Plus1DForVideoClassification",
    "XKDForCCLDistillation",
    "XKDForMNFDistillation",
    "XKDDistillationOutput",
    "CCLCompositionHead",
    "ccl_contrastive_loss",
    "ccl_symmetric_contrastive_loss",
    "ccl_symmetric_kl_loss",
    "ccl_objective",
    "MNFModule",
    "csc_loss",
    "csc_temperature",
    "mnf_triplet_loss",
    "mnf_gate_sparsity_loss",
    "mnf_objective",
]
# --- end related methods ---
