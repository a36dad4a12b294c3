"""XKDProcessor (issue 3): one call on a file with sound gives both inputs from the same window."""

import json

import numpy as np
import pytest
import torch

from media_utils import write_media
from transformers_xkd.decoding_xkd import MediaDecodingError
from transformers_xkd.feature_extraction_xkd import XKDFeatureExtractor
from transformers_xkd.processing_xkd import XKDProcessor
from transformers_xkd.video_processing_xkd import XKDVideoProcessor


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("proc")
    return {"av": write_media(d / "av.mp4", duration=5.0, fps=10), "mute": write_media(d / "mute.mp4", audio=False, duration=1.0)}


def test_one_call_gives_both_inputs_from_the_same_window(clip):
    proc = XKDProcessor()
    out = proc(str(clip["av"]), return_metadata=True)
    assert out["pixel_values"].shape == (1, 32, 3, 112, 112) and out["input_values"].shape == (1, 448, 80)
    # identical to the two processors run separately on the same 4 s window
    torch.testing.assert_close(out["pixel_values"], XKDVideoProcessor()(str(clip["av"]))["pixel_values"])
    torch.testing.assert_close(out["input_values"], XKDFeatureExtractor()(str(clip["av"]), return_tensors="pt")["input_values"])
    clips = proc([str(clip["av"])] * 2, num_clips=2, return_metadata=True)
    assert clips["pixel_values"].shape == (2, 2, 32, 3, 112, 112) and clips["input_values"].shape == (2, 2, 448, 80)
    start = clips["video_metadata"][0]["clip_starts"][1]
    assert start == pytest.approx(1.0, abs=0.05)  # 5 s file, 4 s clips: the second clip ends at the end
    # the second clip's audio is the waveform of [start, start + 4 s)
    from transformers_xkd.decoding_xkd import load_audio

    wave = load_audio(clip["av"], start=start, duration=4.0)
    ref = XKDFeatureExtractor()(wave, sampling_rate=16000, return_tensors="pt")["input_values"][0]
    torch.testing.assert_close(clips["input_values"][0, 1], ref, atol=1e-4, rtol=0)


def test_separate_inputs_and_numpy(clip):
    proc = XKDProcessor()
    frames = np.zeros((32, 40, 40, 3), np.uint8)
    out = proc(videos=frames, audio=np.zeros(64000, np.float32), sampling_rate=16000, return_tensors="np")
    assert out["pixel_values"].shape == (1, 32, 3, 112, 112) and isinstance(out["input_values"], np.ndarray)
    with pytest.raises(ValueError, match="videos=.*audio="):
        proc()


def test_video_without_audio_is_named(clip):
    with pytest.raises(MediaDecodingError, match="mute.mp4.*no audio stream"):
        XKDProcessor()(str(clip["mute"]))


def test_save_load(tmp_path):
    proc = XKDProcessor(XKDVideoProcessor(num_clips=3), XKDFeatureExtractor(num_clips=3))
    proc.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["video_processor"]["num_clips"] == 3 and "mel_filters" not in saved["feature_extractor"]
    loaded = XKDProcessor.from_pretrained(tmp_path)
    assert loaded.video_processor.to_dict() == proc.video_processor.to_dict()
    assert loaded.feature_extractor.to_dict() == proc.feature_extractor.to_dict()
    with pytest.raises(TypeError, match="feature_extractor must be an XKDFeatureExtractor"):
        XKDProcessor(XKDVideoProcessor(), XKDVideoProcessor())


def test_real_av_files(real_media):
    out = XKDProcessor()([str(real_media / "video" / "b.mp4"), str(real_media / "video" / "Megamind.avi")])
    assert out["pixel_values"].shape == (2, 32, 3, 112, 112) and out["input_values"].shape == (2, 448, 80)
    with pytest.raises(MediaDecodingError, match="muted_b.mp4.*no audio"):
        XKDProcessor()(str(real_media / "video" / "muted_b.mp4"))
