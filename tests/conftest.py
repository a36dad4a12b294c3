"""Shared fixtures: tiny configs (the suite must stay fast on 2 cores) and the optional real media folder."""

import os
import pathlib

import pytest
import torch

from transformers_xkd import XKDAudioConfig, XKDConfig, XKDVideoConfig

TINY_VIDEO = dict(
    image_size=32, num_frames=8, tubelet_size=4, patch_size=16, hidden_size=32, num_hidden_layers=2,
    num_attention_heads=2, intermediate_size=64,
)
TINY_AUDIO = dict(
    num_mel_bins=16, max_length=64, frequency_patch_size=4, time_patch_size=16, hidden_size=32,
    num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
)
TINY_PRETRAINING = dict(
    decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32,
    projector_hidden_size=32, projector_bottleneck_size=8, projector_output_size=64,
    local_num_frames=4, local_image_size=16, local_max_length=32,
)


def make_tiny_xkd_config(variant: str = "xkd", **overrides) -> XKDConfig:
    """A complete XKDConfig small enough for CPU tests (video 8x32x32 -> 8 tokens, audio 16x64 -> 16 tokens)."""
    kwargs = dict(TINY_PRETRAINING, variant=variant)
    kwargs.update(overrides)
    return XKDConfig(video_config=dict(TINY_VIDEO), audio_config=dict(TINY_AUDIO), **kwargs)


def make_tiny_batch(config: XKDConfig, batch: int = 2, seed: int = 0):
    """Random global and local views of both modalities in the layouts XKDForPretraining takes."""
    g = torch.Generator().manual_seed(seed)
    v, a = config.video_config, config.audio_config
    return dict(
        pixel_values=torch.randn(batch, v.num_frames, 3, v.image_size, v.image_size, generator=g),
        input_values=torch.randn(batch, a.max_length, a.num_mel_bins, generator=g),
        local_pixel_values=torch.randn(
            batch, config.num_local_video_views, config.local_num_frames, 3, config.local_image_size,
            config.local_image_size, generator=g,
        ),
        local_input_values=torch.randn(
            batch, config.num_local_audio_views, config.local_max_length, a.num_mel_bins, generator=g
        ),
    )


@pytest.fixture
def tiny_video_config() -> XKDVideoConfig:
    return XKDVideoConfig(**TINY_VIDEO)


@pytest.fixture
def tiny_audio_config() -> XKDAudioConfig:
    return XKDAudioConfig(**TINY_AUDIO)


@pytest.fixture
def tiny_xkd_config():
    return make_tiny_xkd_config


@pytest.fixture
def real_media() -> pathlib.Path:
    """The shared real clips (../shared/media), found through XKD_REAL_MEDIA; skipped with the reason otherwise."""
    root = os.environ.get("XKD_REAL_MEDIA")
    if not root:
        pytest.skip("XKD_REAL_MEDIA not set: the real-media checks need the shared media folder (.ci/run sets it)")
    path = pathlib.Path(root)
    if not path.is_dir():
        pytest.skip(f"XKD_REAL_MEDIA={root} is not a folder")
    return path
