"""Shared fixtures: tiny configs (from the tester objects in xkd_testers.py; the suite must stay fast on 2 cores)
and the optional real media folder. Tests import testers from xkd_testers, never from this file."""

import os
import pathlib

import pytest

from transformers_xkd import XKDAudioConfig, XKDConfig, XKDVideoConfig
from xkd_testers import XKDAudioModelTester, XKDModelTester, XKDVideoModelTester


@pytest.fixture
def tiny_video_config() -> XKDVideoConfig:
    return XKDVideoConfig(**XKDVideoModelTester().config_kwargs())


@pytest.fixture
def tiny_audio_config() -> XKDAudioConfig:
    return XKDAudioConfig(**XKDAudioModelTester().config_kwargs())


@pytest.fixture
def tiny_xkd_config():
    """`XKDModelTester().get_config`: call it with a variant and field overrides -> a tiny `XKDConfig`."""
    def make(variant: str = "xkd", **overrides) -> XKDConfig:
        return XKDModelTester().get_config(variant, **overrides)
    return make


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
