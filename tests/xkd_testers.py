"""Tester objects (as transformers' `VideoMAEModelTester`): tiny configs and inputs for the CPU tests.

Every test that needs a tiny tower, a tiny `XKDConfig` or a batch of pretraining views builds it here, so that
the sizes live in one place (the suite must stay fast on 2 cores):

- `XKDVideoModelTester`: 8 frames of 32 x 32 -> (2, 2, 2) = 8 tubelets, 1 + 8 tokens;
- `XKDAudioModelTester`: 64 x 16 log-mel -> (4, 4) = 16 patches, 1 + 16 tokens;
- `XKDModelTester`: both towers plus a tiny decoder, projector and local views (`XKDConfig`, `XKDForPretraining`).

The same testers drive transformers' `ModelTesterMixin` / `ConfigTester` when checked against an installed
transformers' sdist tests (see docs/architecture.md).
"""

import torch

from transformers_xkd import XKDAudioConfig, XKDConfig, XKDVideoConfig


class XKDVideoModelTester:
    """Tiny video tower: 8 frames of 32 x 32 -> (2, 2, 2) = 8 tubelets, 1 + 8 tokens."""

    def __init__(self, batch_size=2, num_frames=8, image_size=32, tubelet_size=4, patch_size=16, hidden_size=32,
                 num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3, seed=0):
        self.batch_size = batch_size
        self.num_frames, self.image_size = num_frames, image_size
        self.tubelet_size, self.patch_size = tubelet_size, patch_size
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        self.num_attention_heads, self.intermediate_size = num_attention_heads, intermediate_size
        self.num_labels = num_labels
        self.seed = seed
        self.num_patches = (num_frames // tubelet_size) * (image_size // patch_size) ** 2
        self.seq_length = self.num_patches + 1  # CLS first

    def config_kwargs(self) -> dict:
        """The tower's fields without labels (an `XKDVideoConfig`'s kwargs, or `XKDConfig(video_config=...)`)."""
        return dict(
            num_frames=self.num_frames, image_size=self.image_size, tubelet_size=self.tubelet_size,
            patch_size=self.patch_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
        )

    def get_config(self) -> XKDVideoConfig:
        return XKDVideoConfig(**self.config_kwargs(), num_labels=self.num_labels)

    def pixel_values(self, batch_size=None):
        g = torch.Generator().manual_seed(self.seed)
        shape = (batch_size or self.batch_size, self.num_frames, 3, self.image_size, self.image_size)
        return torch.randn(*shape, generator=g)

    def prepare_config_and_inputs_for_common(self):
        return self.get_config(), {"pixel_values": self.pixel_values()}

    def labels(self):
        return torch.arange(self.batch_size) % self.num_labels


class XKDAudioModelTester:
    """Tiny audio tower: 64 x 16 log-mel -> (4, 4) = 16 patches, 1 + 16 tokens."""

    def __init__(self, batch_size=2, max_length=64, num_mel_bins=16, frequency_patch_size=4, time_patch_size=16,
                 hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3,
                 seed=1):
        self.batch_size = batch_size
        self.max_length, self.num_mel_bins = max_length, num_mel_bins
        self.frequency_patch_size, self.time_patch_size = frequency_patch_size, time_patch_size
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        self.num_attention_heads, self.intermediate_size = num_attention_heads, intermediate_size
        self.num_labels = num_labels
        self.seed = seed
        self.num_patches = (num_mel_bins // frequency_patch_size) * (max_length // time_patch_size)
        self.seq_length = self.num_patches + 1

    def config_kwargs(self) -> dict:
        """The tower's fields without labels (an `XKDAudioConfig`'s kwargs, or `XKDConfig(audio_config=...)`)."""
        return dict(
            max_length=self.max_length, num_mel_bins=self.num_mel_bins,
            frequency_patch_size=self.frequency_patch_size, time_patch_size=self.time_patch_size,
            hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
        )

    def get_config(self) -> XKDAudioConfig:
        return XKDAudioConfig(**self.config_kwargs(), num_labels=self.num_labels)

    def input_values(self, batch_size=None):
        g = torch.Generator().manual_seed(self.seed)
        return torch.randn(batch_size or self.batch_size, self.max_length, self.num_mel_bins, generator=g)

    def prepare_config_and_inputs_for_common(self):
        return self.get_config(), {"input_values": self.input_values()}

    def labels(self):
        return torch.arange(self.batch_size) % self.num_labels


class XKDModelTester:
    """Both towers (`XKDModel`, `XKDForPretraining`), built from the two tower testers (as CLAP's tester is), with
    a tiny decoder (16 wide, 1 block), projector (32 -> 8 -> 64) and local views (4 x 16 x 16 video, 32 x 16
    audio). `pretraining` overrides any `XKDConfig` field for every config this tester builds."""

    def __init__(self, batch_size=2, **pretraining):
        self.batch_size = batch_size
        self.video_model_tester = XKDVideoModelTester(batch_size=batch_size)
        self.audio_model_tester = XKDAudioModelTester(batch_size=batch_size)
        self.pretraining = dict(
            decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
            decoder_intermediate_size=32, projector_hidden_size=32, projector_bottleneck_size=8,
            projector_output_size=64, local_num_frames=4, local_image_size=16, local_max_length=32,
        )
        self.pretraining.update(pretraining)
        self.hidden_size = self.video_model_tester.hidden_size
        self.num_hidden_layers = self.video_model_tester.num_hidden_layers

    def get_config(self, variant: str = "xkd", **overrides) -> XKDConfig:
        """A complete `XKDConfig` of the tiny towers for the paper's `variant` ("xkd", "xkd-mas", "xkd-mats"),
        with `overrides` of its fields (an unknown field is the config's error)."""
        kwargs = dict(self.pretraining, variant=variant)
        kwargs.update(overrides)
        return XKDConfig(video_config=self.video_model_tester.config_kwargs(),
                         audio_config=self.audio_model_tester.config_kwargs(), **kwargs)

    def prepare_config_and_inputs_for_common(self):
        return self.get_config(), {
            "pixel_values": self.video_model_tester.pixel_values(),
            "input_values": self.audio_model_tester.input_values(),
        }

    def pretraining_inputs(self, config: XKDConfig, batch_size=None, seed=0, with_noise=False):
        """Random global and local views of both modalities in the layouts `XKDForPretraining` takes; with
        `with_noise`, also fixed masking noise (drawn first), so that the forward is deterministic."""
        g = torch.Generator().manual_seed(seed)
        b, v, a = batch_size or self.batch_size, config.video_config, config.audio_config
        noise = {}
        if with_noise:
            noise = {"video_noise": torch.rand(b, v.num_patches, generator=g),
                     "audio_noise": torch.rand(b, a.num_patches, generator=g)}
        return {**noise,
            "pixel_values": torch.randn(b, v.num_frames, 3, v.image_size, v.image_size, generator=g),
            "input_values": torch.randn(b, a.max_length, a.num_mel_bins, generator=g),
            "local_pixel_values": torch.randn(
                b, config.num_local_video_views, config.local_num_frames, 3, config.local_image_size,
                config.local_image_size, generator=g),
            "local_input_values": torch.randn(
                b, config.num_local_audio_views, config.local_max_length, a.num_mel_bins, generator=g),
        }
