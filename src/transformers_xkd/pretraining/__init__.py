"""XKD self-supervised pretraining on accelerate: data (PyAV decoding in DataLoader workers), views and
augmentations (kornia, batched on the training device), schedules, and the training loop.

Entry point: ``accelerate launch training/pretrain.py --config training/configs/xkd.yaml --train-data SRC
--output-dir OUT`` (see :func:`run_pretraining`). kornia and accelerate (the ``train`` extra) are imported only
when the views or the loop are built.
"""

from .config import DEFAULT_CONFIG, build_model_config, load_config, parse_overrides
from .data import (
    ClipSettings,
    ClipSource,
    ScanReport,
    ShardedEpochSampler,
    XKDPretrainingDataset,
    collate_clips,
    resolve_source,
    scan_clips,
)
from .schedules import (
    clip_gradients_per_parameter,
    ema_momentum,
    learning_rate,
    teacher_temperature,
    weight_decay_groups,
)
from .trainer import (
    DecodeFailureError,
    FailureTracker,
    NonFiniteLossError,
    commit_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    run_pretraining,
)
from .views import VideoViewSettings, XKDViewMaker, released_local_video_settings
from .prepare import PrepareSettings, prepare_shards
from .shards import ShardClipSource, load_manifest

__all__ = [
    "DEFAULT_CONFIG", "load_config", "parse_overrides", "build_model_config",
    "ClipSettings", "ClipSource", "ScanReport", "ShardedEpochSampler", "XKDPretrainingDataset", "collate_clips",
    "resolve_source", "scan_clips",
    "learning_rate", "ema_momentum", "teacher_temperature", "weight_decay_groups", "clip_gradients_per_parameter",
    "run_pretraining", "NonFiniteLossError", "DecodeFailureError", "FailureTracker", "commit_checkpoint",
    "latest_checkpoint", "list_checkpoints",
    "VideoViewSettings", "XKDViewMaker", "released_local_video_settings",
    "PrepareSettings", "prepare_shards", "ShardClipSource", "load_manifest",
]
